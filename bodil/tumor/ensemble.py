"""Posterior ensembles of clinical target volumes: one model CTV per posterior sample and margin, their
voxelwise probability, contours, boundary spread and overlap.

A posterior gives ``S`` samples of ``u`` at the imaging time. ``ctv_ensemble`` streams them once and keeps,
per margin ``m``, the voxelwise probability of inclusion ``P(x) = (1/S) sum_s 1[x in CTV_model^s(m)]``
(model CTVs of the standard volume, ``bodil.tumor.ctv``), the probability contours ``P >= LEVELS``, the
boundary spread (surface distances between pairs of sample CTVs and to the consensus ``P >= 0.5``) and the
Dice overlap between samples. Only the masks of a bounded number of samples are held (packed bits), never
``S`` full masks.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._masks import (as_mask, bounding_box, check_spacing, distance_to, finite, same_shape, surface, top_k,
                     top_k_sparse)
from .ctv import core_distance, standard_ctv, voxel_volume_cm3

LEVELS = (0.05, 0.5, 0.95)
"""The probability contours of an ensemble: the outer envelope, the consensus and the confident core."""


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
        ensemble: the ensemble CTV of equal volume, the Vorob'ev expectation of the sample CTVs (Molchanov,
            "Theory of Random Sets", sec. 2.2): the ``n_voxels`` voxels of highest ``P`` (ties at the threshold
            by distance to the core, then index), so ``{P > p*} <= ensemble <= {P >= p*}``.
        ensemble_level: its probability threshold ``p*``.
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
    ensemble: np.ndarray | None = None
    ensemble_level: float | None = None
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
    num_samples: int
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


def _distance_maps(surfaces: list[np.ndarray], spacing):
    """``distance_to`` of each surface, in order, computed by as many threads as there are cores
    (``scipy.ndimage``'s distance transform releases the GIL); lazily, so that only a few maps are held at once."""
    workers = max(1, min(len(surfaces), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                         else (os.cpu_count() or 1)))
    if workers == 1:
        yield from (distance_to(surf, spacing) for surf in surfaces)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending = deque()
        for surf in surfaces:
            pending.append(pool.submit(distance_to, surf, spacing))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _pair_statistics(kept: list[np.ndarray], p50: np.ndarray, pairs_local: np.ndarray, spacing):
    """Surface distances and Dice for the pairs of kept masks and of each kept mask to ``p50``.

    One distance transform per mask (inside the bounding box of all of them), reused by every pair.
    """
    union = p50.copy()
    for m in kept:
        union |= m
    box = bounding_box(union)
    surfaces = [surface(m[box]) for m in kept]
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
        s50 = surface(p50[box])
        d50 = distance_to(s50, spacing)
    to_p50 = np.full(len(kept), np.nan)
    needed = [k for k in range(len(kept)) if involving[k] or has_p50]
    for k, dk in zip(needed, _distance_maps([surfaces[k] for k in needed], spacing)):
        surf = surfaces[k]
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
    boxed = [m[box] for m in kept]  # every mask lies inside the box
    dsc = np.array([2.0 * np.count_nonzero(boxed[i] & boxed[j]) / (sizes[i] + sizes[j]) for i, j in pairs_local])
    return msd, hd95, dsc, to_p50


def ctv_ensemble(samples, core, brain, spacing, *, margins_mm: Sequence[float] = (10, 15, 20),
                 map_concentration=None, max_pairs: int = 200, n_kept: int | None = None,
                 seed: int = 0, window: tuple[slice, ...] | None = None) -> CTVEnsemble:
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
        window: optional slices of the mask grid (step 1) outside which every sample is zero, such as a model
            box's footprint on the input grid (``bodil.tumor.box.Crop.to_input_window``). The samples are then
            given on the window only (shape of the window), and each is ranked in time proportional to the
            window and the CTV volume instead of the whole grid; the result is the same as for the samples
            padded with zeros.

    Returns:
        A ``CTVEnsemble``; ``ensemble[m]`` is the ``MarginCTV`` of margin ``m``.
    """
    name = "ctv_ensemble"
    core = as_mask(name, "core", core)
    brain = as_mask(name, "brain", brain)
    shape = same_shape(name, core=core, brain=brain)
    sp = check_spacing(name, spacing, core.ndim)
    margins, n_keep = _check_margins_and_pairs(name, margins_mm, max_pairs, n_kept)
    distance = core_distance(core, sp)
    standards = {m: standard_ctv(core, brain, sp, m, distance=distance) for m in margins}
    rng = np.random.default_rng(seed)
    window = None if window is None else _check_window(name, window, shape)
    sample_shape = shape if window is None else tuple(w.stop - w.start for w in window)
    stream = _ModelCTVStream(brain | core, distance, {m: int(standards[m].sum()) for m in margins}, n_keep, rng,
                             window)
    for s, sample in enumerate(samples):
        u = finite(name, f"sample {s}", sample)
        if u.shape != sample_shape:
            where = "the masks have" if window is None else "the window has"
            raise ValueError(f"{name}: sample {s} has shape {u.shape} but {where} shape {sample_shape}; give the "
                             f"concentration on the {'mask grid' if window is None else 'window'}.")
        stream.add(s, u)
    if stream.num_samples == 0:
        raise ValueError(f"{name}: no samples were given.")
    order, kept_sorted, pairs = stream.pairs(int(max_pairs))
    map_results = {}
    if map_concentration is not None:
        u = finite(name, "map_concentration", map_concentration)
        if u.shape != shape:
            raise ValueError(f"{name}: map_concentration has shape {u.shape} but the masks have shape {shape}.")
        map_results = {m: stream.model_ctv(u, m) for m in margins}
    vvol = voxel_volume_cm3(sp)
    results = {m: _margin_result(stream, m, standards[m], order, kept_sorted, pairs, sp, vvol,
                                 map_results.get(m, (None, None))) for m in margins}
    return CTVEnsemble(margins_mm=margins, margins=results, num_samples=stream.num_samples, spacing=sp,
                       voxel_volume_cm3=vvol, region=stream.region)


def _check_window(name, window, shape) -> tuple[slice, ...]:
    """``window`` as slices with explicit bounds inside ``shape`` and step 1 (else ``ValueError``)."""
    if not isinstance(window, (tuple, list)) or len(window) != len(shape) or not all(
            isinstance(w, slice) for w in window):
        raise ValueError(f"{name}: window must be a tuple of {len(shape)} slices, got {window!r}.")
    out = []
    for axis, (w, n) in enumerate(zip(window, shape)):
        start, stop, step = w.indices(n)
        if step != 1 or stop <= start:
            raise ValueError(f"{name}: window slice {w} on axis {axis} must be a non-empty range of step 1 inside "
                             f"0..{n}.")
        out.append(slice(start, stop))
    return tuple(out)


def _check_margins_and_pairs(name, margins_mm, max_pairs, n_kept) -> tuple[tuple[float, ...], int]:
    """The margins as floats (finite, non-negative, distinct) and the number of kept samples (>= 2)."""
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
    return margins, n_keep


class _ModelCTVStream:
    """Model CTVs of samples as they stream by: per margin, the count of samples whose CTV holds each voxel
    of ``region``, each sample's threshold, and the packed masks of ``n_keep`` samples chosen uniformly by
    reservoir sampling (Algorithm R, drawing from ``rng``). With ``window`` (slices of the grid) the samples
    are given on the window only and are zero outside it: each is ranked in O(window + CTV volume) rather than
    O(region) (``top_k_sparse``), with the same result."""

    def __init__(self, region, distance, sizes: dict, n_keep: int, rng, window=None):
        self.region, self.sizes, self.n_keep, self.rng = region, sizes, n_keep, rng
        self.region_idx = np.flatnonzero(region)
        self.n_region = self.region_idx.size
        self.tie = distance.ravel()[self.region_idx]
        self.tie_order = np.argsort(self.tie, kind="stable")
        self.counts = {m: np.zeros(self.n_region, dtype=np.uint16) for m in sizes}
        self.thresholds = {m: [] for m in sizes}
        self.kept_index: list[int] = []
        self.kept_bits = {m: [] for m in sizes}
        self.num_samples = 0
        self._chosen = np.zeros(self.n_region, dtype=bool)
        self.window = window
        if window is not None:  # the region's voxels inside the window: positions in the region, flat in the window
            self._scratch = np.zeros(self.n_region, dtype=bool)
            coords = np.unravel_index(self.region_idx, region.shape)
            inside = np.ones(self.n_region, bool)
            for c, w in zip(coords, window):
                inside &= (c >= w.start) & (c < w.stop)
            self.where = np.flatnonzero(inside)
            self.window_shape = tuple(w.stop - w.start for w in window)
            self.local = np.ravel_multi_index(tuple(c[inside] - w.start for c, w in zip(coords, window)),
                                              self.window_shape)

    def to_full(self, values, dtype=bool):
        out = np.zeros(self.region.size, dtype=dtype)
        out[self.region_idx] = values
        return out.reshape(self.region.shape)

    def _top(self, values, margin) -> tuple[np.ndarray, float]:
        """The region indices of ``margin``'s model CTV of ``values`` (on the region) and its threshold."""
        return top_k(values, self.sizes[margin], self.tie, self.tie_order)

    def _select(self, values, margin) -> float:
        """Mark the model CTV of ``margin`` in ``self._chosen``; return its threshold."""
        idx, thr = self._top(values, margin)
        self._mark(idx)
        return thr

    def _mark(self, idx) -> None:
        self._chosen[:] = False
        self._chosen[idx] = True

    def model_ctv(self, u, margin) -> tuple[np.ndarray, float]:
        """The model CTV mask of ``margin`` for the concentration ``u`` and its threshold."""
        return self.region_ctv(u.ravel()[self.region_idx], margin)

    def region_ctv(self, values, margin) -> tuple[np.ndarray, float]:
        """The mask of ``margin``'s volume of highest ``values`` (given on the region) and its threshold."""
        thr = self._select(values, margin)
        return self.to_full(self._chosen), thr

    def add(self, s: int, u) -> None:
        """Count sample ``s`` (the ``s``-th of the stream, from 0): ``u`` on the grid, or on the window."""
        if self.window is None:
            values = u.ravel()[self.region_idx]
            top = self._top
        else:
            values = u.ravel()[self.local]
            scratch = self._scratch  # all False between calls

            def top(values, m):
                return top_k_sparse(values, self.where, self.n_region, self.sizes[m], self.tie, self.tie_order,
                                    scratch)
        n_keep = self.n_keep
        slot = s if s < n_keep else int(self.rng.integers(0, s + 1))
        if slot < n_keep and s >= n_keep:
            self.kept_index[slot] = s
        elif slot < n_keep:
            self.kept_index.append(s)
        for m in self.sizes:
            idx, thr = top(values, m)
            self.thresholds[m].append(thr)
            c = self.counts[m]
            if c.dtype == np.uint16 and s >= np.iinfo(np.uint16).max - 1:
                c = self.counts[m] = c.astype(np.int64)
            c[idx] += 1  # the indices are distinct
            if slot < n_keep:
                self._mark(idx)
                bits = np.packbits(self._chosen)
                self._chosen[idx] = False
                if s < n_keep:
                    self.kept_bits[m].append(bits)
                else:
                    self.kept_bits[m][slot] = bits
        self.num_samples = s + 1

    def pairs(self, max_pairs: int):
        """The kept samples in the order of their index and up to ``max_pairs`` random pairs among them."""
        order = np.argsort(self.kept_index)
        kept_sorted = np.asarray(self.kept_index)[order]
        n_k = len(kept_sorted)
        pairs = np.array([(i, j) for i in range(n_k) for j in range(i + 1, n_k)], dtype=np.intp).reshape(-1, 2)
        if len(pairs) > max_pairs:
            pick = np.sort(self.rng.choice(len(pairs), size=max_pairs, replace=False))
            pairs = pairs[pick]
        return order, kept_sorted, pairs

    def kept_masks(self, margin, order) -> list[np.ndarray]:
        return [self.to_full(np.unpackbits(self.kept_bits[margin][o], count=self.n_region).astype(bool))
                for o in order]


def _margin_result(stream: _ModelCTVStream, m, standard, order, kept_sorted, pairs, sp, vvol, map_ctv):
    """The ``MarginCTV`` of margin ``m``: probability map, credible regions and the pairwise statistics."""
    prob = stream.to_full(stream.counts[m] / stream.num_samples, dtype=float)
    p05, p50, p95 = (prob >= level - 1e-12 for level in LEVELS)
    kept = stream.kept_masks(m, order)
    if len(pairs):
        msd, hd95, dsc, to_p50 = _pair_statistics(kept, p50, pairs, sp)
        spread_median, spread_p95 = float(np.median(msd)), float(np.percentile(msd, 95))
        dice_mean, dice_min = float(np.mean(dsc)), float(np.min(dsc))
    else:  # a single sample: nothing to compare
        msd = hd95 = dsc = np.empty(0)
        to_p50 = _pair_statistics(kept, p50, np.empty((0, 2), np.intp), sp)[3]
        spread_median = spread_p95 = 0.0
        dice_mean = dice_min = 1.0
    map_mask, map_thr = map_ctv
    size = stream.sizes[m]
    ensemble, ensemble_level = stream.region_ctv(stream.counts[m] / stream.num_samples, m)
    return MarginCTV(
        margin_mm=m, standard=standard, n_voxels=size, volume_cm3=size * vvol,
        thresholds=np.asarray(stream.thresholds[m]), probability=prob, p05=p05, p50=p50, p95=p95,
        pairs=kept_sorted[pairs] if len(pairs) else np.empty((0, 2), np.intp),
        pair_mean_surface_mm=msd, pair_hausdorff95_mm=hd95, pair_dice=dsc,
        spread_median_mm=spread_median, spread_p95_mm=spread_p95, dice_mean=dice_mean, dice_min=dice_min,
        kept_indices=kept_sorted, consensus_mean_surface_mm=to_p50, ensemble=ensemble,
        ensemble_level=ensemble_level, map_mask=map_mask, map_threshold=map_thr)


__all__ = ["LEVELS", "CTVEnsemble", "MarginCTV", "ctv_ensemble"]
