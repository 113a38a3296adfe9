"""Brain anatomy (tissue fractions) from NIfTI files or the MNI152 atlas.

An ``Anatomy`` holds white-matter, grey-matter and CSF fractions ``c_w``, ``c_g``, ``c_csf`` in ``[0, 1]``
on one voxel grid with its 4x4 voxel-to-world ``affine`` (mm). The tumour diffuses in tissue
(``c_w + c_g``, Amoudruz et al. 2025, eq. 29); the brain (tissue + CSF) bounds the clinical target volumes.

The cubic boxes the model is solved in (``Crop``, ``crop_around``) live in ``bodil.tumor.box`` and are
re-exported here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping

import numpy as np

from ..io import InputError, Volume, check_same_grid, load_nifti, voxel_spacing
from .box import Crop, check_orthogonal, crop_around

BRAIN_THRESHOLD = 0.5
"""A voxel belongs to the brain when ``c_w + c_g + c_csf >= 0.5``: more than half of it is brain."""


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
        check_orthogonal(self.affine, "anatomy")
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


__all__ = ["BRAIN_THRESHOLD", "DEFAULT_TISSUE_LABELS", "Anatomy", "Crop", "crop_around", "load_tissue",
           "load_tissue_labels", "mni152", "resample_isotropic"]
