"""Tissue maps in the patient's own space: the MNI152 atlas registered to the patient's T1 (dipy).

The MNI152 2009 T1 template shipped with nilearn (skull-stripped, no download) is the moving image, the
patient's T1 the static one; both are brought to an isotropic working grid (``spacing_mm``, default 2 mm;
Gaussian anti-aliasing before down-sampling). Then (Avants et al. 2008 for SyN; Garyfallidis et al. 2014 for
dipy):

1. affine: centres of mass, then translation, rigid and full affine transforms, each maximising Mattes
   mutual information (32 bins, dense sampling) over a multi-resolution pyramid. The lesion (core and edema,
   dilated by ``lesion_margin_mm``) is left out of the metric through dipy's ``static_mask``; the template
   side is restricted to its brain mask dilated by ``head_margin_mm``, so that a T1 with skull registers like a
   skull-stripped one.
2. deformable: symmetric diffeomorphic registration (SyN) with the local cross-correlation metric. dipy's SyN
   takes no mask, so the lesion is excluded by *filling* it (Brett et al. 2001, cost-function masking by
   substitution): inside the dilated lesion the patient's T1 is replaced by the affinely aligned template
   times a smooth gain ``G * (T1 w) / G * (template w)`` (``G`` a Gaussian of ``gain_sigma_mm``, ``w`` the brain
   outside the lesion), so the metric sees a perfect match there and the deformation inside the lesion is
   the smooth continuation of its surroundings. The patient's T1 outside the affinely aligned brain mask
   (dilated by ``head_margin_mm``) is set to 0 (skull stripping by the atlas).
3. the atlas's grey matter, white matter and CSF (``bodil.tumor.anatomy.mni152``, CSF = brain mask - GM - WM)
   are pulled back through the composed transform onto the patient's own grid (linear interpolation).

Similarity figure (``RegistrationResult.similarity``): the Pearson correlation (global normalised
cross-correlation, NCC) between the patient's T1 and the warped template over the warped brain outside the
dilated lesion, on the working grid, after the affine and after SyN, and its local counterpart (mean of the
Gaussian-windowed correlation, window ``sigma`` 5 mm), which a smooth bias field does not lower: a
registration whose local NCC is below ``POOR_REGISTRATION_NCC`` is flagged.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time

import numpy as np
from scipy import ndimage

from ..io import InputError, Volume
from ..progress import ProgressMeter, as_meter
from .anatomy import Anatomy, mni152

log = logging.getLogger(__name__)

POOR_REGISTRATION_NCC = 0.8
"""A registration whose local NCC (T1 vs warped template, brain outside the lesion) is below this is flagged."""

_SIGMAS = {4: 3.0, 2: 1.0, 1: 0.0}  # pyramid smoothing (voxels) per down-sampling factor, as dipy's default


@dataclasses.dataclass(frozen=True)
class RegistrationSettings:
    """How the atlas is registered to a patient.

    Attributes:
        spacing_mm: isotropic working grid of SyN (the maps are then warped to the patient grid).
        affine_spacing_mm: working grid of the affine stages (``max(spacing_mm, affine_spacing_mm)``): twelve
            parameters need no fine grid, and mutual information costs per voxel.
        lesion_margin_mm: dilation of core + edema before it is left out of the metric.
        head_margin_mm: dilation of the template's brain mask (affine metric) and of the aligned mask
            (skull stripping before SyN).
        affine_iterations: iterations per pyramid level (coarse to fine) of each affine stage.
        syn_iterations: iterations per pyramid level of SyN (its pyramid has as many levels).
        cc_radius: half-width (voxels) of the cross-correlation window of SyN.
        gain_sigma_mm: width of the gain that matches the template's intensities to the patient's in the
            filled lesion.
        atlas_resolution: 1 or 2 mm, the atlas maps that are warped (1 mm for 1 mm patients).
    """

    spacing_mm: float = 2.0
    affine_spacing_mm: float = 4.0
    lesion_margin_mm: float = 5.0
    head_margin_mm: float = 4.0
    affine_iterations: tuple = (100, 50, 25)
    syn_iterations: tuple = (30, 20, 10)
    cc_radius: int = 2
    gain_sigma_mm: float = 12.0
    atlas_resolution: int = 1

    def __post_init__(self):
        for name in ("spacing_mm", "affine_spacing_mm", "gain_sigma_mm"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"RegistrationSettings: {name} must be a positive number (mm), got {v!r}.")
        for name in ("lesion_margin_mm", "head_margin_mm"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"RegistrationSettings: {name} must be >= 0 (mm), got {v!r}.")
        for name in ("affine_iterations", "syn_iterations"):
            v = tuple(getattr(self, name))
            if not v or any(not isinstance(i, int) or i < 0 for i in v):
                raise ValueError(f"RegistrationSettings: {name} must be non-negative integers per level, "
                                 f"coarse to fine, e.g. (100, 50, 25); got {v!r}.")
            object.__setattr__(self, name, v)
        if not (isinstance(self.cc_radius, int) and self.cc_radius >= 1):
            raise ValueError(f"RegistrationSettings: cc_radius must be an integer >= 1, got {self.cc_radius!r}.")
        if self.atlas_resolution not in (1, 2):
            raise ValueError(f"RegistrationSettings: atlas_resolution must be 1 or 2 (mm), got "
                             f"{self.atlas_resolution!r}.")


@dataclasses.dataclass(frozen=True, eq=False)
class RegistrationResult:
    """The atlas on the patient's grid.

    Attributes:
        anatomy: warped GM, WM and CSF fractions on the T1's grid and affine.
        template: the warped MNI152 T1 on that grid (for quality control).
        affine: the 4x4 patient-world -> atlas-world affine found before SyN.
        similarity: ``ncc``, ``ncc_affine``, ``local_ncc``, ``local_ncc_affine`` and ``voxels`` (see module doc).
        wall_s: seconds, registration and warping.
    """

    anatomy: Anatomy
    template: np.ndarray
    affine: np.ndarray
    similarity: dict
    wall_s: float

    @property
    def poor(self) -> bool:
        return not self.similarity["local_ncc"] >= POOR_REGISTRATION_NCC  # NaN included


@functools.lru_cache(maxsize=2)
def mni152_t1(resolution: int = 1) -> Volume:
    """The skull-stripped MNI152 2009 T1 template shipped with nilearn (values in ``[0, 1]``), read-only."""
    if resolution not in (1, 2):
        raise InputError(f"mni152_t1: resolution must be 1 or 2 (mm), got {resolution!r}.")
    from nilearn import datasets

    img = datasets.load_mni152_template(resolution=resolution)
    data = np.asarray(img.get_fdata(), dtype=float)
    affine = np.array(img.affine, dtype=float)
    data.setflags(write=False)
    affine.setflags(write=False)
    return Volume(data, affine, None)


def resample(data, affine, out_shape, out_affine, order: int = 1) -> np.ndarray:
    """``data`` (voxel-to-world ``affine``) sampled at the voxels of ``(out_shape, out_affine)``, 0 outside;
    Gaussian anti-aliasing (``sigma = 0.4 x`` the down-sampling factor per input axis) when coarser."""
    data = np.asarray(data, float)
    to_in = np.linalg.solve(np.asarray(affine, float), np.asarray(out_affine, float))
    step = np.linalg.norm(to_in[:3, :3], axis=1)  # input voxels per output voxel, per input axis
    if order > 0 and np.any(step > 1.01):
        data = ndimage.gaussian_filter(data, 0.4 * np.maximum(step - 1.0, 0.0) + 1e-9 * (step <= 1.0))
    return ndimage.affine_transform(data, to_in[:3, :3], to_in[:3, 3], output_shape=tuple(out_shape),
                                    order=order, mode="constant", cval=0.0)


def isotropic_grid(shape, affine, spacing_mm: float) -> tuple[tuple[int, ...], np.ndarray]:
    """A grid of ``spacing_mm`` voxels with the same orientation, covering the same field of view."""
    affine = np.asarray(affine, float)
    sp = np.linalg.norm(affine[:3, :3], axis=0)
    n = np.maximum(np.ceil(np.asarray(shape) * sp / spacing_mm).astype(int), 1)
    out = affine.copy()
    out[:3, :3] = affine[:3, :3] / sp * spacing_mm
    centre = affine[:3, :3] @ (0.5 * (np.asarray(shape) - 1)) + affine[:3, 3]
    out[:3, 3] = centre - out[:3, :3] @ (0.5 * (n - 1))
    return tuple(int(v) for v in n), out


def check_image(data, what: str) -> None:
    """Refuse a non-3-D, non-finite, empty or constant image (``InputError`` saying which)."""
    data = np.asarray(data)
    if data.ndim != 3:
        raise InputError(f"{what}: expected a 3-D image, got shape {data.shape}; extract one 3-D volume first.")
    if not np.all(np.isfinite(data)):
        raise InputError(f"{what}: contains NaN or infinite values; replace them (for example by 0).")
    if float(np.ptp(data)) == 0.0:
        value = float(data.flat[0])
        kind = "empty (0 everywhere)" if value == 0.0 else f"constant ({value:g} everywhere)"
        raise InputError(f"{what}: the image is {kind}, so nothing can be registered to it; check that the right "
                         f"file was given.")


def _normalise(data: np.ndarray) -> np.ndarray:
    fg = data[data > 0]
    top = float(np.percentile(fg, 99.5)) if fg.size else 1.0
    return np.clip(data / max(top, 1e-12), 0.0, 1.5)


def _factors(spacing_mm: float, levels: int) -> list[int]:
    """Down-sampling factors of the pyramid: the finest ``levels`` of (4, 2, 1), coarsest at most 12 mm."""
    out = [f for f in (4, 2, 1) if f * spacing_mm <= 12.0 or f == 1][-levels:]
    return out


def _affine(static, s_aff, moving, m_aff, static_mask, moving_mask, s: RegistrationSettings, meter):
    from dipy.align.imaffine import AffineRegistration, MutualInformationMetric, transform_centers_of_mass
    from dipy.align.transforms import AffineTransform3D, RigidTransform3D, TranslationTransform3D

    factors = _factors(s.spacing_mm, len(s.affine_iterations))
    iters = list(s.affine_iterations[-len(factors):])
    reg = AffineRegistration(metric=MutualInformationMetric(nbins=32, sampling_proportion=None), level_iters=iters,
                             sigmas=[_SIGMAS[f] for f in factors], factors=factors, verbosity=0)
    current = transform_centers_of_mass(static * static_mask, s_aff, moving * moving_mask, m_aff).affine
    for transform in (TranslationTransform3D(), RigidTransform3D(), AffineTransform3D()):
        fit = reg.optimize(static, moving, transform, None, static_grid2world=s_aff, moving_grid2world=m_aff,
                           starting_affine=current, static_mask=static_mask.astype(np.float64),
                           moving_mask=moving_mask.astype(np.float64))
        current = fit.affine
        meter.step()
    return fit


def _working(t1: Volume, lesion, tpl_src: Volume, atlas_affine, brain_src, spacing: float, s: RegistrationSettings):
    """Patient (normalised), dilated lesion, template and its brain mask on isotropic grids of ``spacing``."""
    shape, s_aff = isotropic_grid(t1.shape, t1.affine, spacing)
    static = _normalise(resample(t1.data, t1.affine, shape, s_aff))
    les = np.zeros(shape, bool)
    if lesion is not None and np.any(lesion):
        les = resample(np.asarray(lesion, float), t1.affine, shape, s_aff) > 0.1
        les = ndimage.binary_dilation(les, iterations=max(1, round(s.lesion_margin_mm / spacing)))
    m_shape, m_aff = isotropic_grid(tpl_src.shape, tpl_src.affine, spacing)
    moving = resample(tpl_src.data, tpl_src.affine, m_shape, m_aff)
    m_brain = resample(brain_src, atlas_affine, m_shape, m_aff) >= 0.5
    return static, s_aff, les, moving, m_aff, m_brain


def _affine_map(matrix, static, s_aff, moving, m_aff):
    from dipy.align.imaffine import AffineMap

    return AffineMap(matrix, domain_grid_shape=static.shape, domain_grid2world=s_aff,
                     codomain_grid_shape=moving.shape, codomain_grid2world=m_aff)


def _syn(static, s_aff, moving, m_aff, prealign, s: RegistrationSettings):
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric

    from dipy.utils.logging import logger as dipy_log

    sdr = SymmetricDiffeomorphicRegistration(CCMetric(3, sigma_diff=2.0, radius=s.cc_radius),
                                             level_iters=list(s.syn_iterations))
    level = dipy_log.level
    dipy_log.setLevel(logging.WARNING)  # dipy prints every pyramid level at INFO; restored below
    try:
        return sdr.optimize(static, moving, static_grid2world=s_aff, moving_grid2world=m_aff, prealign=prealign)
    finally:
        dipy_log.setLevel(level)


def fill_lesion(static: np.ndarray, aligned_template: np.ndarray, lesion: np.ndarray, brain: np.ndarray,
                sigma_vox: float) -> np.ndarray:
    """``static`` with the ``lesion`` voxels replaced by ``gain * aligned_template``, ``gain = G(static w) /
    G(template w)`` (``G`` Gaussian of ``sigma_vox``; ``w`` = brain outside the lesion; the global ratio where
    the local one is undefined)."""
    w = (brain & ~lesion).astype(float)
    num = ndimage.gaussian_filter(static * w, sigma_vox)
    den = ndimage.gaussian_filter(aligned_template * w, sigma_vox)
    total = float((aligned_template * w).sum())
    global_gain = float((static * w).sum()) / total if total > 0 else 1.0
    gain = np.where(den > 1e-3 * max(float(den.max()), 1e-12), num / np.maximum(den, 1e-12), global_gain)
    out = static.copy()
    out[lesion] = (gain * aligned_template)[lesion]
    return out


def similarity(t1: np.ndarray, template: np.ndarray, region: np.ndarray, sigma_vox: float) -> tuple[float, float]:
    """``(ncc, local_ncc)`` of ``t1`` and ``template`` over ``region`` (see the module docstring)."""
    if int(region.sum()) < 10:
        return float("nan"), float("nan")
    a, b = t1[region], template[region]
    ncc = float(np.corrcoef(a, b)[0, 1])
    w = region.astype(float)

    def g(x):
        return ndimage.gaussian_filter(x * w, sigma_vox)

    norm = np.maximum(g(np.ones_like(t1)), 1e-12)
    ma, mb = g(t1) / norm, g(template) / norm
    cov = g(t1 * template) / norm - ma * mb
    va = np.maximum(g(t1 * t1) / norm - ma**2, 0.0)
    vb = np.maximum(g(template * template) / norm - mb**2, 0.0)
    local = cov / np.sqrt(np.maximum(va * vb, 1e-12))
    return ncc, float(np.mean(local[region]))


def register_atlas(t1: Volume, lesion: np.ndarray | None = None,
                   settings: RegistrationSettings = RegistrationSettings(),
                   progress: bool | ProgressMeter = False) -> RegistrationResult:
    """Register the MNI152 atlas to ``t1`` and warp its tissue maps onto ``t1``'s grid.

    Args:
        t1: the patient's T1 (``Volume``; skull-stripped or not).
        lesion: boolean mask of core + edema on ``t1``'s grid, left out of the metrics (``None``: no lesion).
        settings: ``RegistrationSettings``.
        progress: a progress meter over the five stages (``True``, ``False`` or a ``bodil.progress`` meter).

    Returns:
        ``RegistrationResult`` (the maps as an ``Anatomy`` on ``t1``'s grid, the similarity figure).

    Raises:
        InputError: the T1 is not 3-D, not finite or constant, or the lesion mask has another shape.
    """
    check_image(t1.data, "T1")
    if lesion is not None and np.shape(lesion) != t1.shape:
        raise InputError(f"register_atlas: the lesion mask has shape {np.shape(lesion)} but the T1 {t1.shape}; "
                         f"put both on one grid.")
    s = settings
    started = time.perf_counter()
    meter = as_meter(progress)
    with meter.session("atlas registration", total=5) as bar:
        tpl_src, atlas = mni152_t1(2 if s.spacing_mm >= 2 else 1), mni152(s.atlas_resolution)
        brain_src = (atlas.wm + atlas.gm + atlas.csf).astype(float)
        static, s_aff, les, moving, m_aff, m_brain = _working(t1, lesion, tpl_src, atlas.affine, brain_src,
                                                               max(s.spacing_mm, s.affine_spacing_mm), s)
        head = max(1, round(s.head_margin_mm / max(s.spacing_mm, s.affine_spacing_mm)))
        affine_fit = _affine(static, s_aff, moving, m_aff, ~les, ndimage.binary_dilation(m_brain, iterations=head),
                             s, bar)
        if s.affine_spacing_mm > s.spacing_mm:
            static, s_aff, les, moving, m_aff, m_brain = _working(t1, lesion, tpl_src, atlas.affine, brain_src,
                                                                   s.spacing_mm, s)
        head = max(1, round(s.head_margin_mm / s.spacing_mm))
        affine_fit = _affine_map(affine_fit.affine, static, s_aff, moving, m_aff)
        aligned = affine_fit.transform(moving)
        aligned_brain = affine_fit.transform(m_brain.astype(float)) >= 0.5
        sigma = s.gain_sigma_mm / s.spacing_mm
        stripped = static * ndimage.binary_dilation(aligned_brain, iterations=head)
        filled = fill_lesion(stripped, aligned, les, aligned_brain, sigma) if les.any() else stripped
        mapping = _syn(filled, s_aff, moving, m_aff, affine_fit.affine, s)
        bar.step()

        def to_patient(img, img_affine):
            return mapping.transform(np.asarray(img, float), interpolation="linear",
                                     image_world2grid=np.linalg.inv(img_affine), out_shape=t1.shape,
                                     out_grid2world=t1.affine)

        wm, gm, brain = (np.clip(to_patient(a, atlas.affine), 0.0, 1.0) for a in (atlas.wm, atlas.gm, brain_src))
        csf = np.clip(brain - wm - gm, 0.0, 1.0)
        template = to_patient(tpl_src.data, tpl_src.affine)
        warped = mapping.transform(moving)
        region = (mapping.transform(m_brain.astype(float)) >= 0.5) & ~les
        ncc, local = similarity(static, warped, region, 5.0 / s.spacing_mm)
        ncc_aff, local_aff = similarity(static, aligned, region, 5.0 / s.spacing_mm)
        bar.step()
    sim = {"ncc": ncc, "ncc_affine": ncc_aff, "local_ncc": local, "local_ncc_affine": local_aff,
           "voxels": int(region.sum()), "spacing_mm": float(s.spacing_mm), "threshold": POOR_REGISTRATION_NCC}
    anatomy = Anatomy(wm=wm, gm=gm, csf=csf, affine=np.asarray(t1.affine, float))
    wall = time.perf_counter() - started
    log.info(f"atlas registration: NCC {ncc:.3f}, local {local:.3f} (affine only {ncc_aff:.3f}, {local_aff:.3f}), "
             f"{wall:.0f} s")
    return RegistrationResult(anatomy.validate(), template, np.asarray(affine_fit.affine), sim, wall)


__all__ = ["POOR_REGISTRATION_NCC", "RegistrationResult", "RegistrationSettings", "check_image", "fill_lesion",
           "isotropic_grid", "mni152_t1", "register_atlas", "resample", "similarity"]
