"""Test patients in their own space: the MNI152 T1 and its tissue maps warped by a known transform.

A patient voxel at world point ``x`` (mm) shows the atlas at

    p(x) = M [x - m(x) + d(x); 1]

where ``m`` is the mass effect of a lesion centred at ``c`` (radial, ``m(x) = s(r) (x - c) / r`` with
``r = |x - c|``, ``s(r) = mass_mm * r / R`` inside the lesion radius ``R`` and ``mass_mm * exp(-(r - R) / 15 mm)``
outside: tissue pushed away from the lesion), ``d`` a random smooth displacement (Gaussian values on a
lattice of ``warp_scale_mm``, cubic-spline interpolated, scaled to a maximum of ``warp_mm``) and ``M`` a random
affine (rotation up to ``rotation_deg`` about each axis, per-axis scale ``1 +- scale``, shift up to ``shift_mm``)
that maps the patient frame (centred on the grid) onto the atlas. The T1 is the template at ``p(x)`` times a
bias field ``exp(bias * b(x))`` (``b`` smooth, in ``[-1, 1]``), with the lesion's intensity altered (necrosis
dark, enhancing rim and edema hypointense, as in a non-contrast T1) and Rician-like noise
``|T1 + noise * N(0, 1)|``. The true tissue maps are the atlas maps at ``p(x)`` (healthy tissue displaced; the
lesion itself is excluded when registrations are scored). The segmentation uses the BraTS 2021 labels
(1 necrosis, 2 edema, 4 enhancing). Everything is drawn from ``numpy.random.default_rng(seed)``.

``head=True`` gives the T1 a head instead of the skull-stripped template: at a point whose atlas image lies
``t`` mm outside the atlas's brain mask (``t`` the Euclidean distance on the atlas grid, sampled at ``p(x)``)
the T1 shows ``HEAD_LAYERS`` (outer CSF, dark skull, bright scalp fat; each thickness times
``1 + 0.3 v(x)``, ``v`` the first displacement component scaled to ``[-1, 1]``, so the skull is uneven) with
weight ``1 - brain fraction``, and 0 (background, then the Rician noise) beyond. The tissue maps and the other
draws are those of ``head=False``.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
from scipy import ndimage

from ..io import Volume, atomic_directory, save_nifti, write_json
from .anatomy import Anatomy, mni152
from .registration import mni152_t1

NECROSIS, EDEMA_LABEL, ENHANCING = 1, 2, 4
MASS_DECAY_MM = 15.0
HEAD_LAYERS = (("csf", 2.0, 0.25), ("skull", 6.0, 0.04), ("scalp", 5.0, 1.0))
"""Layers outside the brain with ``head=True``, inside out: (name, thickness mm, T1 intensity; WM is about 0.86)."""


@dataclasses.dataclass(frozen=True, eq=False)
class WarpedPatient:
    """A test patient: ``t1`` (``Volume``), the true ``anatomy`` on its grid, BraTS 2021 ``labels`` (uint8)
    and ``truth`` (the transform's parameters and the lesion, JSON-ready)."""

    t1: Volume
    anatomy: Anatomy
    labels: np.ndarray
    truth: dict

    @property
    def lesion(self) -> np.ndarray:
        """Core or edema (label > 0)."""
        return self.labels > 0


def _rotation(angles_rad) -> np.ndarray:
    out = np.eye(3)
    for axis, a in enumerate(angles_rad):
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = np.cos(a)
        r[i, j], r[j, i] = -np.sin(a), np.sin(a)
        out = r @ out
    return out


def _smooth_field(rng, lattice_shape, points_lattice, n: int) -> np.ndarray:
    """``n`` smooth random scalar fields at ``points_lattice`` (lattice index coordinates, shape (3, ...)):
    standard normal lattice values, cubic B-spline interpolated."""
    out = []
    for _ in range(n):
        coarse = rng.standard_normal(lattice_shape)
        out.append(ndimage.map_coordinates(ndimage.spline_filter(coarse, order=3), points_lattice, order=3,
                                           mode="nearest", prefilter=False))
    return np.stack(out)


def warped_patient(seed: int = 0, *, shape=(240, 240, 155), spacing_mm: float = 1.0, resolution: int = 1,
                   warp_mm: float = 4.0, warp_scale_mm: float = 40.0, rotation_deg: float = 8.0,
                   scale: float = 0.08, shift_mm: float = 8.0, bias: float = 0.2, noise: float = 0.02,
                   lesion_radius_mm: float = 12.0, edema_mm: float = 8.0, mass_mm: float = 4.0,
                   lesion: bool = True, head: bool = False) -> WarpedPatient:
    """A patient made by warping the MNI152 atlas (``resolution`` 1 or 2 mm) with a known random transform.

    Args:
        seed: integer seed of ``numpy.random.default_rng``; the same seed gives the same patient.
        shape, spacing_mm: the patient grid (default 240 x 240 x 155 at 1 mm, the BraTS grid), centred on
            world point 0.
        warp_mm, warp_scale_mm: maximum and lattice spacing of the smooth random displacement ``d``.
        rotation_deg, scale, shift_mm: bounds of the random affine ``M``.
        bias: amplitude of the log bias field; noise: noise standard deviation relative to the template's
            maximum (1).
        lesion_radius_mm, edema_mm, mass_mm: core radius ``R``, edema thickness around it, mass-effect
            displacement at the core's boundary; ``lesion=False`` gives a healthy patient (no labels, no mass
            effect).
        head: give the T1 scalp, skull and CSF layers outside the brain (``HEAD_LAYERS``) instead of a
            skull-stripped brain.

    Returns:
        ``WarpedPatient``; ``truth`` holds ``seed``, ``affine_patient_to_atlas`` (4x4 ``M``), ``lesion_centre_world``
        and the arguments.
    """
    rng = np.random.default_rng(seed)
    atlas, template = mni152(resolution), mni152_t1(resolution)
    shape = tuple(int(s) for s in shape)
    grid_affine = np.diag([spacing_mm] * 3 + [1.0])
    grid_affine[:3, 3] = -0.5 * spacing_mm * (np.asarray(shape) - 1)
    x = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    x = (x.reshape(3, -1).T * spacing_mm + grid_affine[:3, 3]).T.astype(np.float32)  # world, (3, N)

    brain_centre = _atlas_brain_centre(atlas)
    lin = _rotation(np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, 3))) @ np.diag(
        1.0 + rng.uniform(-scale, scale, 3))
    m = np.eye(4)
    m[:3, :3] = lin
    m[:3, 3] = brain_centre + rng.uniform(-shift_mm, shift_mm, 3)

    lattice = np.ceil(np.asarray(shape) * spacing_mm / warp_scale_mm).astype(int) + 4
    to_lattice = (x - grid_affine[:3, 3][:, None]) / warp_scale_mm + 1.5
    fields = _smooth_field(rng, lattice, to_lattice, 4)
    d = fields[:3]
    d *= warp_mm / max(float(np.abs(d).max()), 1e-12)
    b = fields[3] / max(float(np.abs(fields[3]).max()), 1e-12)

    centre = None
    src = x + d
    if lesion:
        centre = _lesion_centre(rng, atlas, m, lesion_radius_mm + edema_mm)
        rel = x - centre[:, None]
        r = np.maximum(np.linalg.norm(rel, axis=0), 1e-6)
        s = np.where(r < lesion_radius_mm, mass_mm * r / lesion_radius_mm,
                     mass_mm * np.exp(-(r - lesion_radius_mm) / MASS_DECAY_MM))
        src = src - s * rel / r
    p = m[:3, :3] @ src + m[:3, 3][:, None]

    def sample(vol_data, vol_affine):
        idx = np.linalg.solve(vol_affine[:3, :3], p - vol_affine[:3, 3][:, None])
        return ndimage.map_coordinates(vol_data, idx, order=1, mode="constant", cval=0.0).reshape(shape)

    wm, gm, csf = (np.clip(sample(np.asarray(a), atlas.affine), 0.0, 1.0) for a in (atlas.wm, atlas.gm, atlas.csf))
    t1 = sample(np.asarray(template.data), template.affine)
    if head:
        outside, outside_affine = _outside_distance(resolution)
        vary = d[0] / max(float(np.abs(d[0]).max()), 1e-12)
        t1 = t1 + (1.0 - np.clip(wm + gm + csf, 0.0, 1.0)) * head_intensity(
            sample(outside, outside_affine), (1.0 + 0.3 * vary).reshape(shape))
    labels = np.zeros(shape, np.uint8)
    if lesion:
        r = r.reshape(shape)
        wobble = b.reshape(shape) * 0.15 * lesion_radius_mm  # an irregular boundary
        labels[r < lesion_radius_mm + edema_mm + wobble] = EDEMA_LABEL
        labels[r < lesion_radius_mm + wobble] = ENHANCING
        labels[r < 0.6 * lesion_radius_mm + wobble] = NECROSIS
        t1[labels == EDEMA_LABEL] *= 0.8
        t1[labels == ENHANCING] = 0.45
        t1[labels == NECROSIS] = 0.15
    t1 = t1 * np.exp(bias * b.reshape(shape))
    t1 = np.abs(t1 + noise * rng.standard_normal(shape))
    truth = {"seed": int(seed), "affine_patient_to_atlas": m.tolist(), "warp_mm": warp_mm,
             "warp_scale_mm": warp_scale_mm, "bias": bias, "noise": noise, "resolution_mm": resolution,
             "lesion_centre_world": None if centre is None else [float(v) for v in centre],
             "lesion_radius_mm": lesion_radius_mm, "edema_mm": edema_mm, "mass_mm": mass_mm, "head": bool(head)}
    anatomy = Anatomy(wm=wm, gm=gm, csf=np.minimum(csf, np.clip(1.0 - wm - gm, 0.0, 1.0)), affine=grid_affine)
    return WarpedPatient(Volume(t1, grid_affine), anatomy.validate(), labels, truth)


def head_intensity(distance_mm: np.ndarray, thickness_factor: np.ndarray | float = 1.0) -> np.ndarray:
    """T1 intensity of the ``HEAD_LAYERS`` at ``distance_mm`` outside the brain (0 inside and beyond the last
    layer), each layer ``thickness_factor`` times its nominal thickness."""
    out = np.zeros(np.shape(distance_mm))
    inner = np.zeros(np.shape(distance_mm))
    for _, thickness, value in HEAD_LAYERS:
        outer = inner + thickness * np.asarray(thickness_factor)
        out = np.where((distance_mm > inner) & (distance_mm <= outer), value, out)
        inner = outer
    return out


@functools.lru_cache(maxsize=2)
def _outside_distance(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) outside the atlas's brain mask on its grid padded by 40 mm, and that grid's affine."""
    atlas = mni152(resolution)
    pad = int(np.ceil(40.0 / resolution))
    brain = np.pad(atlas.brain, pad)
    affine = np.array(atlas.affine, float)
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, pad)
    return ndimage.distance_transform_edt(~brain, sampling=atlas.spacing).astype(np.float32), affine


def _atlas_brain_centre(atlas: Anatomy) -> np.ndarray:
    idx = np.array(ndimage.center_of_mass(atlas.brain))
    return atlas.affine[:3, :3] @ idx + atlas.affine[:3, 3]


def _lesion_centre(rng, atlas: Anatomy, m: np.ndarray, depth_mm: float) -> np.ndarray:
    """A patient-world point whose atlas image lies in white matter at least ``depth_mm`` inside the brain."""
    inside = ndimage.distance_transform_edt(atlas.brain, sampling=atlas.spacing) > depth_mm
    candidates = np.argwhere(inside & (atlas.wm > 0.8))
    pick = candidates[rng.integers(len(candidates))]
    world_atlas = atlas.affine[:3, :3] @ pick + atlas.affine[:3, 3]
    return np.linalg.solve(m[:3, :3], world_atlas - m[:3, 3])


def write_warped_patient(patient: WarpedPatient, out_dir, *, overwrite: bool = False) -> dict:
    """Write ``t1.nii.gz``, ``seg.nii.gz`` (BraTS 2021), the true ``wm``/``gm``/``csf`` maps and ``truth.json``
    atomically into ``out_dir``; returns ``{name: path}``."""
    a = patient.t1.affine
    files = {"t1": "t1.nii.gz", "seg": "seg.nii.gz", "wm": "wm.nii.gz", "gm": "gm.nii.gz", "csf": "csf.nii.gz",
             "truth": "truth.json"}
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        save_nifti(os.path.join(tmp, files["t1"]), patient.t1.data, a)
        save_nifti(os.path.join(tmp, files["seg"]), patient.labels, a, dtype=np.uint8)
        for name in ("wm", "gm", "csf"):
            save_nifti(os.path.join(tmp, files[name]), getattr(patient.anatomy, name), a)
        write_json(os.path.join(tmp, files["truth"]), patient.truth)
    out = os.path.abspath(os.fspath(out_dir))
    return {name: os.path.join(out, f) for name, f in files.items()}


def hard_labels(anatomy: Anatomy) -> np.ndarray:
    """0 background, 1 CSF, 2 GM, 3 WM: the largest of ``1 - wm - gm - csf``, ``csf``, ``gm``, ``wm``."""
    return np.stack([1 - anatomy.wm - anatomy.gm - anatomy.csf, anatomy.csf, anatomy.gm, anatomy.wm]).argmax(0)


def tissue_dice(truth: Anatomy, found: Anatomy, region: np.ndarray) -> dict:
    """Dice ``2 |A & B| / (|A| + |B|)`` of the WM and of the GM hard labels (``hard_labels``) within ``region``."""
    lt, lf = hard_labels(truth), hard_labels(found)
    out = {}
    for name, k in (("wm", 3), ("gm", 2)):
        a, b = (lt == k) & region, (lf == k) & region
        out[name] = float(2 * np.sum(a & b) / max(int(np.sum(a) + np.sum(b)), 1))
    return out
