"""Steady diffusion from two disc sources on a square lattice (Toledo-Marín et al. 2021, "Deep learning
approaches to surrogates for solving the diffusion equation for mechanistic real-world simulations", sec. 2).

On an ``n x n`` lattice of unit spacing (paper: ``n = 100``) two discs of radius ``r`` (paper: 5) hold the
field fixed at their values ``v_1 = 1`` and ``v_2 ~ U(0, 1]``; a pixel belongs to disc ``k`` when its centre
lies within ``r`` of the disc's centre. Everywhere else the field solves

    D lap c - gamma c = 0,      D = 1,  gamma = 1 / 400   (diffusion length sqrt(D / gamma) = 20),

with the five-point Laplacian ``lap c_ij = c_{i+1,j} + c_{i-1,j} + c_{i,j+1} + c_{i,j-1} - 4 c_ij`` and the
absorbing boundary ``c = 0`` on the lattice's outer ring of pixels. Discs lie fully inside the domain (they do
not touch the ring) and do not overlap (centres more than ``2 r`` apart).

The problem is linear in the source values: ``c = v_1 G_1 + v_2 G_2`` where ``G_k`` is the field with disc
``k`` at 1 and the other at 0. ``SteadySolver`` factorises the sparse operator of the free pixels once per
geometry (``scipy.sparse.linalg.splu``, minimum-degree ordering of ``A + A^T``) and computes both ``G_k``;
``relax_to_steady`` integrates the time-dependent equation ``c_t = D lap c - gamma c`` from the sources alone
(the paper's baseline) to check it.

Datasets (``generate_steady_dataset``, ``bodil dataset-steady``) use the shard, manifest and resume machinery
of ``bodil.forward.storage``; shards hold ``x`` (the source image, float32 ``(k, n, n)``), ``y`` (the steady
field), ``centres`` ``(k, 2, 2)`` (row, column in pixels) and ``values`` ``(k, 2)``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .. import _checks
from ..io import InputError
from ..progress import ProgressMeter
from .storage import SPLITS, load_arrays, settings_record, shard_plan, write_sharded

SIZE = 100
"""Lattice side in pixels (Toledo-Marín et al. 2021)."""
RADIUS = 5.0
"""Disc radius in pixels."""
DIFFUSIVITY = 1.0
"""``D`` in pixels^2 per unit time."""
DECAY = 1.0 / 400.0
"""``gamma`` per unit time (diffusion length 20 pixels)."""
FORMAT = "bodil-steady-dataset/1"
"""The ``format`` entry of a steady dataset's manifest."""
COMMAND = "bodil dataset-steady"


class Geometry(NamedTuple):
    """Two disc sources: ``centres (2, 2)`` (row, column in pixels, continuous), ``values (2,)``, on a
    ``size x size`` lattice with discs of ``radius``."""

    centres: np.ndarray
    values: np.ndarray
    size: int = SIZE
    radius: float = RADIUS


def check_geometry(geometry: Geometry) -> Geometry:
    """``geometry`` with float arrays, if its discs lie inside the domain without touching the absorbing ring
    and without overlapping, and its values are finite; raises ``InputError`` otherwise."""
    c = np.asarray(geometry.centres, float)
    v = np.asarray(geometry.values, float)
    n, r = int(geometry.size), float(geometry.radius)
    if c.shape != (2, 2) or v.shape != (2,):
        raise InputError(f"Geometry: centres must have shape (2, 2) and values (2,), got {c.shape} and {v.shape}.")
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(v))) or r <= 0 or n < 2 * r + 4:
        raise InputError(f"Geometry: centres and values must be finite, the radius positive and the lattice side "
                         f"at least 2 r + 4 (got size {n}, radius {r:g}).")
    lo, hi = 1.0 + r, n - 2.0 - r
    outside = [k for k in range(2) if np.any(c[k] < lo) or np.any(c[k] > hi)]
    if outside:
        raise InputError(f"Geometry: disc {outside[0] + 1} at {c[outside[0]].tolist()} reaches outside the domain; "
                         f"centres of discs of radius {r:g} on a {n} x {n} lattice must lie in [{lo:g}, {hi:g}] "
                         f"(the outer ring of pixels is the absorbing boundary).")
    if np.hypot(*(c[0] - c[1])) <= 2 * r:
        raise InputError(f"Geometry: the discs at {c[0].tolist()} and {c[1].tolist()} overlap; their centres must "
                         f"be more than 2 r = {2 * r:g} pixels apart.")
    return Geometry(c, v, n, r)


def disc_masks(geometry: Geometry) -> np.ndarray:
    """``(2, n, n)`` booleans: the pixels whose centres lie within ``radius`` of each disc's centre."""
    i = np.arange(geometry.size, dtype=float)
    c = np.asarray(geometry.centres, float)
    d2 = (i[None, :, None] - c[:, 0, None, None]) ** 2 + (i[None, None, :] - c[:, 1, None, None]) ** 2
    return d2 <= float(geometry.radius) ** 2


def source_image(geometry: Geometry) -> np.ndarray:
    """The network's input: each disc's value on its pixels, zero elsewhere (``(n, n)`` float64)."""
    masks = disc_masks(geometry)
    return np.einsum("k,kij->ij", np.asarray(geometry.values, float), masks)


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(_checks.seed_words("sample_geometry", seed))


def sample_geometry(seed, size: int = SIZE, radius: float = RADIUS, stats: dict | None = None) -> Geometry:
    """Two discs at uniformly random positions inside the domain (not touching the ring), redrawn until they
    do not overlap; values 1 and ``U(0, 1]``. ``seed``: an integer, a ``jax.random`` key or a
    ``numpy.random.Generator`` (advanced in place). ``stats["overlap"]`` counts redrawn positions."""
    rng = _rng(seed)
    lo, hi = 1.0 + radius, size - 2.0 - radius
    if hi <= lo:
        raise InputError(f"sample_geometry: a {size} x {size} lattice holds no disc of radius {radius:g}.")
    first = rng.uniform(lo, hi, 2)
    for _ in range(10_000):
        second = rng.uniform(lo, hi, 2)
        if np.hypot(*(first - second)) > 2 * radius:
            break
        if stats is not None:
            stats["overlap"] = stats.get("overlap", 0) + 1
    else:
        raise InputError(f"sample_geometry: no room for two discs of radius {radius:g} on a {size} lattice.")
    values = np.array([1.0, 1.0 - rng.uniform()])  # 1 - U[0, 1) lies in (0, 1]
    return check_geometry(Geometry(np.stack([first, second]), values, int(size), float(radius)))


@functools.lru_cache(maxsize=4)
def _adjacency(n: int):
    """Sparse ``(n^2, n^2)`` adjacency of the five-point stencil (row-major pixels; cached, not modified)."""
    import scipy.sparse as sp

    t = sp.diags([np.ones(n - 1), np.ones(n - 1)], [-1, 1])
    eye = sp.identity(n)
    return (sp.kron(eye, t) + sp.kron(t, eye)).tocsr()


def free_pixels(geometry: Geometry) -> np.ndarray:
    """``(n, n)`` booleans: the unknowns (neither on the outer ring nor in a disc)."""
    free = ~disc_masks(geometry).any(axis=0)
    free[[0, -1], :] = False
    free[:, [0, -1]] = False
    return free


class SteadySolver:
    """The steady state for one disc placement, by a sparse direct solve factorised once.

    With ``F`` the free pixels, ``A = (4 D + gamma) I - D Adj`` restricted to ``F`` (symmetric positive
    definite) and ``b_k = D Adj[F, disc k] 1``, the unit-source fields are ``G_k[F] = A^{-1} b_k``, ``G_k = 1``
    on disc ``k``, 0 on the other disc and the ring. ``solve(values)`` returns ``sum_k values_k G_k``.
    """

    def __init__(self, geometry: Geometry, diffusivity: float = DIFFUSIVITY, decay: float = DECAY):
        import scipy.sparse as sp
        from scipy.sparse.linalg import splu

        self.geometry = check_geometry(geometry)
        n = self.geometry.size
        masks = disc_masks(self.geometry).reshape(2, -1)
        free = free_pixels(self.geometry).reshape(-1)
        adj = _adjacency(n)
        a_free = adj[free][:, free]
        matrix = (4.0 * diffusivity + decay) * sp.identity(int(free.sum())) - diffusivity * a_free
        self.lu = splu(matrix.tocsc(), permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True})
        rhs = diffusivity * np.stack([adj[free][:, m] @ np.ones(int(m.sum())) for m in masks], axis=1)
        g = np.zeros((2, n * n))
        g[:, free] = self.lu.solve(rhs).T
        g[0, masks[0]] = 1.0
        g[1, masks[1]] = 1.0
        self.unit_fields = g.reshape(2, n, n)

    def solve(self, values=None) -> np.ndarray:
        """The steady field ``(n, n)`` for source ``values`` (default: the geometry's)."""
        v = np.asarray(self.geometry.values if values is None else values, float)
        return np.einsum("k,kij->ij", v, self.unit_fields)


def steady_state(geometry: Geometry, diffusivity: float = DIFFUSIVITY, decay: float = DECAY) -> np.ndarray:
    """The steady field of ``geometry`` (``SteadySolver(geometry).solve()``)."""
    return SteadySolver(geometry, diffusivity, decay).solve()


def steady_residual(field, geometry: Geometry, diffusivity: float = DIFFUSIVITY, decay: float = DECAY) -> np.ndarray:
    """``D lap c - gamma c`` on the free pixels, 0 on the discs and the ring (``(n, n)``)."""
    c = np.asarray(field, float)
    out = np.zeros_like(c)
    lap = c[2:, 1:-1] + c[:-2, 1:-1] + c[1:-1, 2:] + c[1:-1, :-2] - 4.0 * c[1:-1, 1:-1]
    out[1:-1, 1:-1] = diffusivity * lap - decay * c[1:-1, 1:-1]
    return np.where(free_pixels(geometry), out, 0.0)


def relax_to_steady(geometry: Geometry, *, method: str = "explicit", dt: float | None = None, tol: float = 1e-8,
                    max_steps: int = 1_000_000, diffusivity: float = DIFFUSIVITY,
                    decay: float = DECAY) -> tuple[np.ndarray, int]:
    """Integrate ``c_t = D lap c - gamma c`` from the source image (discs held, ring at 0) until
    ``max |D lap c - gamma c| < tol`` on the free pixels; returns ``(field, steps)``.

    ``method="explicit"``: forward Euler, ``dt`` default ``0.95 * 2 / (8 D + gamma)`` (the stability limit);
    ``"implicit"``: backward Euler with ``(I + dt A)`` factorised once, ``dt`` default 50. Raises
    ``RuntimeError`` if ``max_steps`` steps do not reach ``tol``.
    """
    _checks.choice("relax_to_steady", "method", method, ("explicit", "implicit"))
    geometry = check_geometry(geometry)
    c = source_image(geometry)
    free = free_pixels(geometry)
    if method == "explicit":
        dt = 0.95 * 2.0 / (8.0 * diffusivity + decay) if dt is None else float(dt)
        for step in range(1, max_steps + 1):
            r = steady_residual(c, geometry, diffusivity, decay)
            if np.abs(r).max() < tol:
                return c, step - 1
            c = c + dt * r
        raise RuntimeError(f"relax_to_steady: {max_steps} explicit steps did not reach tol {tol:g}.")
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    dt = 50.0 if dt is None else float(dt)
    ff = free.reshape(-1)
    adj = _adjacency(geometry.size)
    a = (4.0 * diffusivity + decay) * sp.identity(int(ff.sum())) - diffusivity * adj[ff][:, ff]
    lu = splu((sp.identity(int(ff.sum())) + dt * a).tocsc(), permc_spec="MMD_AT_PLUS_A",
              options={"SymmetricMode": True})
    fixed = diffusivity * (adj[ff][:, ~ff] @ c.reshape(-1)[~ff])
    for step in range(1, max_steps + 1):
        if np.abs(steady_residual(c, geometry, diffusivity, decay)).max() < tol:
            return c, step - 1
        flat = c.reshape(-1).copy()
        flat[ff] = lu.solve(flat[ff] + dt * fixed)
        c = flat.reshape(c.shape)
    raise RuntimeError(f"relax_to_steady: {max_steps} implicit steps did not reach tol {tol:g}.")


# ------------------------------------------------------------------------------------------------ datasets
@dataclasses.dataclass(frozen=True)
class SteadyDatasetSettings:
    """What a steady dataset is made of (all written to the manifest): lattice ``size``, disc ``radius``,
    ``diffusivity``, ``decay``, samples per split, ``shard_size`` and the integer ``seed`` of all streams.
    The paper: 100, 5, 1, 1/400 and 20 000 samples (80 % training, 20 % test)."""

    size: int = SIZE
    radius: float = RADIUS
    diffusivity: float = DIFFUSIVITY
    decay: float = DECAY
    n_train: int = 2000
    n_val: int = 200
    n_test: int = 200
    shard_size: int = 100
    seed: int = 0

    def __post_init__(self):
        where = "SteadyDatasetSettings"
        for name, low in (("size", 8), ("shard_size", 1), ("n_train", 0), ("n_val", 0), ("n_test", 0), ("seed", 0)):
            object.__setattr__(self, name, _checks.integer(where, name, getattr(self, name), low=low))
        for name in ("radius", "diffusivity", "decay"):
            object.__setattr__(self, name, _checks.positive(where, name, getattr(self, name)))
        if self.size < 2 * self.radius + 4:
            raise ValueError(f"{where}: a {self.size} lattice holds no disc of radius {self.radius:g}.")

    def split_size(self, split: str) -> int:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]


def steady_sample(geometry: Geometry, diffusivity: float = DIFFUSIVITY, decay: float = DECAY) -> dict:
    """One sample: ``x`` (source image), ``y`` (steady field), ``centres``, ``values``."""
    return {"x": source_image(geometry), "y": steady_state(geometry, diffusivity, decay),
            "centres": np.asarray(geometry.centres), "values": np.asarray(geometry.values)}


def generate_steady_dataset(out, settings: SteadyDatasetSettings = SteadyDatasetSettings(), *, resume: bool = False,
                            progress: bool | ProgressMeter = True) -> dict:
    """Write a steady dataset into folder ``out``: shards of ``settings.shard_size`` samples, each from its
    own ``numpy`` stream ``default_rng([seed, split number, shard])`` (splits fixed by the seed, independent
    of each other's sizes), and ``manifest.json`` after every shard, so a killed run continues with
    ``resume=True`` and gives the same files as an uninterrupted one.

    Returns the manifest. Raises ``InputError`` for an existing dataset in ``out`` without ``resume`` or with
    other settings.
    """
    header = {"format": FORMAT, "settings": settings_record(settings),
              "equation": "D lap c - gamma c = 0, discs fixed, c = 0 on the outer ring"}

    def make_shard(split, index, count, step):
        rng, stats, samples = np.random.default_rng([settings.seed, SPLITS.index(split), index]), {}, []
        for _ in range(count):
            geometry = sample_geometry(rng, settings.size, settings.radius, stats)
            samples.append(steady_sample(geometry, settings.diffusivity, settings.decay))
            step()
        stats["kept"] = count
        arrays = {k: np.stack([s[k] for s in samples]) for k in ("x", "y", "centres", "values")}
        arrays["x"], arrays["y"] = arrays["x"].astype(np.float32), arrays["y"].astype(np.float32)
        return arrays, stats

    plan = shard_plan({s: settings.split_size(s) for s in SPLITS}, settings.shard_size)
    return write_sharded(out, header, plan, make_shard, resume=resume, progress=progress, desc="steady dataset",
                         where="generate_steady_dataset", command=COMMAND)


class SteadySplit(NamedTuple):
    """One split in memory: ``x``, ``y`` (float32 ``(N, n, n)``), ``centres (N, 2, 2)``, ``values (N, 2)``."""

    x: np.ndarray
    y: np.ndarray
    centres: np.ndarray
    values: np.ndarray
    manifest: dict


def load_steady_split(path, split: str, *, limit: int | None = None) -> SteadySplit:
    """``split`` of the steady dataset in folder ``path`` (SHA-256 of every shard checked; ``InputError`` for
    a missing, incomplete or damaged dataset)."""
    arrays, manifest = load_arrays(path, split, ("x", "y", "centres", "values"), limit=limit, format=FORMAT,
                                   command=COMMAND)
    return SteadySplit(manifest=manifest, **arrays)


__all__: Sequence[str] = ["COMMAND", "DECAY", "DIFFUSIVITY", "FORMAT", "Geometry", "RADIUS", "SIZE",
                          "SteadyDatasetSettings",
                          "SteadySolver", "SteadySplit", "check_geometry", "disc_masks", "free_pixels",
                          "generate_steady_dataset", "load_steady_split", "relax_to_steady", "sample_geometry",
                          "source_image", "steady_residual", "steady_sample", "steady_state"]
