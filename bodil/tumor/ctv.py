"""Clinical target volumes (CTV): standard margins, model CTVs of equal volume, posterior ensembles.

The standard plan of radiotherapy treats every brain voxel within a margin ``m`` (10, 15, 20 mm) of the
tumour core (Amoudruz et al. 2025, sec. 3.4):

    CTV_std(m) = core  U  {x in brain : d(x, core) <= m}

with ``d`` the Euclidean distance in mm (a distance transform that uses the voxel spacing). The model plan
of the same volume ``N = |CTV_std(m)|`` treats the ``N`` voxels of highest tumour-cell concentration ``u``:

    CTV_model(m) = {x : u(x) > u*}  U  (part of {x : u(x) = u*}),     |CTV_model(m)| = N exactly,

where the threshold ``u*`` is the ``N``-th largest value, found by partial sorting (not bisection). Ties at
``u*`` (many zeros outside the modelled box, a constant field) are broken by a second key, the distance to
the core by default, so nearer voxels win, then by voxel index; the volume is always exact.

A posterior gives ``S`` samples of ``u`` at the imaging time. ``ctv_ensemble`` streams them once and keeps,
per margin, the voxelwise probability of inclusion ``P(x) = (1/S) sum_s 1[x in CTV_model^s]``, the
probability contours ``P >= 0.05, 0.5, 0.95``, the boundary spread (surface distances between pairs of
sample CTVs and to the consensus ``P >= 0.5``) and the Dice overlap between samples. Only the masks of a
bounded number of samples are held (packed bits), never ``S`` full masks.

Surface distances are measured between voxel centres of the surface voxels (voxels of the mask with a
face neighbour outside it, or on the array border), with ``scipy.ndimage.distance_transform_edt`` and
``sampling = spacing``; both directions are pooled (as in MedPy's ``hd95``/``asd``).

All lengths are in mm, volumes in voxels and cm^3 (``1 cm^3 = 1000 mm^3``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

LEVELS = (0.05, 0.5, 0.95)


# ---------------------------------------------------------------------------------------------- checks
def _mask(name: str, what: str, value) -> np.ndarray:
    """A boolean array from bool or 0/1 input; anything else is an error."""
    arr = np.asarray(value)
    if arr.dtype == bool:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name}: {what} must be a boolean mask, got dtype {arr.dtype}.")
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name}: {what} must be a boolean (or 0/1) mask, got values other than 0 and 1; "
                         f"threshold it first, e.g. `{what} > 0.5`.")
    return arr.astype(bool)


def _spacing(name: str, spacing, ndim: int) -> tuple[float, ...]:
    sp = np.atleast_1d(np.asarray(spacing, dtype=float))
    if sp.ndim != 1 or sp.size != ndim:
        raise ValueError(f"{name}: spacing must give one voxel size (mm) per axis, {ndim} in all; got {spacing}.")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"{name}: voxel spacing must be positive and finite (mm), got {spacing}.")
    return tuple(float(s) for s in sp)


def _same_shape(name: str, **arrays) -> tuple[int, ...]:
    shapes = {k: np.shape(v) for k, v in arrays.items() if v is not None}
    first = next(iter(shapes.values()))
    if any(s != first for s in shapes.values()):
        listing = ", ".join(f"{k} {s}" for k, s in shapes.items())
        raise ValueError(f"{name}: the arrays must have the same shape, got {listing}; resample them onto one grid.")
    return tuple(first)


def _finite(name: str, what: str, value) -> np.ndarray:
    arr = np.asarray(value)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name}: {what} must be numeric, got dtype {arr.dtype}.")
    if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
        bad = int(arr.size - np.isfinite(arr).sum())
        raise ValueError(f"{name}: {what} has {bad} NaN or infinite value(s); replace them (e.g. by 0) first.")
    return arr


def voxel_volume_cm3(spacing) -> float:
    """Volume of one voxel in cm^3: ``prod(spacing) / 1000`` with the spacing in mm."""
    sp = np.asarray(spacing, dtype=float)
    return float(np.prod(sp)) / 1000.0


# ---------------------------------------------------------------------------------------------- standard plan
def core_distance(core, spacing) -> np.ndarray:
    """Euclidean distance (mm) from each voxel to the nearest core voxel; 0 inside the core.

    ``d(x) = min_{y in core} |x - y|`` with ``|.|`` measured in mm through the voxel ``spacing``
    (``scipy.ndimage.distance_transform_edt(~core, sampling=spacing)``).

    Args:
        core: boolean mask of the tumour core (necrotic and enhancing).
        spacing: voxel size in mm along each axis (from the NIfTI header).
    """
    core = _mask("core_distance", "core", core)
    sp = _spacing("core_distance", spacing, core.ndim)
    if not core.any():
        raise ValueError("core_distance: the core mask is empty, so no distance to it exists; check the "
                         "segmentation labels (the core is necrosis + enhancing tumour).")
    return ndimage.distance_transform_edt(~core, sampling=sp)


def standard_ctv(core, brain, spacing, margin_mm: float, *, distance=None) -> np.ndarray:
    """Standard CTV: ``core | (brain & d(x, core) <= margin_mm)``.

    Args:
        core: boolean core mask.
        brain: boolean brain mask (tissue where tumour cells can go).
        spacing: voxel size in mm.
        margin_mm: margin in mm (clinical: 10, 15 or 20).
        distance: the ``core_distance`` of ``core``, to reuse it across margins (computed when ``None``).
    """
    core = _mask("standard_ctv", "core", core)
    brain = _mask("standard_ctv", "brain", brain)
    _same_shape("standard_ctv", core=core, brain=brain, distance=distance)
    margin = float(margin_mm)
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"standard_ctv: margin_mm must be a finite non-negative length in mm, got {margin_mm}.")
    dist = core_distance(core, spacing) if distance is None else np.asarray(distance)
    return core | (brain & (dist <= margin))


# ---------------------------------------------------------------------------------------------- model plan
def _top_k(values: np.ndarray, k: int, tie: np.ndarray | None) -> tuple[np.ndarray, float]:
    """Indices of the ``k`` largest ``values`` (ties by ``tie`` ascending, then by index) and the threshold.

    ``np.partition`` finds the ``k``-th largest value ``t`` in O(n); all values ``> t`` are in, and the
    ``k - #{> t}`` first of the values ``== t`` in (tie, index) order complete the set.
    """
    n = values.size
    if k == 0:
        return np.empty(0, dtype=np.intp), float("inf")
    threshold = np.partition(values, n - k)[n - k]
    above = np.flatnonzero(values > threshold)
    ties = np.flatnonzero(values == threshold)  # ascending index
    rest = k - above.size
    if tie is not None and rest < ties.size:
        ties = ties[np.argsort(tie[ties], kind="stable")]  # stable: equal tie keys stay in index order
    return np.concatenate([above, ties[:rest]]), float(threshold)


def model_ctv(concentration, brain, n_voxels: int, *, tie_break=None, return_threshold: bool = False):
    """Model CTV: the ``n_voxels`` voxels of ``brain`` with the highest concentration (exact volume).

    ``CTV = {u > u*} U (first voxels of {u = u*} by (tie_break, index))`` with ``u*`` the ``n_voxels``-th
    largest value of ``u`` in ``brain``. When no tie straddles ``u*`` this is ``{x in brain : u(x) >= u*}``.

    Args:
        concentration: tumour-cell concentration ``u`` (any real values; NaN is an error).
        brain: boolean mask of the voxels that may be chosen.
        n_voxels: the volume to match, in voxels (usually ``standard_ctv(...).sum()``).
        tie_break: optional array of the same shape; among equal concentrations, smaller values win
            (pass ``core_distance(core, spacing)`` so that voxels nearer the core win). Then the lower
            flat (C-order) index wins.
        return_threshold: also return ``u*`` (``inf`` when ``n_voxels == 0``).

    Returns:
        The boolean mask, or ``(mask, threshold)`` when ``return_threshold``.
    """
    name = "model_ctv"
    brain = _mask(name, "brain", brain)
    conc = _finite(name, "concentration", concentration)
    if tie_break is not None:
        tie_break = np.asarray(tie_break)
        if np.issubdtype(tie_break.dtype, np.floating) and np.isnan(tie_break).any():
            raise ValueError(f"{name}: tie_break has NaN values; give a total order (e.g. the core distance).")
    shape = _same_shape(name, concentration=conc, brain=brain, tie_break=tie_break)
    n_brain = int(brain.sum())
    if isinstance(n_voxels, (bool, np.bool_)) or int(n_voxels) != n_voxels:
        raise ValueError(f"{name}: n_voxels must be a whole number of voxels, got {n_voxels!r}.")
    k = int(n_voxels)
    if not 0 <= k <= n_brain:
        raise ValueError(f"{name}: n_voxels = {k} but the brain mask has only {n_brain} voxels; the CTV cannot "
                         f"be larger than the region it is chosen from (check the mask or the margin).")
    idx = np.flatnonzero(brain)
    chosen, threshold = _top_k(conc.ravel()[idx], k, None if tie_break is None else tie_break.ravel()[idx])
    mask = np.zeros(int(np.prod(shape)), dtype=bool)
    mask[idx[chosen]] = True
    mask = mask.reshape(shape)
    return (mask, threshold) if return_threshold else mask


# ---------------------------------------------------------------------------------------------- surfaces
def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: in the mask with a face neighbour outside it (the array border counts as outside)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _bbox(mask: np.ndarray, pad: int = 1) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``pad`` voxels (clipped to the array)."""
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        out.append(slice(max(int(hit[0]) - pad, 0), min(int(hit[-1]) + 1 + pad, mask.shape[axis])))
    return tuple(out)


def _distance_to(surface: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) from every voxel to the nearest voxel of ``surface``."""
    return ndimage.distance_transform_edt(~surface, sampling=spacing)


def _check_pair(name: str, a, b, spacing):
    a = _mask(name, "a", a)
    b = _mask(name, "b", b)
    _same_shape(name, a=a, b=b)
    sp = _spacing(name, spacing, a.ndim)
    if not a.any() or not b.any():
        raise ValueError(f"{name}: surface distances need two non-empty masks, got {int(a.sum())} and "
                         f"{int(b.sum())} voxels.")
    return a, b, sp


def surface_distances(a, b, spacing) -> np.ndarray:
    """Symmetric surface distances (mm): from each surface voxel of ``a`` to the surface of ``b`` and back.

    Returns ``concatenate([d(s, surf b) for s in surf a], [d(s, surf a) for s in surf b])``, distances
    between voxel centres, measured in mm with the voxel ``spacing``. Identical masks give all zeros.
    """
    a, b, sp = _check_pair("surface_distances", a, b, spacing)
    box = _bbox(a | b)
    sa, sb = _surface(a[box]), _surface(b[box])
    return np.concatenate([_distance_to(sb, sp)[sa], _distance_to(sa, sp)[sb]])


def mean_surface_distance(a, b, spacing) -> float:
    """Mean symmetric surface distance (mm): the mean of ``surface_distances(a, b, spacing)``."""
    return float(np.mean(surface_distances(a, b, spacing)))


def hausdorff95(a, b, spacing) -> float:
    """95th percentile (mm) of the pooled symmetric surface distances (MedPy's ``hd95`` definition)."""
    return float(np.percentile(surface_distances(a, b, spacing), 95))


def dice(a, b) -> float:
    """Dice overlap ``2 |a & b| / (|a| + |b|)``: 1 for identical masks, 0 for disjoint ones (1 if both empty)."""
    a = _mask("dice", "a", a)
    b = _mask("dice", "b", b)
    _same_shape("dice", a=a, b=b)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def coverage(mask, region) -> float:
    """Fraction of ``region`` inside ``mask``: ``|mask & region| / |region|`` (e.g. the true infiltration
    covered by a CTV)."""
    mask = _mask("coverage", "mask", mask)
    region = _mask("coverage", "region", region)
    _same_shape("coverage", mask=mask, region=region)
    n = int(region.sum())
    if n == 0:
        raise ValueError("coverage: the region is empty, so the covered fraction is undefined.")
    return int(np.count_nonzero(mask & region)) / n


# ---------------------------------------------------------------------------------------------- ensembles
@dataclasses.dataclass(frozen=True)
class MarginCTV:
    """The CTV products of one margin.

    Attributes:
        margin_mm: the margin of the standard plan (mm).
        standard: boolean standard CTV.
        n_voxels: its volume in voxels (every model CTV has exactly this volume).
        volume_cm3: its volume in cm^3.
        thresholds: ``(S,)`` concentration threshold ``u*`` of each sample's model CTV.
        probability: voxelwise probability of inclusion, ``P(x) = #{s : x in CTV_s} / S``.
        p05: ``P >= 0.05``: the wide envelope, voxels in at least 5 % of the sample CTVs.
        p50: ``P >= 0.5``: the consensus (median) CTV.
        p95: ``P >= 0.95``: the confident core, voxels in at least 95 % of the sample CTVs.
        pairs: ``(n_pairs, 2)`` sample indices of the compared pairs.
        pair_mean_surface_mm: mean symmetric surface distance of each pair (mm).
        pair_hausdorff95_mm: 95 % Hausdorff distance of each pair (mm).
        pair_dice: Dice overlap of each pair.
        spread_median_mm: median over pairs of ``pair_mean_surface_mm`` (the boundary spread).
        spread_p95_mm: 95th percentile over pairs of ``pair_mean_surface_mm``.
        dice_mean, dice_min: mean and minimum of ``pair_dice`` (1 when fewer than two samples).
        kept_indices: the samples whose masks were kept for the pairwise statistics.
        consensus_mean_surface_mm: mean symmetric surface distance (mm) of each kept sample's CTV to
            ``p50`` (NaN when ``p50`` is empty).
        map_mask, map_threshold: the model CTV of the MAP concentration, when one was given.
    """

    margin_mm: float
    standard: np.ndarray
    n_voxels: int
    volume_cm3: float
    thresholds: np.ndarray
    probability: np.ndarray
    p05: np.ndarray
    p50: np.ndarray
    p95: np.ndarray
    pairs: np.ndarray
    pair_mean_surface_mm: np.ndarray
    pair_hausdorff95_mm: np.ndarray
    pair_dice: np.ndarray
    spread_median_mm: float
    spread_p95_mm: float
    dice_mean: float
    dice_min: float
    kept_indices: np.ndarray
    consensus_mean_surface_mm: np.ndarray
    map_mask: np.ndarray | None = None
    map_threshold: float | None = None

    def contour(self, level: float) -> np.ndarray:
        """``probability >= level`` for any level in (0, 1]."""
        if not 0 < level <= 1:
            raise ValueError(f"MarginCTV.contour: level must lie in (0, 1], got {level}.")
        return self.probability >= level - 1e-12


@dataclasses.dataclass(frozen=True)
class CTVEnsemble:
    """CTV products for several margins (``ensemble[10]`` is the ``MarginCTV`` of the 10 mm margin)."""

    margins_mm: tuple[float, ...]
    margins: dict
    n_samples: int
    spacing: tuple[float, ...]
    voxel_volume_cm3: float
    region: np.ndarray

    def __getitem__(self, margin_mm) -> MarginCTV:
        try:
            return self.margins[float(margin_mm)]
        except KeyError:
            raise KeyError(f"CTVEnsemble has margins {self.margins_mm} mm, not {margin_mm}.") from None

    def table(self) -> list[dict]:
        """One row per margin, in the layout of ``bodil.tumor.report.ReportContent.table``."""
        rows = []
        for m in self.margins_mm:
            r = self.margins[m]
            rows.append({"margin_mm": m, "standard_volume_cm3": r.volume_cm3,
                         "model_volume_cm3": r.n_voxels * self.voxel_volume_cm3,
                         "spread_median_mm": r.spread_median_mm, "spread_p95_mm": r.spread_p95_mm,
                         "dice_mean": r.dice_mean, "dice_min": r.dice_min})
        return rows


def _n_kept_for(max_pairs: int) -> int:
    """Smallest ``K`` with ``K (K - 1) / 2 >= max_pairs``."""
    return max(2, math.ceil((1 + math.sqrt(1 + 8 * max_pairs)) / 2))


def _pair_statistics(kept: list[np.ndarray], p50: np.ndarray, pairs_local: np.ndarray, spacing):
    """Surface distances and Dice for the pairs of kept masks and of each kept mask to ``p50``.

    One distance transform per mask (inside the bounding box of all of them), reused by every pair.
    """
    union = p50.copy()
    for m in kept:
        union |= m
    box = _bbox(union)
    surfaces = [_surface(m[box]) for m in kept]
    sizes = [int(m.sum()) for m in kept]
    n_pairs = len(pairs_local)
    ab = [None] * n_pairs  # distances from surface of the first to the second
    ba = [None] * n_pairs
    involving = [[] for _ in kept]
    for p, (i, j) in enumerate(pairs_local):
        involving[i].append(p)
        involving[j].append(p)
    has_p50 = bool(p50.any())
    if has_p50:
        s50 = _surface(p50[box])
        d50 = _distance_to(s50, spacing)
    to_p50 = np.full(len(kept), np.nan)
    for k, surf in enumerate(surfaces):
        if not involving[k] and not has_p50:
            continue
        dk = _distance_to(surf, spacing)
        for p in involving[k]:
            i, j = pairs_local[p]
            if k == j:
                ab[p] = dk[surfaces[i]]
            else:
                ba[p] = dk[surfaces[j]]
        if has_p50:
            to_p50[k] = float(np.mean(np.concatenate([d50[surf], dk[s50]])))
    msd = np.array([np.mean(np.concatenate([ab[p], ba[p]])) for p in range(n_pairs)])
    hd95 = np.array([np.percentile(np.concatenate([ab[p], ba[p]]), 95) for p in range(n_pairs)])
    dsc = np.array([2.0 * np.count_nonzero(kept[i] & kept[j]) / (sizes[i] + sizes[j]) for i, j in pairs_local])
    return msd, hd95, dsc, to_p50


def ctv_ensemble(samples, core, brain, spacing, *, margins_mm: Sequence[float] = (10, 15, 20),
                 map_concentration=None, max_pairs: int = 200, n_kept: int | None = None,
                 seed: int = 0) -> CTVEnsemble:
    """Model CTVs of every posterior sample, for each margin, with their spread and overlap.

    For each margin ``m`` the standard CTV fixes the volume ``N_m``; each sample ``u_s`` gives the model CTV
    of ``N_m`` voxels in ``brain | core`` (ties by distance to the core). The voxelwise probability
    ``P_m(x) = #{s : x in CTV_m^s} / S`` is accumulated as counts while the samples stream by.

    Pairwise statistics use the masks of ``n_kept`` samples chosen uniformly at random by reservoir
    sampling (seeded, so an array and a generator of the same samples give the same result), and up to
    ``max_pairs`` random pairs among them. Memory: three count vectors and ``n_kept`` packed masks per
    margin, never ``S`` full masks.

    Args:
        samples: array ``(S, *shape)`` or an iterable of arrays of ``shape`` (the concentration at the
            imaging time), so the caller can stream them.
        core: boolean core mask (``shape``).
        brain: boolean brain mask (``shape``).
        spacing: voxel size in mm.
        margins_mm: standard margins in mm.
        map_concentration: optional MAP concentration; its model CTVs go to ``map_mask``.
        max_pairs: the most sample pairs compared (surface distances and Dice).
        n_kept: how many samples' masks to keep for the pairwise statistics and the distance to the
            consensus; default the smallest number with at least ``max_pairs`` pairs (21 for 200).
        seed: seed of the choice of kept samples and pairs.

    Returns:
        A ``CTVEnsemble``; ``ensemble[m]`` is the ``MarginCTV`` of margin ``m``.
    """
    name = "ctv_ensemble"
    core = _mask(name, "core", core)
    brain = _mask(name, "brain", brain)
    shape = _same_shape(name, core=core, brain=brain)
    sp = _spacing(name, spacing, core.ndim)
    margins = tuple(float(m) for m in np.atleast_1d(np.asarray(margins_mm, dtype=float)))
    if not margins or any(not (math.isfinite(m) and m >= 0) for m in margins):
        raise ValueError(f"{name}: margins_mm must be finite non-negative lengths in mm, got {margins_mm}.")
    if len(set(margins)) != len(margins):
        raise ValueError(f"{name}: margins_mm has repeated values {margins_mm}.")
    if int(max_pairs) < 1:
        raise ValueError(f"{name}: max_pairs must be at least 1, got {max_pairs}.")
    n_keep = _n_kept_for(int(max_pairs)) if n_kept is None else int(n_kept)
    if n_keep < 2:
        raise ValueError(f"{name}: n_kept must be at least 2 to compare samples, got {n_kept}.")

    distance = core_distance(core, sp)
    region = brain | core
    region_idx = np.flatnonzero(region)
    n_region = region_idx.size
    tie = distance.ravel()[region_idx]
    standards = {m: standard_ctv(core, brain, sp, m, distance=distance) for m in margins}
    sizes = {m: int(standards[m].sum()) for m in margins}

    def to_full(values, dtype=bool, fill=0):
        out = np.full(int(np.prod(shape)), fill, dtype=dtype)
        out[region_idx] = values
        return out.reshape(shape)

    rng = np.random.default_rng(seed)
    counts = {m: np.zeros(n_region, dtype=np.uint16) for m in margins}
    thresholds = {m: [] for m in margins}
    kept_index: list[int] = []
    kept_bits = {m: [] for m in margins}
    chosen = np.zeros(n_region, dtype=bool)
    s = -1
    for s, sample in enumerate(samples):
        u = _finite(name, f"sample {s}", sample)
        if u.shape != shape:
            raise ValueError(f"{name}: sample {s} has shape {u.shape} but the masks have shape {shape}; "
                             f"give the concentration on the mask grid.")
        values = u.ravel()[region_idx]
        slot = s if s < n_keep else int(rng.integers(0, s + 1))  # reservoir sampling (Algorithm R)
        if slot < n_keep and s >= n_keep:
            kept_index[slot] = s
        elif slot < n_keep:
            kept_index.append(s)
        for m in margins:
            idx, thr = _top_k(values, sizes[m], tie)
            thresholds[m].append(thr)
            chosen[:] = False
            chosen[idx] = True
            c = counts[m]
            if c.dtype == np.uint16 and s >= np.iinfo(np.uint16).max - 1:
                c = counts[m] = c.astype(np.int64)
            c += chosen
            if slot < n_keep:
                bits = np.packbits(chosen)
                if s < n_keep:
                    kept_bits[m].append(bits)
                else:
                    kept_bits[m][slot] = bits
    n_samples = s + 1
    if n_samples == 0:
        raise ValueError(f"{name}: no samples were given.")

    # pairs among the kept samples, in the order of their sample index
    order = np.argsort(kept_index)
    kept_sorted = np.asarray(kept_index)[order]
    n_k = len(kept_sorted)
    all_pairs = np.array([(i, j) for i in range(n_k) for j in range(i + 1, n_k)], dtype=np.intp).reshape(-1, 2)
    if len(all_pairs) > max_pairs:
        pick = np.sort(rng.choice(len(all_pairs), size=int(max_pairs), replace=False))
        all_pairs = all_pairs[pick]

    map_results = {}
    if map_concentration is not None:
        u = _finite(name, "map_concentration", map_concentration)
        if u.shape != shape:
            raise ValueError(f"{name}: map_concentration has shape {u.shape} but the masks have shape {shape}.")
        for m in margins:
            idx, thr = _top_k(u.ravel()[region_idx], sizes[m], tie)
            chosen[:] = False
            chosen[idx] = True
            map_results[m] = (to_full(chosen), thr)

    vvol = voxel_volume_cm3(sp)
    results = {}
    for m in margins:
        prob = to_full(counts[m] / n_samples, dtype=float)
        p05, p50, p95 = (prob >= level - 1e-12 for level in LEVELS)
        kept = [to_full(np.unpackbits(kept_bits[m][o], count=n_region).astype(bool)) for o in order]
        if len(all_pairs):
            msd, hd95, dsc, to_p50 = _pair_statistics(kept, p50, all_pairs, sp)
            spread_median, spread_p95 = float(np.median(msd)), float(np.percentile(msd, 95))
            dice_mean, dice_min = float(np.mean(dsc)), float(np.min(dsc))
        else:  # a single sample: nothing to compare
            msd = hd95 = dsc = np.empty(0)
            to_p50 = _pair_statistics(kept, p50, np.empty((0, 2), np.intp), sp)[3]
            spread_median = spread_p95 = 0.0
            dice_mean = dice_min = 1.0
        map_mask, map_thr = map_results.get(m, (None, None))
        results[m] = MarginCTV(
            margin_mm=m, standard=standards[m], n_voxels=sizes[m], volume_cm3=sizes[m] * vvol,
            thresholds=np.asarray(thresholds[m]), probability=prob, p05=p05, p50=p50, p95=p95,
            pairs=kept_sorted[all_pairs] if len(all_pairs) else np.empty((0, 2), np.intp),
            pair_mean_surface_mm=msd, pair_hausdorff95_mm=hd95, pair_dice=dsc,
            spread_median_mm=spread_median, spread_p95_mm=spread_p95, dice_mean=dice_mean, dice_min=dice_min,
            kept_indices=kept_sorted, consensus_mean_surface_mm=to_p50, map_mask=map_mask, map_threshold=map_thr)
    return CTVEnsemble(margins_mm=margins, margins=results, n_samples=n_samples, spacing=sp,
                       voxel_volume_cm3=vvol, region=region)
