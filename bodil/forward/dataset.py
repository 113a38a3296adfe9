"""Training data for tumour-growth surrogates: Fisher-Kolmogorov runs cropped around the tumour (Weidner et al. 2025, sec. 2.4).

Each sample is one run of ``bodil.forward.solve_fk`` in a tissue volume (usually the MNI152 atlas, resampled
to the dataset's isotropic spacing ``h``) with the reduced parameters of Weidner et al. 2025, sec. 2.1,

    theta = (x, y, z, mu_D, mu_rho),   mu_D = sqrt(Dw T) (mm),   mu_rho = sqrt(rho T),   Dg = Dw / 10,

where ``(x, y, z)`` is the initial tumour centre relative to the crop centre (mm, along the volume's axes).
The FK solution at ``T`` depends on ``Dw``, ``rho`` and ``T`` only through ``mu_D`` and ``mu_rho`` (rescale
time by ``T``), so every run uses ``T = 1`` day, ``Dw = mu_D^2`` and ``rho = mu_rho^2``. The initial
condition is GliODIL's clipped Gaussian (Amoudruz et al. 2025, eq. 27-28), zero outside tissue.

Drawing a sample (``numpy.random.Generator`` streams fixed by the seed, one per shard):

1. the origin uniformly among the voxels with white-matter fraction at least ``origin_min_wm``, jittered
   uniformly within the voxel; ``mu_D`` and ``mu_rho`` uniformly over their ranges;
2. the run is skipped if the Fisher front ``2 mu_D mu_rho`` (mm) exceeds half the crop side (it could not
   fit); otherwise FK is solved in a cube of ``solve_factor * size`` voxels centred on the origin;
3. the run is kept if its visible volume ``|u >= visible_threshold|`` lies within ``volume_cm3`` and, after
   cropping ``size^3`` voxels centred on the concentration's centre of mass, ``u < edge_tolerance`` on the
   crop's faces (the tumour lies inside the crop).

How many draws each rule refused is counted in the manifest. The kept parameters are therefore uniform over
the region of the ranges that gives tumours of the accepted sizes (Weidner et al. 2025 match BraTS tumour sizes).

Files (``bodil.forward.storage``): ``manifest.json`` and compressed shards of ``shard_size`` samples. Shards
are written atomically and the manifest after each, so an interrupted run resumes where it stopped and gives
the same data as an uninterrupted one. Splits (train / validation / test) have their own streams: they are
fixed by the seed and do not depend on each other's sizes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence

import numpy as np

from .. import _checks
from ..io import InputError
from ..progress import ProgressMeter
from ..residuals.initial import SEED_CUTOFF, SEED_DT2, SEED_MASS
from ..stencil import TISSUE_THRESHOLD
from .fk import MAX_RHO_DT, SAFETY, fk_initial_condition, solve_fk
from .storage import (FORMAT, SPLITS, Split, load_manifest, load_split, settings_record, shard_arrays, shard_plan,
                      split_sizes, write_sharded)

THETA_NAMES = ("x", "y", "z", "mu_d", "mu_rho")
"""Names of the surrogate parameters, in order."""

THETA_UNITS = ("mm", "mm", "mm", "mm", "1")
"""Their units: origin offsets from the crop centre and ``mu_D = sqrt(Dw T)`` in mm; ``mu_rho`` has none."""


@dataclasses.dataclass(frozen=True)
class FKSettings:
    """The Fisher-Kolmogorov run behind every sample: ``Dg = dg_ratio Dw`` (Weidner et al. 2025: 0.1), the
    ``solve_fk`` settings ``tissue_threshold``, ``safety``, ``max_rho_dt`` and the initial condition's
    ``mass``, ``dt2``, ``cutoff`` (Amoudruz et al. 2025, eq. 28)."""

    dg_ratio: float = 0.1
    tissue_threshold: float = TISSUE_THRESHOLD
    safety: float = SAFETY
    max_rho_dt: float = MAX_RHO_DT
    mass: float = SEED_MASS
    dt2: float = SEED_DT2
    cutoff: float = SEED_CUTOFF

    def __post_init__(self):
        where = type(self).__name__
        for name in ("dg_ratio", "tissue_threshold", "cutoff"):
            _checks.positive(where, name, getattr(self, name), allow_zero=True)
        for name in ("max_rho_dt", "mass", "dt2"):
            _checks.positive(where, name, getattr(self, name))
        if isinstance(self.safety, bool) or not isinstance(self.safety, (int, float)) or not 0 < self.safety <= 1:
            raise ValueError(f"{where}: safety must lie in (0, 1], got {self.safety!r}.")

    @classmethod
    def from_manifest(cls, manifest: dict) -> "FKSettings":
        """The solver settings stored in a dataset's manifest."""
        s = manifest["settings"]
        return cls(**{f.name: s[f.name] for f in dataclasses.fields(cls)})


def fk_run(origin_mm, mu_d: float, mu_rho: float, wm, gm, spacing_mm: float,
           settings: FKSettings = FKSettings()) -> np.ndarray:
    """One run with ``T = 1``, ``Dw = mu_D^2``, ``Dg = dg_ratio Dw``, ``rho = mu_rho^2`` from the clipped
    Gaussian at ``origin_mm`` (the cube's frame: voxel ``i`` at ``(i + 1/2) h``), zero outside tissue; no-flux
    cube faces. Returns ``u(T)`` (float64)."""
    wm, gm = np.asarray(wm, np.float32), np.asarray(gm, np.float32)
    tissue = (wm + gm) >= settings.tissue_threshold
    u0 = np.asarray(fk_initial_condition(wm.shape, spacing_mm, origin_mm, mass=settings.mass, dt2=settings.dt2,
                                         cutoff=settings.cutoff, dtype=np.float32)) * tissue
    dw = float(mu_d) ** 2
    u = solve_fk(u0, wm, gm, spacing_mm, dw=dw, dg=settings.dg_ratio * dw, rho=float(mu_rho) ** 2, t_final=1.0,
                 tissue_threshold=settings.tissue_threshold, safety=settings.safety, max_rho_dt=settings.max_rho_dt)
    return np.asarray(u[-1], dtype=np.float64)


def fk_on_crop(theta, tissue, spacing_mm: float, settings: FKSettings = FKSettings()) -> np.ndarray:
    """``fk_run`` on a crop for the surrogate's ``theta``: origin at the crop centre plus ``theta[:3]`` (mm),
    ``tissue = (c_w, c_g)`` on the crop."""
    theta = np.asarray(theta, float)
    wm, gm = tissue
    origin = theta[:3] + 0.5 * np.shape(wm)[0] * spacing_mm
    return fk_run(origin, theta[3], theta[4], wm, gm, spacing_mm, settings)


@dataclasses.dataclass(frozen=True)
class DatasetSettings(FKSettings):
    """What a dataset is made of (all of it is written to the manifest), with the solver's ``FKSettings``.

    Attributes:
        size: crop side in voxels (Weidner et al. 2025: 128 at 1 mm; default 64 at 2 mm, the same 128 mm).
        spacing_mm: isotropic voxel size of the volume and the crops.
        mu_d: range of ``mu_D = sqrt(Dw T)`` in mm (DESIGN.md: up to about 32 mm).
        mu_rho: range of ``mu_rho = sqrt(rho T)`` (DESIGN.md: up to about 10).
        visible_threshold: concentration that counts as visible tumour (FLAIR edema, 0.25).
        volume_cm3: accepted range of the visible volume.
        edge_tolerance: largest concentration allowed on the crop faces.
        origin_min_wm: origins are drawn among voxels with at least this white-matter fraction.
        solve_factor: side of the cube FK is solved in, in crops (it must hold the crop around the centre
            of mass, which drifts from the origin towards white matter).
        n_train, n_val, n_test: samples per split.
        shard_size: samples per file.
        seed: the root of all random streams (an integer: it seeds ``numpy.random.default_rng``).
    """

    size: int = 64
    spacing_mm: float = 2.0
    mu_d: tuple[float, float] = (2.0, 32.0)
    mu_rho: tuple[float, float] = (1.0, 10.0)
    visible_threshold: float = 0.25
    volume_cm3: tuple[float, float] = (1.0, 250.0)
    edge_tolerance: float = 1e-2
    origin_min_wm: float = 0.5
    solve_factor: float = 1.5
    n_train: int = 1000
    n_val: int = 100
    n_test: int = 100
    shard_size: int = 50
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        where = "DatasetSettings"
        for name in ("mu_d", "mu_rho", "volume_cm3"):
            lo, hi = (float(v) for v in getattr(self, name))
            if not (0 <= lo < hi and math.isfinite(hi)):
                raise ValueError(f"DatasetSettings: {name} must be a range (lo, hi) with 0 <= lo < hi, got "
                                 f"{getattr(self, name)!r}.")
            object.__setattr__(self, name, (lo, hi))
        for name, low in (("size", 8), ("shard_size", 1), ("n_train", 0), ("n_val", 0), ("n_test", 0), ("seed", 0)):
            object.__setattr__(self, name, _checks.integer(where, name, getattr(self, name), low=low))
        _checks.positive(where, "spacing_mm", self.spacing_mm)
        if not (isinstance(self.solve_factor, (int, float)) and 1 <= self.solve_factor < math.inf):
            raise ValueError(f"DatasetSettings: solve_factor must be a number >= 1, got {self.solve_factor!r}.")
        for name in ("visible_threshold", "edge_tolerance", "origin_min_wm"):
            _checks.positive(where, name, getattr(self, name))

    @property
    def side_mm(self) -> float:
        return self.size * self.spacing_mm

    def split_size(self, split: str) -> int:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]

    def theta_ranges(self) -> dict:
        """Parameter ranges: offsets within half a crop side, ``mu_D`` and ``mu_rho`` as drawn."""
        half = 0.5 * self.side_mm
        return {"x": (-half, half), "y": (-half, half), "z": (-half, half), "mu_d": self.mu_d,
                "mu_rho": self.mu_rho}


def _rng(settings: DatasetSettings, split: str, shard: int) -> np.random.Generator:
    return np.random.default_rng([settings.seed, SPLITS.index(split), shard])


def _window(volume: np.ndarray, centre: np.ndarray, n: int) -> np.ndarray:
    """``n^3`` voxels of ``volume`` starting at ``centre - n // 2`` (zero beyond the volume)."""
    start = np.asarray(centre, int) - n // 2
    out = np.zeros((n,) * 3, dtype=volume.dtype)
    src = tuple(slice(max(0, s), min(d, s + n)) for s, d in zip(start, volume.shape))
    dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start))
    if all(sl.stop > sl.start for sl in src):
        out[dst] = volume[src]
    return out


def _faces_max(u: np.ndarray) -> float:
    return max(float(np.take(u, j, axis=k).max()) for k in range(u.ndim) for j in (0, -1))


def draw_sample(wm: np.ndarray, gm: np.ndarray, settings: DatasetSettings, rng: np.random.Generator,
                candidates: np.ndarray, stats: dict) -> dict:
    """Draw and solve until one run is kept (module docstring, steps 1-3); ``stats`` counts the refusals."""
    n, h = settings.size, settings.spacing_mm
    ns = int(math.ceil(settings.solve_factor * n))
    half_mm = 0.5 * settings.side_mm
    while True:
        stats["draws"] = stats.get("draws", 0) + 1
        origin = candidates[rng.integers(len(candidates))] + rng.uniform(-0.5, 0.5, 3)
        mu_d = rng.uniform(*settings.mu_d)
        mu_rho = rng.uniform(*settings.mu_rho)
        if 2.0 * mu_d * mu_rho > half_mm:
            stats["front_too_far"] = stats.get("front_too_far", 0) + 1
            continue
        centre = np.floor(origin).astype(int)
        wm_s, gm_s = _window(wm, centre, ns), _window(gm, centre, ns)
        start = centre - ns // 2
        origin_mm = (origin - start + 0.5) * h  # the solve cube's frame: voxel i at (i + 1/2) h
        u = fk_run(origin_mm, mu_d, mu_rho, wm_s, gm_s, h, settings)
        volume = float((u >= settings.visible_threshold).sum()) * h ** 3 / 1000.0
        if not settings.volume_cm3[0] <= volume <= settings.volume_cm3[1]:
            stats["volume_out_of_range"] = stats.get("volume_out_of_range", 0) + 1
            continue
        idx = np.indices(u.shape).reshape(3, -1)
        com = (idx * u.reshape(-1)).sum(axis=1) / u.sum()
        lo = np.round(com - n / 2 + 0.5).astype(int)  # crop voxels lo .. lo + n - 1, centre lo + n/2 - 1/2
        if np.any(lo < 0) or np.any(lo + n > ns):
            stats["crop_outside_solve_cube"] = stats.get("crop_outside_solve_cube", 0) + 1
            continue
        sl = tuple(slice(a, a + n) for a in lo)
        uc = u[sl]
        if _faces_max(uc) >= settings.edge_tolerance or _faces_max(u) >= settings.edge_tolerance:
            stats["tumour_leaves_crop"] = stats.get("tumour_leaves_crop", 0) + 1
            continue
        crop_start = start + lo  # volume voxel index of crop voxel 0
        offset = (origin - (crop_start + n / 2 - 0.5)) * h
        stats["kept"] = stats.get("kept", 0) + 1
        return {"theta": np.array([*offset, mu_d, mu_rho]), "tissue": np.stack([wm_s[sl], gm_s[sl]]),
                "u": uc, "origin_voxel": origin, "crop_start": crop_start, "visible_cm3": volume}


def _check_volume(wm, gm) -> tuple[np.ndarray, np.ndarray]:
    wm = np.asarray(wm, dtype=np.float32)
    gm = np.asarray(gm, dtype=np.float32)
    if wm.ndim != 3 or wm.shape != gm.shape:
        raise InputError(f"generate_dataset: wm and gm must be 3-D arrays of one shape, got {wm.shape} and "
                         f"{gm.shape}.")
    if not (np.all(np.isfinite(wm)) and np.all(np.isfinite(gm))):
        raise InputError("generate_dataset: the tissue maps contain NaN or infinite values.")
    if wm.min() < 0 or gm.min() < 0 or (wm + gm).max() > 1 + 1e-3:
        raise InputError("generate_dataset: tissue fractions must lie in [0, 1] and wm + gm <= 1.")
    return wm, gm


def _origin_candidates(wm: np.ndarray, settings: DatasetSettings) -> np.ndarray:
    """Voxel indices (as floats) where origins may be drawn: white-matter fraction >= ``origin_min_wm``."""
    candidates = np.argwhere(wm >= settings.origin_min_wm).astype(float)
    if len(candidates) == 0:
        raise InputError(f"generate_dataset: no voxel has white-matter fraction >= {settings.origin_min_wm}; "
                         f"lower origin_min_wm or check the tissue maps.")
    return candidates


def _header(wm, gm, settings: DatasetSettings, anatomy: str) -> dict:
    """What the manifest records about the dataset (a resumed run must match it)."""
    return {"format": FORMAT, "settings": settings_record(settings), "anatomy": anatomy,
            "tissue_sha256": hashlib.sha256(wm.tobytes() + gm.tobytes()).hexdigest(),
            "volume_shape": list(wm.shape), "theta_names": list(THETA_NAMES), "theta_units": list(THETA_UNITS),
            "theta_ranges": {k: list(v) for k, v in settings.theta_ranges().items()}}


def generate_dataset(out, wm, gm, settings: DatasetSettings = DatasetSettings(), *, anatomy: str = "",
                     resume: bool = False, progress: bool | ProgressMeter = True) -> dict:
    """Write a surrogate training dataset into the folder ``out`` (see the module docstring).

    Args:
        out: output folder (created).
        wm, gm: white- and grey-matter fractions on an isotropic grid of spacing ``settings.spacing_mm``
            (``bodil.tumor.resample_isotropic`` puts the MNI152 atlas on one; ``bodil dataset`` does this).
        settings: what to generate.
        anatomy: a description of the tissue maps, stored in the manifest.
        resume: continue a dataset in ``out`` (its manifest must hold the same settings and anatomy);
            without it an existing manifest is an error.
        progress: ``True`` for a progress bar (samples), ``False`` for none, or a ``bodil.progress`` meter.

    Returns:
        The manifest (also written to ``out/manifest.json``).

    Raises:
        InputError: for tissue maps that are not fractions on one 3-D grid, no white matter to draw origins
            from, or an existing dataset in ``out`` without ``resume`` or with other settings or anatomy.
    """
    wm, gm = _check_volume(wm, gm)
    candidates = _origin_candidates(wm, settings)

    def make_shard(split, index, count, step):
        rng, stats, samples = _rng(settings, split, index), {}, []
        for _ in range(count):
            samples.append(draw_sample(wm, gm, settings, rng, candidates, stats))
            step()
        return shard_arrays(samples), stats

    plan = shard_plan({s: settings.split_size(s) for s in SPLITS}, settings.shard_size)
    return write_sharded(out, _header(wm, gm, settings, anatomy), plan, make_shard, resume=resume,
                         progress=progress, desc="FK dataset")


__all__: Sequence[str] = ["DatasetSettings", "FKSettings", "SPLITS", "Split", "THETA_NAMES", "THETA_UNITS",
                          "draw_sample", "fk_on_crop", "fk_run", "generate_dataset", "load_manifest", "load_split",
                          "split_sizes"]
