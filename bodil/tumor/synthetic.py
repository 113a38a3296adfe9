"""Synthetic glioma patients: a Fisher-Kolmogorov tumour grown in an anatomy, with its segmentation.

The ground truth is ``bodil.forward.solve_fk`` (Amoudruz et al. 2025, eq. 26-29, mm and days) started from GliODIL's
clipped Gaussian at ``origin`` and run for ``t_final`` days on a cubic box around the origin, then placed
into the full volume. The segmentation thresholds the final concentration ``u`` as imaging does (BraTS
2021 labels, only in tissue ``c_w + c_g >= 0.1``):

    u >= necrosis                -> 1 necrosis      (core)
    tau_core <= u < necrosis     -> 4 enhancing     (core)
    tau_edema <= u < tau_core    -> 2 edema
    otherwise                    -> 0

Defaults: ``Dw = 0.5 mm^2/day``, ``Dg = Dw / 10``, ``rho = 0.045 /day``, ``T = 100 days`` (``mu_D =
sqrt(Dw T) = 7.1 mm``, ``mu_rho = sqrt(rho T) = 2.1``), the default origin (-28, -20, 16) mm in the left
hemisphere's white matter of MNI152; thresholds: visible edema (FLAIR) 0.25, enhancing (T1c) 0.675,
necrosis 0.8. The tumour they grow is described in docs/tumor.md.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
from scipy import ndimage

from ..forward.fk import fk_initial_condition, solve_fk
from ..io import InputError, atomic_directory, save_nifti, write_json
from ..residuals.initial import SEED_CUTOFF, SEED_DT2, SEED_MASS
from ..stencil import TISSUE_THRESHOLD
from .anatomy import Anatomy, Crop

NECROSIS, EDEMA_LABEL, ENHANCING = 1, 2, 4
"""BraTS 2021 labels written by ``write_synthetic``."""


@dataclasses.dataclass(eq=False)
class SyntheticPatient:
    """A synthetic patient on the anatomy's grid.

    Attributes:
        anatomy: the tissue maps the tumour grew in.
        concentration: tumour cell density ``u`` at imaging time ``t_final``, in ``[0, 1]``.
        labels: BraTS 2021 segmentation (0, 1 necrosis, 2 edema, 4 enhancing), ``np.uint8``.
        truth: the parameters and derived facts (JSON-ready): ``dw``, ``dg``, ``rho``, ``t_final``,
            ``origin_world`` (mm), ``origin_voxel``, thresholds, volumes in cm^3, the box used.
    """

    anatomy: Anatomy
    concentration: np.ndarray
    labels: np.ndarray
    truth: dict


def _world_to_voxel(affine, points) -> np.ndarray:
    a = np.asarray(affine, float)
    return np.linalg.solve(a[:3, :3], np.asarray(points, float) - a[:3, 3])


def default_origin(anatomy: Anatomy) -> np.ndarray:
    """A point in white matter near the centre of the left hemisphere (world mm).

    Left is world ``x`` below the brain's centroid (NIfTI world coordinates are RAS+). The point is the
    centre of the voxel nearest to the white-matter-weighted centroid of the left hemisphere among the
    voxels whose 3x3x3 neighbourhood is at least 90% white matter (less if the anatomy has none).
    """
    a = np.asarray(anatomy.affine, float)
    brain = np.argwhere(anatomy.brain)
    if brain.size == 0:
        raise InputError("synthetic patient: the anatomy has no brain voxel (wm + gm + csf >= 0.5).")
    world = brain @ a[:3, :3].T + a[:3, 3]
    x_mid = world[:, 0].mean()
    wm = np.asarray(anatomy.wm, float)
    vox = np.argwhere(wm > 0)
    if vox.size == 0:
        raise InputError("synthetic patient: the anatomy has no white matter; give an origin explicitly.")
    vw = vox @ a[:3, :3].T + a[:3, 3]
    left = vw[:, 0] < x_mid
    if not left.any():
        left = np.ones(len(vox), bool)
    weight = wm[tuple(vox[left].T)]
    target = (vw[left] * weight[:, None]).sum(0) / weight.sum()
    smooth = ndimage.uniform_filter(wm, 3, mode="constant")
    for level in (0.9, 0.75, 0.5, 0.0):
        cand = np.argwhere(smooth > level) if level == 0.0 else np.argwhere(smooth >= level)
        if cand.size:
            break
    cw = cand @ a[:3, :3].T + a[:3, 3]
    side = cw[:, 0] < x_mid
    if side.any():
        cw = cw[side]
    return cw[np.argmin(np.linalg.norm(cw - target, axis=1))]


def _tumour_radius(dw: float, rho: float, t_final: float, mass: float, dt2: float, cutoff: float) -> float:
    """A generous radius (mm) of the region where ``u`` is not negligible: initial radius + Fisher front
    travel ``2 sqrt(Dw rho) T`` + one diffusion length ``sqrt(2 Dw T)`` + 4 mm (``synthetic_patient``
    enlarges the box if it is not enough)."""
    peak = mass / (4.0 * math.pi * dt2) ** 1.5
    r0 = math.sqrt(4.0 * dt2 * math.log(peak / cutoff)) if peak > cutoff else 0.0
    return r0 + 2.0 * math.sqrt(dw * rho) * t_final + math.sqrt(2.0 * dw * t_final) + 4.0


def _box_around(anatomy: Anatomy, voxel: np.ndarray, side_mm: float) -> Crop:
    """A cube of spacing ``min(anatomy.spacing)`` whose points fall on voxel centres along axes with that
    spacing (no interpolation for isotropic inputs)."""
    s = np.asarray(anatomy.spacing)
    h = float(s.min())
    n = max(8, int(math.ceil(side_mm / h)))
    step = h / s
    start = np.round(voxel) - (n // 2 + 0.5) * step
    return Crop(n=n, input_shape=anatomy.shape, input_affine=anatomy.affine, start=tuple(start), side_mm=n * h)


def synthetic_patient(anatomy: Anatomy, *, origin=None, dw: float = 0.5, dg: float | None = None,
                      rho: float = 0.045, t_final: float = 100.0, tau_edema: float = 0.25,
                      tau_core: float = 0.675, necrosis: float | None = 0.8, box_mm: float | None = None,
                      mass: float = SEED_MASS, dt2: float = SEED_DT2) -> SyntheticPatient:
    """Grow a Fisher-Kolmogorov tumour in ``anatomy`` and segment it (see the module docstring).

    Args:
        anatomy: tissue maps (for example ``mni152(2)``).
        origin: initial tumour centre ``x_0`` in world mm; default ``default_origin(anatomy)``.
        dw, dg: diffusivity in white / grey matter (mm^2/day); ``dg`` defaults to ``dw / 10``.
        rho: proliferation rate (1/day).
        t_final: time from the initial tumour to imaging (days).
        tau_edema, tau_core: visibility thresholds of edema and core (``0 < tau_edema < tau_core < 1``).
        necrosis: core voxels with ``u >= necrosis`` are labelled necrotic (1), the rest enhancing (4);
            ``None`` labels the whole core enhancing.
        box_mm: side of the cubic box the PDE is solved in; default from the tumour's expected radius,
            enlarged automatically until the concentration on the box faces is below 1e-3.
        mass, dt2: ``M`` and ``Dt^2`` (mm^2) of the initial condition (Amoudruz et al. 2025, eq. 28).

    Raises:
        InputError: origin outside the volume or not in tissue, an empty core or a tumour that reaches the
            border of the volume.
    """
    dg = dw / 10.0 if dg is None else dg
    for name, value in (("dw", dw), ("dg", dg), ("rho", rho), ("t_final", t_final)):
        if not (np.isfinite(value) and value >= 0):
            raise InputError(f"synthetic patient: {name} must be a non-negative number, got {value!r}.")
    if not 0 < tau_edema < tau_core < 1:
        raise InputError(f"synthetic patient: need 0 < tau_edema < tau_core < 1, got {tau_edema}, {tau_core}.")
    if necrosis is not None and not tau_core <= necrosis <= 1:
        raise InputError(f"synthetic patient: necrosis threshold must lie in [tau_core, 1], got {necrosis}.")
    a = np.asarray(anatomy.affine, float)
    origin_world = default_origin(anatomy) if origin is None else np.asarray(origin, float)
    if origin_world.shape != (3,) or not np.all(np.isfinite(origin_world)):
        raise InputError(f"synthetic patient: origin must be 3 world coordinates in mm, got {origin!r}.")
    origin_voxel = _world_to_voxel(a, origin_world)
    nearest = np.round(origin_voxel).astype(int)
    if np.any(nearest < 0) or np.any(nearest >= np.asarray(anatomy.shape)):
        raise InputError(f"synthetic patient: origin {origin_world.tolist()} mm is outside the volume (voxel "
                         f"{origin_voxel.round(2).tolist()}, shape {anatomy.shape}).")
    tissue = np.asarray(anatomy.tissue, float)
    if tissue[tuple(nearest)] < TISSUE_THRESHOLD:
        raise InputError(f"synthetic patient: origin {origin_world.tolist()} mm is not in brain tissue (wm + gm "
                         f"= {tissue[tuple(nearest)]:.3f} < {TISSUE_THRESHOLD}); choose a point in white or grey "
                         f"matter.")

    side = 2.0 * _tumour_radius(dw, rho, t_final, mass, dt2, SEED_CUTOFF) if box_mm is None else float(box_mm)
    for attempt in range(4):
        crop = _box_around(anatomy, origin_voxel, side)
        wm_box, gm_box = crop.to_box(anatomy.wm), crop.to_box(anatomy.gm)
        h = crop.spacing_mm
        u0 = np.asarray(fk_initial_condition(crop.shape, h, crop.world_to_box(origin_world), mass=mass, dt2=dt2))
        u0 = np.where(wm_box + gm_box >= TISSUE_THRESHOLD, u0, 0.0)
        u_box = np.asarray(solve_fk(u0, wm_box, gm_box, h, dw=dw, dg=dg, rho=rho, t_final=t_final,
                                    tissue_threshold=TISSUE_THRESHOLD)[-1], dtype=float)
        faces = max(np.abs(u_box[[0, -1]]).max(), np.abs(u_box[:, [0, -1]]).max(), np.abs(u_box[..., [0, -1]]).max())
        if faces < 1e-3:
            break
        side *= 1.5
    else:
        raise InputError(f"synthetic patient: the tumour still reaches the faces of a {side / 1.5:.0f} mm box "
                         f"(u = {faces:.2g}); lower dw, rho or t_final.")

    u = np.clip(crop.to_input(u_box, order=1), 0.0, 1.0)
    in_tissue = tissue >= TISSUE_THRESHOLD
    u = np.where(in_tissue, u, 0.0)
    labels = np.zeros(anatomy.shape, np.uint8)
    labels[(u >= tau_edema) & (u < tau_core)] = EDEMA_LABEL
    core = u >= tau_core
    labels[core] = ENHANCING
    if necrosis is not None:
        labels[u >= necrosis] = NECROSIS
    if not core.any():
        raise InputError(f"synthetic patient: the tumour has no core (max u = {u.max():.3f} < tau_core = "
                         f"{tau_core}); raise rho or t_final.")
    tumour = labels > 0
    if tumour[[0, -1]].any() or tumour[:, [0, -1]].any() or tumour[..., [0, -1]].any():
        raise InputError("synthetic patient: the tumour reaches the border of the volume; move the origin "
                         "inward or lower dw, rho or t_final.")
    voxel_cm3 = float(abs(np.linalg.det(a[:3, :3]))) / 1000.0
    truth = {
        "dw": float(dw), "dg": float(dg), "rho": float(rho), "t_final": float(t_final),
        "origin_world": origin_world.tolist(), "origin_voxel": origin_voxel.tolist(),
        "tau_edema": float(tau_edema), "tau_core": float(tau_core),
        "necrosis": None if necrosis is None else float(necrosis),
        "mass": float(mass), "dt2": float(dt2), "tissue_threshold": TISSUE_THRESHOLD,
        "mu_d_mm": math.sqrt(dw * t_final), "mu_rho": math.sqrt(rho * t_final),
        "core_cm3": float(core.sum()) * voxel_cm3,
        "edema_cm3": float((labels == EDEMA_LABEL).sum()) * voxel_cm3,
        "necrosis_cm3": float((labels == NECROSIS).sum()) * voxel_cm3,
        "labels": "brats2021",
        "box": {"n": crop.n, "side_mm": crop.side_mm, "start_voxel": list(crop.start)},
    }
    return SyntheticPatient(anatomy=anatomy, concentration=u, labels=labels, truth=truth)


def write_synthetic(patient: SyntheticPatient, out_dir, *, overwrite: bool = False) -> dict:
    """Write a synthetic patient atomically into ``out_dir``.

    Files: ``seg.nii.gz`` (BraTS 2021 labels), ``concentration.nii.gz`` (ground truth ``u``), ``wm.nii.gz``,
    ``gm.nii.gz``, ``csf.nii.gz`` and ``truth.json``. Returns ``{name: path}`` of the final files.

    Raises:
        InputError: ``out_dir`` exists and is not empty (and not ``overwrite``).
    """
    a = patient.anatomy.affine
    files = {"seg": "seg.nii.gz", "concentration": "concentration.nii.gz", "wm": "wm.nii.gz",
             "gm": "gm.nii.gz", "csf": "csf.nii.gz", "truth": "truth.json"}
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        save_nifti(os.path.join(tmp, files["seg"]), patient.labels, a, dtype=np.uint8)
        save_nifti(os.path.join(tmp, files["concentration"]), patient.concentration, a)
        for name in ("wm", "gm", "csf"):
            save_nifti(os.path.join(tmp, files[name]), getattr(patient.anatomy, name), a)
        write_json(os.path.join(tmp, files["truth"]), patient.truth)
    out = os.path.abspath(os.fspath(out_dir))
    return {name: os.path.join(out, f) for name, f in files.items()}
