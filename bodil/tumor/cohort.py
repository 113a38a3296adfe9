"""A validation cohort of synthetic glioma patients that is not an inverse crime for bodil's tumour model.

The tumour model (``bodil.tumor.model``) assumes GliODIL's Gaussian seed, ``bodil.forward.fk``'s discretisation,
fixed visibility thresholds and ``Dw / Dg = 10``, and a clean segmentation. A posterior calibrated on patients
made that way cannot see errors in any of those choices. ``cohort_patient`` grows and segments a patient
differently in every way the model does not control:

* **solver**: ``bodil.forward.fk_split`` (Strang splitting with the exact logistic flow and Heun diffusion,
  harmonic-mean face diffusivities, its own tissue cut), on the anatomy's own 1 mm grid;
* **initial condition**: a smooth-edged ellipsoid of random semi-axes, orientation and height instead of the
  clipped Gaussian;
* **parameters** from broad priors (``CohortPriors``): ``T``, ``mu_D = sqrt(Dw T)``, ``mu_rho = sqrt(rho T)``,
  ``Dw / Dg`` in [5, 100], both visibility thresholds and the necrosis threshold;
* **imaging**: optionally anisotropic voxels (thick slices average the concentration over the slice), a
  correlated random perturbation of the visibility thresholds (boundary jitter), random label flips at class
  borders, and either BraTS label convention;
* **size**: patients whose visible tumour (core and edema) is outside ``volume_ml`` are redrawn.

Each patient comes with its truth (every drawn number, the concentration on the patient's grid, the volumes).
Patient ``i`` of a cohort is drawn from ``numpy.random.default_rng([seed, i])``, so a cohort can be made in
pieces and resumed.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage, special
from scipy.spatial.transform import Rotation

from ..forward.fk_split import solve_fk_split
from ..io import InputError
from .anatomy import Anatomy

LABELS = {"brats2021": {"necrosis": 1, "edema": 2, "enhancing": 4},
          "brats2023": {"necrosis": 1, "edema": 2, "enhancing": 3}}
"""Labels written per convention (BraTS 2023 calls label 1 the non-enhancing tumour core)."""


@dataclasses.dataclass(frozen=True)
class CohortPriors:
    """Ranges the cohort's patients are drawn from (``(low, high)``; "log" ranges are log-uniform).

    Attributes:
        t_final: days from onset to imaging (uniform).
        mu_d_mm: ``sqrt(Dw T)`` in mm (log); ``Dw = mu_d^2 / T``.
        mu_rho: ``sqrt(rho T)`` (log); ``rho = mu_rho^2 / T``.
        ratio: ``Dw / Dg`` (log).
        tau_edema, tau_core: visibility thresholds of edema (FLAIR) and core (T1c) (uniform).
        necrosis_probability: chance that the core has a necrotic label; its threshold is uniform in
            ``necrosis`` (and above ``tau_core``).
        seed_radius_mm: mean semi-axis of the initial ellipsoid (uniform); the semi-axes differ from it by
            factors ``exp(U(-0.35, 0.35))``.
        seed_height: concentration inside the initial ellipsoid (uniform).
        jitter: standard deviation of the log-threshold perturbation (uniform); correlated over
            ``jitter_mm`` (uniform, Gaussian kernel width in mm).
        flip_probability: chance that a voxel on a class border takes a neighbour's label (uniform).
        volume_ml: accepted range of the visible tumour (core + edema) in ml.
        anisotropic_probability: chance that the patient's image has thick slices, one of ``slice_spacings``
            (mm per axis, the last axis thick).
        brats2023_probability: chance of the BraTS 2023 label convention (else BraTS 2021).
        origin_margin_mm: the initial centre lies in tissue (``c_w + c_g >= 0.9``) at least this far inside
            the brain's bounding box.
    """

    t_final: tuple = (60.0, 400.0)
    mu_d_mm: tuple = (3.0, 18.0)
    mu_rho: tuple = (1.5, 7.0)
    ratio: tuple = (5.0, 100.0)
    tau_edema: tuple = (0.12, 0.40)
    tau_core: tuple = (0.50, 0.85)
    necrosis_probability: float = 0.6
    necrosis: tuple = (0.85, 0.97)
    seed_radius_mm: tuple = (1.5, 5.0)
    seed_height: tuple = (0.3, 1.0)
    jitter: tuple = (0.0, 0.25)
    jitter_mm: tuple = (1.5, 4.0)
    flip_probability: tuple = (0.0, 0.15)
    volume_ml: tuple = (5.0, 250.0)
    anisotropic_probability: float = 0.3
    slice_spacings: tuple = ((1.0, 1.0, 3.0), (0.9, 0.9, 2.0), (1.2, 1.2, 1.5))
    brats2023_probability: float = 0.5
    origin_margin_mm: float = 20.0

    def draw(self, rng: np.random.Generator, anatomy: Anatomy, candidates: np.ndarray | None = None) -> dict:
        """One draw of every number of a patient (JSON-ready); the origin in world mm, at one of the voxels
        ``candidates`` (default ``origin_candidates(anatomy, self.origin_margin_mm)``)."""
        def uni(r):
            return float(rng.uniform(*r))

        def log(r):
            return float(np.exp(rng.uniform(np.log(r[0]), np.log(r[1]))))

        t = uni(self.t_final)
        mu_d, mu_rho, ratio = log(self.mu_d_mm), log(self.mu_rho), log(self.ratio)
        tau_edema, tau_core = uni(self.tau_edema), uni(self.tau_core)
        necrosis = None
        if rng.uniform() < self.necrosis_probability:
            necrosis = float(rng.uniform(max(self.necrosis[0], tau_core + 0.05), max(self.necrosis[1], tau_core + 0.06)))
        radius = uni(self.seed_radius_mm)
        thick = rng.uniform() < self.anisotropic_probability
        spacing = self.slice_spacings[rng.integers(len(self.slice_spacings))] if thick else None
        return {
            "t_final": t, "mu_d_mm": mu_d, "mu_rho": mu_rho, "dw": mu_d**2 / t, "dg": mu_d**2 / t / ratio,
            "ratio": ratio, "rho": mu_rho**2 / t, "tau_edema": tau_edema, "tau_core": tau_core,
            "necrosis": necrosis, "origin_world": _draw_origin(rng, anatomy, origin_candidates(anatomy, self.origin_margin_mm)
                                         if candidates is None else candidates).tolist(),
            "seed_semi_axes_mm": (radius * np.exp(rng.uniform(-0.35, 0.35, 3))).tolist(),
            "seed_rotation": Rotation.random(random_state=rng).as_quat().tolist(),
            "seed_height": uni(self.seed_height), "jitter": uni(self.jitter), "jitter_mm": uni(self.jitter_mm),
            "flip_probability": uni(self.flip_probability),
            "labels": "brats2023" if rng.uniform() < self.brats2023_probability else "brats2021",
            "spacing_mm": None if spacing is None else [float(s) for s in spacing],
            "noise_seed": int(rng.integers(2**31)),
        }


@dataclasses.dataclass(eq=False)
class CohortPatient:
    """A cohort patient on its own image grid.

    Attributes:
        anatomy: tissue maps on the patient's grid (what the model is given).
        labels: segmentation (``np.uint8``, the convention in ``truth["labels"]``).
        concentration: true concentration at imaging on the patient's grid (slice-averaged when thick).
        truth: the drawn numbers (``CohortPriors.draw``) and facts: volumes in ml, attempts, the growth box.
    """

    anatomy: Anatomy
    labels: np.ndarray
    concentration: np.ndarray
    truth: dict


def origin_candidates(anatomy: Anatomy, margin_mm: float) -> np.ndarray:
    """Voxel indices where a tumour may start: tissue ``c_w + c_g >= 0.9`` at least ``margin_mm`` inside the
    brain's bounding box."""
    brain = np.argwhere(anatomy.brain)
    if brain.size == 0:
        raise InputError("cohort: the anatomy has no brain voxel.")
    margin = np.ceil(margin_mm / np.asarray(anatomy.spacing)).astype(int)
    lo, hi = brain.min(axis=0) + margin, brain.max(axis=0) - margin
    cand = np.argwhere(np.asarray(anatomy.tissue) >= 0.9)
    cand = cand[np.all((cand >= lo) & (cand <= hi), axis=1)]
    if cand.size == 0:
        raise InputError(f"cohort: no tissue voxel lies {margin_mm} mm inside the brain; lower origin_margin_mm.")
    return cand


def _draw_origin(rng, anatomy: Anatomy, cand: np.ndarray) -> np.ndarray:
    voxel = cand[rng.integers(len(cand))] + rng.uniform(-0.5, 0.5, 3)
    return (np.asarray(anatomy.affine, float) @ np.r_[voxel, 1.0])[:3]


def initial_ellipsoid(shape, affine, start, truth: dict) -> np.ndarray:
    """The initial tumour on a box of ``shape`` whose voxel ``0`` is the anatomy's voxel ``start``:
    ``h sigmoid((1 - q) / 0.15)`` with ``q`` the ellipsoidal radius (``q = 1`` on the ellipsoid of the drawn
    semi-axes and rotation around the origin), ``h`` the seed height; values below 1e-3 are set to 0."""
    a = np.asarray(affine, float)
    idx = np.stack(np.meshgrid(*[np.arange(n) + s for n, s in zip(shape, start)], indexing="ij"), -1)
    world = idx @ a[:3, :3].T + a[:3, 3] - np.asarray(truth["origin_world"])
    local = Rotation.from_quat(truth["seed_rotation"]).inv().apply(world.reshape(-1, 3)).reshape(world.shape)
    q = np.sqrt(np.sum((local / np.asarray(truth["seed_semi_axes_mm"])) ** 2, axis=-1))
    u0 = truth["seed_height"] * special.expit((1.0 - q) / 0.15)
    return np.where(u0 >= 1e-3, u0, 0.0)


def grow(anatomy: Anatomy, truth: dict, *, box: tuple | None = None, dtype=np.float32) -> tuple[np.ndarray, dict]:
    """The concentration at ``t_final`` on the anatomy's grid, grown by ``solve_fk_split`` on the voxel box
    ``box = (lo, hi)`` (default: a cube of radius ``_reach_mm`` around the origin), enlarged by a fifth of its size on each side
    until the concentration on its faces inside the volume is below 1e-4.

    Returns ``(u, info)`` with the growth box's voxel start, shape and largest face value."""
    a = np.asarray(anatomy.affine, float)
    spacing = np.asarray(anatomy.spacing)
    full = np.asarray(anatomy.shape)
    if box is None:
        centre = np.linalg.solve(a[:3, :3], np.asarray(truth["origin_world"]) - a[:3, 3])
        half = np.ceil(_reach_mm(truth) / spacing)
        box = (centre - half, centre + half + 1)
    lo, hi = (np.asarray(b, float) for b in box)
    for _ in range(5):
        lo, hi = np.maximum(np.floor(lo).astype(int), 0), np.minimum(np.ceil(hi).astype(int), full)
        sl = tuple(slice(int(a_), int(b_)) for a_, b_ in zip(lo, hi))
        wm, gm = np.asarray(anatomy.wm[sl], float), np.asarray(anatomy.gm[sl], float)
        u0 = initial_ellipsoid(wm.shape, a, lo, truth) * (wm + gm >= 0.05)
        # zero padding (no tissue: no flux) to a multiple of 16 points per axis: few compiled shapes
        pad = [(0, -n % 16) for n in wm.shape]
        u = np.asarray(solve_fk_split(*(np.pad(f, pad).astype(dtype) for f in (u0, wm, gm)), spacing,
                                      dw=truth["dw"], dg=truth["dg"], rho=truth["rho"], t_final=truth["t_final"],
                                      tissue_threshold=0.05)[-1], float)[tuple(slice(0, n) for n in wm.shape)]
        # the largest concentration on the box faces that are not the volume's own border
        faces = max([float(np.abs(np.take(u, 0, axis=k)).max()) for k in range(3) if lo[k] > 0]
                    + [float(np.abs(np.take(u, -1, axis=k)).max()) for k in range(3) if hi[k] < full[k]] + [0.0])
        if faces < 1e-4:
            break
        grow_by = 0.2 * (hi - lo)
        lo, hi = lo - grow_by, hi + grow_by
    out = np.zeros(anatomy.shape)
    out[sl] = np.clip(u, 0.0, 1.0)
    return out, {"start_voxel": lo.tolist(), "shape": list(u.shape), "face_max": faces}


def _support_box(u: np.ndarray, coarse: Anatomy, fine: Anatomy, margin_mm: float = 6.0) -> tuple:
    """The fine grid's voxel box ``(lo, hi)`` covering the coarse solution's support ``u >= 1e-5`` plus
    ``margin_mm``."""
    idx = np.argwhere(u >= 1e-5)
    corners = np.array([idx.min(axis=0) - 0.5, idx.max(axis=0) + 0.5])
    ca, fa = np.asarray(coarse.affine, float), np.asarray(fine.affine, float)
    world = corners @ ca[:3, :3].T + ca[:3, 3]
    vox = np.linalg.solve(fa[:3, :3], (world - fa[:3, 3]).T).T
    pad = margin_mm / np.asarray(fine.spacing)
    return vox.min(axis=0) - pad, vox.max(axis=0) + pad + 1


def _thick_grid(anatomy: Anatomy, spacing) -> tuple[tuple, np.ndarray]:
    step = np.asarray(spacing, float) / np.asarray(anatomy.spacing)
    shape = tuple(int(n) for n in np.floor(np.asarray(anatomy.shape) / step))
    affine = np.asarray(anatomy.affine, float).copy()
    corner = (step - 1.0) / 2.0  # input voxel coordinates of output voxel 0's centre
    affine[:3, 3] = affine[:3, :3] @ corner + affine[:3, 3]
    affine[:3, :3] = affine[:3, :3] * step
    return shape, affine


def to_thick_slices(volume: np.ndarray, anatomy: Anatomy, spacing) -> tuple[np.ndarray, np.ndarray]:
    """``volume`` averaged over the voxels of a coarser grid of ``spacing`` mm (box filter of the voxel's
    extent, then linear sampling at its centre) and that grid's affine."""
    shape, affine = _thick_grid(anatomy, spacing)
    step = np.asarray(spacing, float) / np.asarray(anatomy.spacing)
    smooth = ndimage.uniform_filter(np.asarray(volume, float), size=np.maximum(np.round(step), 1).astype(int),
                                    mode="nearest")
    coords = [(np.arange(n) * s + (s - 1.0) / 2.0) for n, s in zip(shape, step)]
    grid = np.meshgrid(*coords, indexing="ij")
    return ndimage.map_coordinates(smooth, grid, order=1, mode="nearest"), affine


def segment(u: np.ndarray, brain: np.ndarray, spacing, truth: dict) -> np.ndarray:
    """Labels from the concentration as imaging and a rater make them (module docstring): thresholds
    perturbed by ``exp(jitter g)`` with ``g`` a unit Gaussian field correlated over ``jitter_mm``, then each
    voxel on a class border takes a random neighbour's label with probability ``flip_probability``."""
    rng = np.random.default_rng(truth["noise_seed"])
    g = ndimage.gaussian_filter(rng.standard_normal(u.shape), truth["jitter_mm"] / np.asarray(spacing))
    g /= max(float(g.std()), 1e-12)
    scale = np.exp(truth["jitter"] * g)
    names = LABELS[truth["labels"]]
    labels = np.zeros(u.shape, np.uint8)
    labels[u >= truth["tau_edema"] * scale] = names["edema"]
    labels[u >= truth["tau_core"] * scale] = names["enhancing"]
    if truth["necrosis"] is not None:
        labels[u >= truth["necrosis"] * scale] = names["necrosis"]
    labels[~brain] = 0
    shifts = [(k, s) for k in range(3) for s in (-1, 1)]
    pick = rng.integers(len(shifts), size=u.shape)
    neighbour = np.zeros_like(labels)
    for i, (k, s) in enumerate(shifts):
        rolled = np.roll(labels, s, axis=k)
        neighbour = np.where(pick == i, rolled, neighbour)
    flip = (neighbour != labels) & (rng.uniform(size=u.shape) < truth["flip_probability"]) & brain
    return np.where(flip, neighbour, labels).astype(np.uint8)


def cohort_patient(anatomy: Anatomy, seed: int, index: int, priors: CohortPriors = CohortPriors(), *,
                   max_attempts: int = 50, dtype=np.float32) -> CohortPatient:
    """Patient ``index`` of the cohort ``seed`` (module docstring), grown on ``anatomy``'s grid.

    Draws are rejected and redrawn (at most ``max_attempts``) when the visible tumour is outside
    ``priors.volume_ml``, has no core, or reaches the border of the brain's bounding box; a quick screen at
    twice the voxel size rejects most of them before the full-resolution growth.

    Raises:
        InputError: no acceptable draw within ``max_attempts``.
    """
    rng = np.random.default_rng([int(seed), int(index)])
    candidates = origin_candidates(anatomy, priors.origin_margin_mm)
    tissue = np.asarray(anatomy.tissue)
    coarse = _coarsen(anatomy)
    voxel_ml = float(abs(np.linalg.det(np.asarray(anatomy.affine)[:3, :3]))) / 1000.0
    lo_ml, hi_ml = priors.volume_ml
    for attempt in range(1, max_attempts + 1):
        truth = priors.draw(rng, anatomy, candidates)
        u_c, _ = grow(coarse, truth, dtype=dtype)
        visible_c = float((u_c >= truth["tau_edema"]).sum()) * voxel_ml * 8
        if not 0.6 * lo_ml <= visible_c <= 1.4 * hi_ml or not (u_c >= truth["tau_core"]).any():
            continue
        u, box = grow(anatomy, truth, box=_support_box(u_c, coarse, anatomy), dtype=dtype)
        u = np.where(tissue >= 0.05, u, 0.0)
        patient = _image(anatomy, u, truth)
        labels = patient.labels
        names = LABELS[truth["labels"]]
        pvox = float(abs(np.linalg.det(np.asarray(patient.anatomy.affine)[:3, :3]))) / 1000.0
        core = np.isin(labels, [names["enhancing"], names["necrosis"]])
        visible = float((labels > 0).sum()) * pvox
        if not lo_ml <= visible <= hi_ml or not core.any() or _touches_border(labels > 0, patient.anatomy.brain):
            continue
        truth.update(attempts=attempt, growth_box=box, visible_ml=visible, core_ml=float(core.sum()) * pvox,
                     edema_ml=float((labels == names["edema"]).sum()) * pvox, solver="bodil.forward.fk_split",
                     growth_spacing_mm=[float(s) for s in anatomy.spacing], seed=int(seed), index=int(index))
        return CohortPatient(patient.anatomy, labels, patient.concentration, truth)
    raise InputError(f"cohort: no acceptable patient in {max_attempts} draws (seed {seed}, index {index}); widen "
                     f"CohortPriors.volume_ml or narrow the growth priors.")


def _reach_mm(truth: dict) -> float:
    """A generous radius of non-negligible concentration: seed + Fisher front ``2 sqrt(Dw rho) T`` + three
    diffusion lengths + 6 mm (``grow`` enlarges the box when it is not enough)."""
    return (max(truth["seed_semi_axes_mm"]) + 2 * math.sqrt(truth["dw"] * truth["rho"]) * truth["t_final"]
            + 3 * truth["mu_d_mm"] + 6.0)


def _coarsen(anatomy: Anatomy) -> Anatomy:
    sl = (slice(None, None, 2),) * 3
    affine = np.asarray(anatomy.affine, float).copy()
    affine[:3, :3] *= 2
    return Anatomy(wm=np.asarray(anatomy.wm)[sl], gm=np.asarray(anatomy.gm)[sl], csf=np.asarray(anatomy.csf)[sl],
                   affine=affine)


def _touches_border(tumour: np.ndarray, brain: np.ndarray) -> bool:
    idx = np.argwhere(brain)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    t = np.argwhere(tumour)
    return bool(np.any(t.min(axis=0) <= lo) or np.any(t.max(axis=0) >= hi))


def _image(anatomy: Anatomy, u: np.ndarray, truth: dict) -> CohortPatient:
    """The patient's image grid (the anatomy's own, or thick slices), its tissue maps, true concentration and
    segmentation."""
    if truth["spacing_mm"] is None:
        grid_anatomy, conc = anatomy, u
    else:
        maps = {n: to_thick_slices(getattr(anatomy, n), anatomy, truth["spacing_mm"]) for n in ("wm", "gm", "csf")}
        conc, affine = to_thick_slices(u, anatomy, truth["spacing_mm"])
        grid_anatomy = Anatomy(**{n: np.clip(m[0], 0, 1) for n, m in maps.items()}, affine=affine)
    conc = np.clip(conc, 0.0, 1.0)
    labels = segment(conc, grid_anatomy.brain, grid_anatomy.spacing, truth)
    return CohortPatient(grid_anatomy, labels, conc, truth)


__all__ = ["CohortPatient", "CohortPriors", "LABELS", "cohort_patient", "grow", "initial_ellipsoid",
           "origin_candidates", "segment", "to_thick_slices"]
