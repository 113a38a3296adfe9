"""Cubic boxes inside an input voxel grid, where the tumour model is solved, and resampling into them and back.

A ``Crop`` is a cube of ``n^3`` cell centres with isotropic spacing ``h = side_mm / n``, aligned with the
input voxel axes: box point ``i`` (per axis) sits at box coordinate ``(i + 1/2) h`` mm, exactly the points
of ``Grid(shape=(n,) * 3, lower=0, upper=side_mm, layout="cell")``, and at input voxel coordinate

    v_k = start_k + (i_k + 1/2) h / s_k          (s_k = input voxel size along axis k, mm)

so anisotropic voxels, flipped axes and rotated (non-diagonal) affines are handled in the input's own
index space. Resampling is separable (one axis at a time): multilinear (``order=1``) or nearest
(``order=0``, for labels). A value is defined on the union of the source cells (each voxel covers half a
voxel around its centre) and is zero beyond it: the box is zero (no tissue) where it leaves the volume,
and ``to_input`` is zero outside the box.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..grid import Grid
from ..io import InputError, Volume, voxel_spacing


def check_orthogonal(affine, what: str) -> np.ndarray:
    """``affine`` as a float array if it is a finite 4x4 matrix with orthogonal, non-zero voxel axes.

    Raises:
        InputError: naming ``what``, when it is not.
    """
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise InputError(f"{what}: the affine must be a finite 4x4 matrix, got shape {a.shape}.")
    cols = a[:3, :3]
    norms = np.linalg.norm(cols, axis=0)
    if np.any(norms <= 0):
        raise InputError(f"{what}: the affine has a zero-length voxel axis; fix the NIfTI header.")
    unit = cols / norms
    if not np.allclose(unit.T @ unit, np.eye(3), atol=1e-4):
        raise InputError(f"{what}: the voxel axes of the affine are not orthogonal (sheared grid); resample "
                         f"the inputs onto a grid with orthogonal axes first.")
    return a


def _resample_axis(x: np.ndarray, axis: int, pos: np.ndarray, order: int) -> np.ndarray:
    """Sample ``x`` along ``axis`` at index positions ``pos``: nearest (0) or linear (1) with clamped
    indices inside the source cells ``[-1/2, n - 1/2]``, and 0 beyond them."""
    n = x.shape[axis]
    inside = (pos >= -0.5) & (pos <= n - 0.5)
    p = np.clip(pos, 0.0, n - 1.0)
    shape = [1] * x.ndim
    shape[axis] = pos.size
    if order == 0:
        i = np.minimum(np.floor(p + 0.5).astype(np.intp), n - 1)
        out = np.take(x, i, axis=axis)
    else:
        i0 = np.clip(np.floor(p).astype(np.intp), 0, max(n - 2, 0))
        i1 = np.minimum(i0 + 1, n - 1)
        w = (p - i0).reshape(shape)
        out = np.take(x, i0, axis=axis) * (1.0 - w) + np.take(x, i1, axis=axis) * w
    return np.where(inside.reshape(shape), out, np.zeros((), out.dtype))


def _resample(x: np.ndarray, positions, order: int) -> np.ndarray:
    """Separable resampling of the trailing ``len(positions)`` axes of ``x``."""
    if order not in (0, 1):
        from scipy import ndimage

        return _resample_spline(x, positions, order, ndimage)
    nd = len(positions)
    sizes = [x.shape[x.ndim - nd + k] for k in range(nd)]
    # shrink first: axes whose output is smaller than their input go first
    for k in sorted(range(nd), key=lambda k: len(positions[k]) / max(sizes[k], 1)):
        x = _resample_axis(x, x.ndim - nd + k, np.asarray(positions[k], dtype=float), order)
    return x


def _resample_spline(x, positions, order, ndimage):
    nd = len(positions)
    mesh = np.meshgrid(*positions, indexing="ij")
    inside = np.ones(mesh[0].shape, bool)
    for k, m in enumerate(mesh):
        inside &= (m >= -0.5) & (m <= x.shape[x.ndim - nd + k] - 0.5)
    coords = np.stack(mesh)
    flat = x.reshape((-1,) + x.shape[x.ndim - nd:])
    out = np.stack([ndimage.map_coordinates(np.asarray(f, float), coords, order=order, mode="nearest")
                    for f in flat])
    out = np.where(inside, out, 0.0)
    return out.reshape(x.shape[:x.ndim - nd] + out.shape[1:])


@dataclasses.dataclass(frozen=True, eq=False)
class Crop:
    """A cubic box of ``n^3`` cell centres (spacing ``side_mm / n``) inside an input voxel grid.

    Attributes:
        n: points per axis.
        input_shape: shape of the input volume.
        input_affine: its 4x4 voxel-to-world affine (mm).
        start: input voxel coordinates (float) of the box corner (the outer face of box point 0).
        side_mm: side of the cube in mm.
    """

    n: int
    input_shape: tuple[int, int, int]
    input_affine: np.ndarray
    start: tuple[float, float, float]
    side_mm: float

    def __post_init__(self):
        object.__setattr__(self, "n", int(self.n))
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "start", tuple(float(s) for s in self.start))
        object.__setattr__(self, "side_mm", float(self.side_mm))
        object.__setattr__(self, "input_affine", check_orthogonal(self.input_affine, "Crop"))
        if self.n < 1 or len(self.input_shape) != 3 or len(self.start) != 3:
            raise ValueError(f"Crop: need n >= 1, a 3-D input_shape and 3 start coordinates, got n = {self.n}, "
                             f"input_shape = {self.input_shape}, start = {self.start}.")
        if not (math.isfinite(self.side_mm) and self.side_mm > 0) or not all(map(math.isfinite, self.start)):
            raise ValueError(f"Crop: side_mm must be positive and start finite, got {self.side_mm}, {self.start}.")

    # -------------------------------------------------------------- geometry
    @property
    def spacing_mm(self) -> float:
        """Box spacing ``h = side_mm / n`` (mm, the same on every axis)."""
        return self.side_mm / self.n

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n,) * 3

    @property
    def input_spacing(self) -> np.ndarray:
        """Input voxel size per axis (mm)."""
        return np.asarray(voxel_spacing(self.input_affine))

    @property
    def step(self) -> np.ndarray:
        """Box spacing in input voxel units per axis, ``h / s_k``."""
        return self.spacing_mm / self.input_spacing

    @property
    def grid(self) -> Grid:
        """The box as a ``bodil.Grid`` (mm, cell layout, axes ``x``, ``y``, ``z`` along the input axes)."""
        return Grid(shape=self.shape, lower=(0.0,) * 3, upper=(self.side_mm,) * 3, names=("x", "y", "z"),
                    layout=("cell",) * 3)

    @property
    def affine(self) -> np.ndarray:
        """4x4 affine of the box grid: box index ``(i, j, k, 1)`` -> world mm (to save box arrays as NIfTI)."""
        m = np.eye(4)
        m[:3, :3] = np.diag(self.step)
        m[:3, 3] = np.asarray(self.start) + 0.5 * self.step
        return self.input_affine @ m

    def box_to_voxel(self, points_mm) -> np.ndarray:
        """Box coordinates (mm, ``(..., 3)``) -> input voxel coordinates ``start + p / s``."""
        p = np.asarray(points_mm, dtype=float)
        return np.asarray(self.start) + p / self.input_spacing

    def voxel_to_box(self, voxels) -> np.ndarray:
        """Input voxel coordinates ``(..., 3)`` -> box coordinates (mm)."""
        return (np.asarray(voxels, dtype=float) - np.asarray(self.start)) * self.input_spacing

    def box_to_world(self, points_mm) -> np.ndarray:
        """Box coordinates (mm, ``(..., 3)``) -> world coordinates (mm) through the input affine."""
        v = self.box_to_voxel(points_mm)
        return v @ self.input_affine[:3, :3].T + self.input_affine[:3, 3]

    def world_to_box(self, points_world) -> np.ndarray:
        """World coordinates (mm, ``(..., 3)``) -> box coordinates (mm)."""
        w = np.asarray(points_world, dtype=float)
        v = np.linalg.solve(self.input_affine[:3, :3], (w - self.input_affine[:3, 3]).reshape(-1, 3).T).T
        return self.voxel_to_box(v.reshape(w.shape))

    # -------------------------------------------------------------- resampling
    def _check_order(self, order: int) -> int:
        if order not in range(6):
            raise ValueError(f"Crop: interpolation order must be 0 (nearest, labels), 1 (linear) or a spline "
                             f"order up to 5, got {order!r}.")
        return int(order)

    def to_box(self, volume, order: int = 1) -> np.ndarray:
        """Resample an input-grid array (or ``Volume``; leading batch axes allowed) into the ``(n, n, n)`` box.

        Zero where the box leaves the input volume. ``order=0`` (nearest) keeps integer labels.
        """
        data = volume.data if isinstance(volume, Volume) else np.asarray(volume)
        if tuple(data.shape[-3:]) != self.input_shape:
            raise ValueError(f"Crop.to_box: the array has shape {data.shape} but the crop was made for input "
                             f"shape {self.input_shape}.")
        centres = (np.arange(self.n) + 0.5)
        positions = [self.start[k] + centres * self.step[k] for k in range(3)]
        return _resample(data, positions, self._check_order(order))

    def input_window(self) -> tuple[slice, slice, slice]:
        """Slices of the input voxels whose centres lie inside the box (possibly empty)."""
        out = []
        for k in range(3):
            lo = max(0, math.ceil(self.start[k] - 1e-9))
            hi = min(self.input_shape[k] - 1, math.floor(self.start[k] + self.n * self.step[k] + 1e-9))
            out.append(slice(lo, max(lo, hi + 1)))
        return tuple(out)

    def to_input(self, field, order: int = 1) -> np.ndarray:
        """Resample a box array ``(..., n, n, n)`` back onto the input grid ``(..., *input_shape)``.

        Only the input voxels whose centres lie inside the box are computed; all others are zero.
        Leading axes (a batch of fields, for example posterior samples) are carried along.
        """
        window, block = self.to_input_window(field, order)
        out = np.zeros(block.shape[:-3] + self.input_shape, dtype=block.dtype)
        out[(Ellipsis, *window)] = block
        return out

    def to_input_window(self, field, order: int = 1) -> tuple[tuple[slice, ...], np.ndarray]:
        """``to_input`` without the zeros around the box: the input-grid slices of the voxels whose centres lie
        inside the box, and the resampled field on them (``to_input(field)[..., *window] == block``)."""
        f = np.asarray(field)
        if tuple(f.shape[-3:]) != self.shape:
            raise ValueError(f"Crop.to_input: the field has shape {f.shape}, expected (..., {self.n}, {self.n}, "
                             f"{self.n}) for this box.")
        window = self.input_window()
        positions = [(np.arange(s.start, s.stop) - self.start[k]) / self.step[k] - 0.5
                     for k, s in enumerate(window)]
        return window, _resample(f, positions, self._check_order(order))


def side_to_contain(mask: np.ndarray, inner: np.ndarray, affine, margin_mm: float) -> float:
    """The side (mm) of the cube centred like ``crop_around(mask, ...)`` that contains every voxel of ``inner``
    (whole voxels) grown by ``margin_mm``: for the largest margin's CTV around the core."""
    s = np.asarray(voxel_spacing(check_orthogonal(affine, "side_to_contain")))
    idx = np.argwhere(np.asarray(mask, bool))
    centre = 0.5 * (idx.min(axis=0) + idx.max(axis=0))
    core = np.argwhere(np.asarray(inner, bool))
    if core.size == 0:
        return 0.0
    reach = np.maximum(np.abs(core.min(axis=0) - 0.5 - centre), np.abs(core.max(axis=0) + 0.5 - centre)) * s
    return float(2.0 * (np.max(reach) + margin_mm))


def crop_around(mask: np.ndarray, affine, *, scale: float = 1.5, n: int = 32,
                min_side_mm: float | None = None) -> Crop:
    """A cube centred on the bounding box of ``mask``, ``scale`` times its largest extent.

    Args:
        mask: boolean array (for example the tumour: core or edema) on the input grid.
        affine: the input's 4x4 voxel-to-world affine (mm).
        scale: side of the cube over the largest bounding-box extent (``(hi - lo + 1) s_k`` mm per axis,
            whole voxels); GliODIL uses a grid 50% larger than the tumour (1.5).
        n: points per axis of the box.
        min_side_mm: lower bound on the side (small tumours).

    The cube may extend beyond the volume; ``Crop.to_box`` fills that part with zeros (no tissue).

    Raises:
        InputError: the mask is empty.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 3:
        raise ValueError(f"crop_around: mask must be 3-D, got shape {m.shape}.")
    if not m.any():
        raise InputError("crop_around: the mask is empty, so there is no tumour to centre the box on; check the "
                         "segmentation and its label convention.")
    if not scale > 0 or int(n) < 2:
        raise ValueError(f"crop_around: need scale > 0 and n >= 2, got scale = {scale}, n = {n}.")
    a = check_orthogonal(affine, "crop_around")
    s = np.asarray(voxel_spacing(a))
    idx = np.argwhere(m)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    centre = 0.5 * (lo + hi)
    side = float(scale * np.max((hi - lo + 1) * s))
    if min_side_mm is not None:
        side = max(side, float(min_side_mm))
    start = centre - 0.5 * side / s
    return Crop(n=int(n), input_shape=m.shape, input_affine=a, start=tuple(start), side_mm=side)


__all__ = ["Crop", "check_orthogonal", "crop_around", "side_to_contain"]
