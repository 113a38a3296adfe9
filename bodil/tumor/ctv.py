"""Clinical target volumes (CTV): standard margins, model CTVs of equal volume, and how CTVs are compared.

The standard plan of radiotherapy treats every brain voxel within a margin ``m`` (10, 15, 20 mm) of the
tumour core (Amoudruz et al. 2025, sec. 3.4):

    CTV_std(m) = core  U  {x in brain : d(x, core) <= m}

with ``d`` the Euclidean distance in mm (a distance transform that uses the voxel spacing). The model plan
of the same volume ``N = |CTV_std(m)|`` treats the ``N`` voxels of highest tumour-cell concentration ``u``:

    CTV_model(m) = {x : u(x) > u*}  U  (part of {x : u(x) = u*}),     |CTV_model(m)| = N exactly,

where the threshold ``u*`` is the ``N``-th largest value, found by partial sorting (not bisection). Ties at
``u*`` (many zeros outside the modelled box, a constant field) are broken by a second key, the distance to
the core by default, so nearer voxels win, then by voxel index; the volume is always exact.

Posterior ensembles of model CTVs (``ctv_ensemble``) are built in ``bodil.tumor.ensemble``.

Surface distances are measured between voxel centres of the surface voxels (voxels of the mask with a
face neighbour outside it, or on the array border), with ``scipy.ndimage.distance_transform_edt`` and
``sampling = spacing``; both directions are pooled (as in MedPy's ``hd95``/``asd``).

All lengths are in mm, volumes in voxels and cm^3 (``1 cm^3 = 1000 mm^3``).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ._masks import as_mask, bounding_box, check_spacing, distance_to, finite, same_shape, surface, top_k

__all__ = ["core_distance", "coverage", "dice", "hausdorff95", "mean_surface_distance", "model_ctv",
           "standard_ctv", "surface_distances", "voxel_volume_cm3"]


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
    core = as_mask("core_distance", "core", core)
    sp = check_spacing("core_distance", spacing, core.ndim)
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
    core = as_mask("standard_ctv", "core", core)
    brain = as_mask("standard_ctv", "brain", brain)
    same_shape("standard_ctv", core=core, brain=brain, distance=distance)
    margin = float(margin_mm)
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"standard_ctv: margin_mm must be a finite non-negative length in mm, got {margin_mm}.")
    dist = core_distance(core, spacing) if distance is None else np.asarray(distance)
    return core | (brain & (dist <= margin))


# ---------------------------------------------------------------------------------------------- model plan
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
    brain = as_mask(name, "brain", brain)
    conc = finite(name, "concentration", concentration)
    if tie_break is not None:
        tie_break = np.asarray(tie_break)
        if np.issubdtype(tie_break.dtype, np.floating) and np.isnan(tie_break).any():
            raise ValueError(f"{name}: tie_break has NaN values; give a total order (e.g. the core distance).")
    shape = same_shape(name, concentration=conc, brain=brain, tie_break=tie_break)
    n_brain = int(brain.sum())
    if isinstance(n_voxels, (bool, np.bool_)) or int(n_voxels) != n_voxels:
        raise ValueError(f"{name}: n_voxels must be a whole number of voxels, got {n_voxels!r}.")
    k = int(n_voxels)
    if not 0 <= k <= n_brain:
        raise ValueError(f"{name}: n_voxels = {k} but the brain mask has only {n_brain} voxels; the CTV cannot "
                         f"be larger than the region it is chosen from (check the mask or the margin).")
    idx = np.flatnonzero(brain)
    chosen, threshold = top_k(conc.ravel()[idx], k, None if tie_break is None else tie_break.ravel()[idx])
    mask = np.zeros(int(np.prod(shape)), dtype=bool)
    mask[idx[chosen]] = True
    mask = mask.reshape(shape)
    return (mask, threshold) if return_threshold else mask


# ---------------------------------------------------------------------------------------------- surfaces
def _check_pair(name: str, a, b, spacing):
    a = as_mask(name, "a", a)
    b = as_mask(name, "b", b)
    same_shape(name, a=a, b=b)
    sp = check_spacing(name, spacing, a.ndim)
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
    box = bounding_box(a | b)
    sa, sb = surface(a[box]), surface(b[box])
    return np.concatenate([distance_to(sb, sp)[sa], distance_to(sa, sp)[sb]])


def mean_surface_distance(a, b, spacing) -> float:
    """Mean symmetric surface distance (mm): the mean of ``surface_distances(a, b, spacing)``."""
    return float(np.mean(surface_distances(a, b, spacing)))


def hausdorff95(a, b, spacing) -> float:
    """95th percentile (mm) of the pooled symmetric surface distances (MedPy's ``hd95`` definition)."""
    return float(np.percentile(surface_distances(a, b, spacing), 95))


def dice(a, b) -> float:
    """Dice overlap ``2 |a & b| / (|a| + |b|)``: 1 for identical masks, 0 for disjoint ones (1 if both empty)."""
    a = as_mask("dice", "a", a)
    b = as_mask("dice", "b", b)
    same_shape("dice", a=a, b=b)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def coverage(mask, region) -> float:
    """Fraction of ``region`` inside ``mask``: ``|mask & region| / |region|`` (e.g. the true infiltration
    covered by a CTV)."""
    mask = as_mask("coverage", "mask", mask)
    region = as_mask("coverage", "region", region)
    same_shape("coverage", mask=mask, region=region)
    n = int(region.sum())
    if n == 0:
        raise ValueError("coverage: the region is empty, so the covered fraction is undefined.")
    return int(np.count_nonzero(mask & region)) / n
