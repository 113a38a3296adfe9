"""Brain anatomy (tissue fractions) from NIfTI files or the MNI152 atlas, and the cubic boxes the tumour
model is solved in.

An ``Anatomy`` holds white-matter, grey-matter and CSF fractions ``c_w``, ``c_g``, ``c_csf`` in ``[0, 1]``
on one voxel grid with its 4x4 voxel-to-world ``affine`` (mm). The tumour diffuses in tissue
(``c_w + c_g``, Amoudruz et al. 2025, eq. 29); the brain (tissue + CSF) bounds the clinical target volumes.

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
import functools
import math
from collections.abc import Mapping

import numpy as np

from ..grid import Grid
from ..io import InputError, Volume, check_same_grid, load_nifti, voxel_spacing

BRAIN_THRESHOLD = 0.5
"""A voxel belongs to the brain when ``c_w + c_g + c_csf >= 0.5``: more than half of it is brain."""


def _check_orthogonal(affine, what: str) -> np.ndarray:
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


@dataclasses.dataclass(frozen=True, eq=False)
class Anatomy:
    """Tissue fractions ``wm``, ``gm``, ``csf`` (each in ``[0, 1]``, sum at most 1) on one grid with ``affine``."""

    wm: np.ndarray
    gm: np.ndarray
    csf: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(np.shape(self.wm))

    @property
    def spacing(self) -> tuple[float, ...]:
        """mm per voxel along each array axis (from the affine)."""
        return voxel_spacing(self.affine)

    @property
    def tissue(self) -> np.ndarray:
        """``c_w + c_g``: where tumour cells can migrate."""
        return self.wm + self.gm

    @property
    def brain(self) -> np.ndarray:
        """Boolean brain mask ``c_w + c_g + c_csf >= 0.5`` (see ``BRAIN_THRESHOLD``)."""
        return (self.wm + self.gm + self.csf) >= BRAIN_THRESHOLD

    def validate(self, tol: float = 1e-3) -> "Anatomy":
        """Check shapes, finiteness, fractions in ``[0, 1]`` and ``wm + gm + csf <= 1`` (all within ``tol``).

        Returns ``self``; raises ``InputError`` with what is wrong and how to fix it.
        """
        shapes = {name: np.shape(getattr(self, name)) for name in ("wm", "gm", "csf")}
        if len(set(shapes.values())) != 1 or len(shapes["wm"]) != 3:
            raise InputError(f"anatomy: wm, gm and csf must be 3-D arrays of one shape, got {shapes}.")
        _check_orthogonal(self.affine, "anatomy")
        for name in ("wm", "gm", "csf"):
            arr = np.asarray(getattr(self, name))
            if not np.all(np.isfinite(arr)):
                raise InputError(f"anatomy: the {name} map contains NaN or infinite values; replace them by 0.")
            lo, hi = float(arr.min()), float(arr.max())
            if lo < -tol or hi > 1.0 + tol:
                raise InputError(f"anatomy: the {name} map has values in [{lo:.4g}, {hi:.4g}] but tissue fractions "
                                 f"must lie in [0, 1]; give probability (partial-volume) maps, or a label map "
                                 f"through load_tissue_labels.")
        total = np.asarray(self.wm) + np.asarray(self.gm) + np.asarray(self.csf)
        over = total > 1.0 + tol
        if np.any(over):
            raise InputError(f"anatomy: wm + gm + csf exceeds 1 in {int(over.sum())} voxel(s) (max "
                             f"{float(total.max()):.4g}); the maps must be fractions of one partition "
                             f"(check that no map is given twice and that they come from one segmentation).")
        return self

    def crop(self, crop: "Crop") -> "Anatomy":
        """The tissue fractions resampled (linearly) into ``crop``'s box, with the box affine."""
        return Anatomy(wm=crop.to_box(self.wm), gm=crop.to_box(self.gm), csf=crop.to_box(self.csf),
                       affine=crop.affine)


def _fractions(arr) -> np.ndarray:
    return np.clip(np.asarray(arr, dtype=float), 0.0, 1.0)


def load_tissue(wm, gm, csf=None) -> Anatomy:
    """Tissue fractions from NIfTI probability maps on one grid.

    Args:
        wm, gm: white- and grey-matter fraction maps (paths).
        csf: optional CSF fraction map. Without it the CSF fraction is 0 everywhere (nothing is invented
            where no map was given), so the brain mask is the tissue ``wm + gm >= 0.5``.

    Returns:
        A validated ``Anatomy`` (tiny excursions within the tolerance clipped to ``[0, 1]``).
    """
    vols = {"white-matter map": load_nifti(wm, what="white-matter map"),
            "grey-matter map": load_nifti(gm, what="grey-matter map")}
    if csf is not None:
        vols["CSF map"] = load_nifti(csf, what="CSF map")
    check_same_grid(vols)
    v_wm, v_gm = vols["white-matter map"], vols["grey-matter map"]
    c = vols["CSF map"].data if csf is not None else np.zeros(v_wm.shape)
    Anatomy(wm=v_wm.data, gm=v_gm.data, csf=c, affine=v_wm.affine).validate()
    return Anatomy(wm=_fractions(v_wm.data), gm=_fractions(v_gm.data), csf=_fractions(c), affine=v_wm.affine)


DEFAULT_TISSUE_LABELS = {"csf": 1, "gm": 2, "wm": 3}
"""Label-map convention of FSL FAST and most atlases: 0 background, 1 CSF, 2 grey matter, 3 white matter."""


def load_tissue_labels(path, mapping: Mapping[str, int | list[int]] | None = None) -> Anatomy:
    """Tissue fractions (0 or 1) from an integer label map.

    Args:
        path: NIfTI label map.
        mapping: ``{"csf": label, "gm": label, "wm": label}`` (a value may be a list of labels); default
            ``DEFAULT_TISSUE_LABELS`` (1 CSF, 2 GM, 3 WM). Label 0 is always background.

    Raises:
        InputError: non-integer values, or labels that are neither 0 nor in ``mapping``.
    """
    mapping = dict(DEFAULT_TISSUE_LABELS if mapping is None else mapping)
    unknown_keys = set(mapping) - {"csf", "gm", "wm"}
    if unknown_keys:
        raise InputError(f"tissue label mapping: unknown tissue name(s) {sorted(unknown_keys)}; use 'csf', 'gm' "
                         f"and 'wm', for example {DEFAULT_TISSUE_LABELS}.")
    vol = load_nifti(path, what="tissue label map")
    data = vol.data
    if not np.all(data == np.round(data)):
        raise InputError(f"tissue label map {vol.path!r}: values must be integer labels; for probability maps "
                         f"use load_tissue(wm, gm, csf).")
    labels = {name: np.atleast_1d(np.asarray(v, dtype=int)) for name, v in mapping.items()}
    known = np.concatenate([[0], *labels.values()])
    present = np.unique(data).astype(int)
    unknown = np.setdiff1d(present, known)
    if unknown.size:
        raise InputError(f"tissue label map {vol.path!r}: label(s) {unknown.tolist()} are not in the mapping "
                         f"{mapping} (0 = background); give a mapping that covers every label.")
    frac = {name: np.isin(data, labels.get(name, [])).astype(float) for name in ("wm", "gm", "csf")}
    return Anatomy(wm=frac["wm"], gm=frac["gm"], csf=frac["csf"], affine=vol.affine).validate()


def mni152(resolution: int = 2) -> Anatomy:
    """The MNI152 (ICBM 2009) atlas shipped with nilearn, at 1 or 2 mm (no download).

    White and grey matter are nilearn's probability templates; CSF is the brain mask minus them,
    ``clip(mask - c_g - c_w, 0, 1)``. Cached per resolution (loading takes seconds); the arrays are
    read-only, copy them before editing.
    """
    if resolution not in (1, 2):
        raise InputError(f"mni152: resolution must be 1 or 2 (mm), got {resolution!r}.")
    return _mni152(int(resolution))


@functools.lru_cache(maxsize=2)
def _mni152(resolution: int) -> Anatomy:
    try:
        from nilearn import datasets
    except ImportError:
        raise InputError("mni152: the MNI152 atlas needs nilearn (pip install nilearn); or give your own "
                         "tissue maps.") from None
    gm_img = datasets.load_mni152_gm_template(resolution=resolution)
    wm_img = datasets.load_mni152_wm_template(resolution=resolution)
    mask_img = datasets.load_mni152_brain_mask(resolution=resolution)
    gm = _fractions(gm_img.get_fdata())
    wm = _fractions(wm_img.get_fdata())
    mask = _fractions(mask_img.get_fdata())
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    affine = np.array(gm_img.affine, dtype=float)
    check_same_grid({"MNI152 grey matter": Volume(gm, affine), "MNI152 white matter": Volume(wm, wm_img.affine),
                     "MNI152 brain mask": Volume(mask, mask_img.affine)})
    for arr in (wm, gm, csf, affine):
        arr.setflags(write=False)
    return Anatomy(wm=wm, gm=gm, csf=csf, affine=affine).validate()


# ---------------------------------------------------------------------------------------------- boxes
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
        object.__setattr__(self, "input_affine", _check_orthogonal(self.input_affine, "Crop"))
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
        f = np.asarray(field)
        if tuple(f.shape[-3:]) != self.shape:
            raise ValueError(f"Crop.to_input: the field has shape {f.shape}, expected (..., {self.n}, {self.n}, "
                             f"{self.n}) for this box.")
        window = self.input_window()
        positions = [(np.arange(s.start, s.stop) - self.start[k]) / self.step[k] - 0.5
                     for k, s in enumerate(window)]
        block = _resample(f, positions, self._check_order(order))
        out = np.zeros(f.shape[:-3] + self.input_shape, dtype=block.dtype)
        out[(Ellipsis, *window)] = block
        return out


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
    a = _check_orthogonal(affine, "crop_around")
    s = np.asarray(voxel_spacing(a))
    idx = np.argwhere(m)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    centre = 0.5 * (lo + hi)
    side = float(scale * np.max((hi - lo + 1) * s))
    if min_side_mm is not None:
        side = max(side, float(min_side_mm))
    start = centre - 0.5 * side / s
    return Crop(n=int(n), input_shape=m.shape, input_affine=a, start=tuple(start), side_mm=side)


def resample_isotropic(anatomy: Anatomy, spacing_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The anatomy on a cube of isotropic spacing ``spacing_mm`` that covers it (multilinear, zero outside):
    ``(wm, gm, affine)`` with the cube's 4x4 voxel-to-world affine. Surrogate datasets are made on it."""
    if not (math.isfinite(spacing_mm) and spacing_mm > 0):
        raise InputError(f"resample_isotropic: spacing_mm must be positive, got {spacing_mm!r}.")
    shape = np.asarray(anatomy.shape)
    step = np.asarray(anatomy.spacing)
    n = int(math.ceil(float(np.max(shape * step)) / spacing_mm))
    start = 0.5 * shape - 0.5 * n * spacing_mm / step
    crop = Crop(n=n, input_shape=tuple(int(s) for s in shape), input_affine=anatomy.affine, start=tuple(start),
                side_mm=n * spacing_mm)
    return crop.to_box(anatomy.wm), crop.to_box(anatomy.gm), crop.affine
