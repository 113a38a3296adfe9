"""Checks and geometry of boolean masks shared by the CTV protocol (``bodil.tumor.ctv``) and its posterior
ensembles (``bodil.tumor.ensemble``): argument checks that name the caller, the top ``k`` values with a
tie-break, surface voxels, bounding boxes and distances to a surface (mm, through the voxel spacing).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def as_mask(name: str, what: str, value) -> np.ndarray:
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


def check_spacing(name: str, spacing, ndim: int) -> tuple[float, ...]:
    sp = np.atleast_1d(np.asarray(spacing, dtype=float))
    if sp.ndim != 1 or sp.size != ndim:
        raise ValueError(f"{name}: spacing must give one voxel size (mm) per axis, {ndim} in all; got {spacing}.")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"{name}: voxel spacing must be positive and finite (mm), got {spacing}.")
    return tuple(float(s) for s in sp)


def same_shape(name: str, **arrays) -> tuple[int, ...]:
    shapes = {k: np.shape(v) for k, v in arrays.items() if v is not None}
    first = next(iter(shapes.values()))
    if any(s != first for s in shapes.values()):
        listing = ", ".join(f"{k} {s}" for k, s in shapes.items())
        raise ValueError(f"{name}: the arrays must have the same shape, got {listing}; resample them onto one grid.")
    return tuple(first)


def finite(name: str, what: str, value) -> np.ndarray:
    arr = np.asarray(value)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name}: {what} must be numeric, got dtype {arr.dtype}.")
    if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
        bad = int(arr.size - np.isfinite(arr).sum())
        raise ValueError(f"{name}: {what} has {bad} NaN or infinite value(s); replace them (e.g. by 0) first.")
    return arr


def top_k(values: np.ndarray, k: int, tie: np.ndarray | None, tie_order: np.ndarray | None = None
          ) -> tuple[np.ndarray, float]:
    """Indices of the ``k`` largest ``values`` (ties by ``tie`` ascending, then by index) and the threshold.

    ``np.partition`` finds the ``k``-th largest value ``t`` in O(n); all values ``> t`` are in, and the
    ``k - #{> t}`` first of the values ``== t`` in (tie, index) order complete the set. Concentrations are
    mostly zero (outside the tumour's reach), so the partition runs on the positive values only when there are
    at least ``k`` of them; when there are fewer and none is negative, the set is every positive value and the
    first zeros in ``tie_order`` (``np.argsort(tie, kind="stable")``, computed once by callers that select
    many times), which is the same set.
    """
    n = values.size
    if k == 0:
        return np.empty(0, dtype=np.intp), float("inf")
    positive = np.flatnonzero(values > 0)
    if positive.size >= k and positive.size < n:
        chosen, threshold = top_k(values[positive], k, None if tie is None else tie[positive])
        return positive[chosen], threshold
    if tie_order is not None and positive.size < k and not (values < 0).any():
        zeros = tie_order[values[tie_order] == 0]
        return np.concatenate([positive, zeros[:k - positive.size]]), 0.0
    threshold = np.partition(values, n - k)[n - k]
    above = np.flatnonzero(values > threshold)
    ties = np.flatnonzero(values == threshold)  # ascending index
    rest = k - above.size
    if tie is not None and rest < ties.size:
        ties = ties[np.argsort(tie[ties], kind="stable")]  # stable: equal tie keys stay in index order
    return np.concatenate([above, ties[:rest]]), float(threshold)


def top_k_sparse(values: np.ndarray, where: np.ndarray, n: int, k: int, tie: np.ndarray, tie_order: np.ndarray,
                 mark: np.ndarray) -> tuple[np.ndarray, float]:
    """``top_k`` of the length-``n`` vector that is ``values`` at the ascending indices ``where`` and 0 elsewhere,
    in O(``where.size + k``) instead of O(``n``): the same indices and threshold.

    With at least ``k`` positive values only those compete (``top_k`` on them, ties by ``tie`` then index, which
    ``where``'s ascending order keeps). With fewer, the set is every positive value and the first zeros in
    ``tie_order``; those lie among its first ``k + #positive`` entries. ``mark`` is a boolean scratch vector of
    length ``n``, all False, returned so. A negative value (zeros would rank above it) falls back to ``top_k``
    on the full vector.
    """
    if k == 0:
        return np.empty(0, dtype=np.intp), float("inf")
    if (values < 0).any() or k > n:
        full = np.zeros(n, dtype=values.dtype)
        full[where] = values
        return top_k(full, k, tie, tie_order)
    positive = np.flatnonzero(values > 0)
    if positive.size >= k:
        chosen, threshold = top_k(values[positive], k, tie[where[positive]])
        return where[positive[chosen]], threshold
    pos = where[positive]
    mark[pos] = True
    prefix = tie_order[:k + pos.size]
    zeros = prefix[~mark[prefix]][:k - pos.size]
    mark[pos] = False
    return np.concatenate([pos, zeros]), 0.0


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: in the mask with a face neighbour outside it (the array border counts as outside)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def bounding_box(mask: np.ndarray, pad: int = 1) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``pad`` voxels (clipped to the array)."""
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        out.append(slice(max(int(hit[0]) - pad, 0), min(int(hit[-1]) + 1 + pad, mask.shape[axis])))
    return tuple(out)


def distance_to(surface: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) from every voxel to the nearest voxel of ``surface``."""
    return ndimage.distance_transform_edt(~surface, sampling=spacing)
