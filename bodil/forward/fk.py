"""Fisher-Kolmogorov tumour growth in physical units (mm, days), explicit finite differences.

    u_t = div(D grad u) + rho u (1 - u),     D = Dw c_w + Dg c_g          (Amoudruz et al. 2025, eq. 26, 29)

with ``c_w``, ``c_g`` the white- and grey-matter fractions, ``Dw``, ``Dg`` in mm^2/day and ``rho`` in 1/day.
Space is a grid of cell centres ``x_i = (i + 1/2) h`` (mm) with no-flux walls on the outer faces. The
space operator is the flux form of ``bodil.stencil`` (Amoudruz et al. 2025, eq. 33): face diffusivity = mean of the two
neighbours, and zero where the tissue fraction ``c_w + c_g`` is below ``tissue_threshold``
(``bodil.stencil.TISSUE_THRESHOLD``, GliODIL's 0.1) on either side, so nothing flows into CSF or background.

Time stepping is forward Euler with the step

    dt <= min( safety / (2 sum_k Dmax / h_k^2),  max_rho_dt / rho )

the first bound is the explicit stability limit (``bodil.forward.fd.cfl_time_step``), the second keeps the
reaction accurate when diffusion is slow (Euler's growth error is about ``rho dt / 2`` relative, and
``rho dt > 1`` would overshoot ``u = 1``). The initial condition is GliODIL's clipped Gaussian (Amoudruz et al.
2025, eq. 27-28): ``u_0 = M / (4 pi Dt^2)^{3/2} exp(-|x - x_0|^2 / (4 Dt^2))``, set to 0 where ``u_0 <= 0.1`` and
clipped at 1, with ``M = 1500`` and ``Dt^2 = 15 mm^2`` (``bodil.residuals.initial.SEED_MASS``, ``SEED_DT2``,
``SEED_CUTOFF``).

Everything is JAX (one compiled time loop per grid shape and dtype), so it runs unchanged on a GPU. The
dtype is taken from ``u0``. ``solve_fk`` checks its inputs and counts the steps on the host; ``BatchedFK`` is the
same solver as one pure function of ``(u0, Dw, Dg, rho)`` on fixed tissue maps, for ``jax.jit`` and ``jax.vmap``
(many runs at once, as a BASIS stage needs).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .. import stencil
from ..grid import Grid
from ..residuals.initial import SEED_CUTOFF, SEED_DT2, SEED_MASS, clipped_gaussian_profile
from ..stencil import TISSUE_THRESHOLD
from .fd import cfl_time_step, march, output_times

SAFETY = 0.9
"""Default fraction of the explicit stability bound used for the time step."""

MAX_RHO_DT = 0.05
"""Default largest ``rho dt`` per step (Euler's relative growth error is about half of it)."""


def _spacing(spacing_mm, ndim: int, where: str) -> tuple[float, ...]:
    h = np.asarray(spacing_mm, dtype=float)
    if h.ndim == 0:
        h = np.full(ndim, float(h))
    if h.shape != (ndim,):
        raise ValueError(f"{where}: spacing_mm must be a number or {ndim} numbers (one per axis), got "
                         f"{spacing_mm!r}.")
    if not np.all(np.isfinite(h)) or np.any(h <= 0):
        raise ValueError(f"{where}: spacing_mm must be positive, got {tuple(h)} mm.")
    return tuple(float(x) for x in h)


def fk_initial_condition(shape: Sequence[int], spacing_mm, origin_mm, *, mass: float = SEED_MASS,
                         dt2: float = SEED_DT2, cutoff: float = SEED_CUTOFF, dtype=None):
    """GliODIL's initial tumour (Amoudruz et al. 2025, eq. 27-28) on a grid of cell centres ``(i + 1/2) h`` (mm).

    ``u_0 = M / (4 pi Dt^2)^{d/2} exp(-|x - x_0|^2 / (4 Dt^2))``, 0 where ``u_0 <= cutoff``, at most 1.

    Args:
        shape: grid shape (any number of axes, usually 3).
        spacing_mm: ``h`` in mm, one number or one per axis.
        origin_mm: ``x_0`` in the array frame, mm from the grid's lower corner (the point ``i`` sits at
            ``(i + 1/2) h``).
        mass: ``M`` (mm^d, concentration x volume before clipping).
        dt2: ``Dt^2`` in mm^2 (the Gaussian's variance is ``2 Dt^2`` per axis).
        cutoff: values at or below it are set to 0.
        dtype: of the result (default JAX's default float).

    Returns:
        Array of ``shape``.
    """
    shape = tuple(int(n) for n in shape)
    h = _spacing(spacing_mm, len(shape), "fk_initial_condition")
    x0 = np.asarray(origin_mm, dtype=float)
    if x0.shape != (len(shape),) or not np.all(np.isfinite(x0)):
        raise ValueError(f"fk_initial_condition: origin_mm must be {len(shape)} finite numbers, got {origin_mm!r}.")
    if not mass > 0 or not dt2 > 0:
        raise ValueError(f"fk_initial_condition: mass and dt2 must be positive, got {mass} and {dt2}.")
    names = tuple(f"x{k}" for k in range(len(shape)))
    # clipped_gaussian_profile works on a space-time grid (time first); a two-point time axis carries it
    grid = Grid(shape=(2, *shape), lower=(0.0,) * (len(shape) + 1),
                upper=(1.0, *(n * hk for n, hk in zip(shape, h))), names=("t", *names),
                layout=("node",) + ("cell",) * len(shape))
    u0 = clipped_gaussian_profile({}, grid, tuple(float(c) for c in x0), mass, dt2, cutoff)  # space shape
    return jnp.asarray(u0, dtype=dtype)


@functools.partial(jax.jit, static_argnums=5)
def _faces(wm, gm, dw, dg, threshold, spacing):
    """Per axis the face ``D / h^2`` on both sides of every point, ``(D_{i+1/2}, D_{i-1/2}) / h^2`` (zero on the
    walls and on faces touching non-tissue), and the largest tissue ``D``."""
    d = dw * wm + dg * gm
    tissue = (wm + gm) >= threshold
    faces = stencil.face_diffusivities(d, wm.shape, spacing, (False,) * wm.ndim, tissue)
    return tuple(_both_sides(f, axis) for axis, f in enumerate(faces)), jnp.max(jnp.where(tissue, d, 0.0))


def _both_sides(f, axis: int):
    """The ``n - 1`` interior faces along ``axis`` as ``(above, below)`` each point: ``f`` with a zero wall face
    appended, and prepended."""
    shape = list(f.shape)
    shape[axis] = 1
    wall = jnp.zeros(shape, f.dtype)
    return jnp.concatenate([f, wall], axis=axis), jnp.concatenate([wall, f], axis=axis)


def _euler(v, sides, rho, dt):
    """One forward-Euler step ``v + dt (A v + rho v (1 - v))`` (walled axes; leading batch axes broadcast), with

        A v = sum_axes D_{i+1/2} (v_{i+1} - v_i) - D_{i-1/2} (v_i - v_{i-1})    (``sides`` from ``_faces``),

    the flux form of ``stencil.diffusion_operator`` with every flux computed alike, so the same numbers; the
    neighbour across a wall is the point itself (its face is zero). Neighbours by slicing, not ``jnp.roll``
    or flux differences, which XLA fuses less well (``benchmarks/fk_step.py``)."""
    nd = len(sides)
    out = 0.0
    for k, (above, below) in enumerate(sides):
        axis = k - nd
        up = jnp.concatenate([stencil._take(v, axis, 1, None), stencil._take(v, axis, -1, None)], axis=axis)
        down = jnp.concatenate([stencil._take(v, axis, 0, 1), stencil._take(v, axis, None, -1)], axis=axis)
        out = out + (above * (up - v) - below * (v - down))
    return v + dt * (out + rho * v * (1.0 - v))


@jax.jit
def _advance(u, faces, rho, dt, n):
    """``n`` forward-Euler steps of ``u += dt (A u + rho u (1 - u))`` (walled axes)."""
    return jax.lax.fori_loop(0, n, lambda _, v: _euler(v, faces, rho, dt), u)


def _check_field(name: str, value, shape, dtype):
    """The field as a JAX array of ``dtype`` after checking its shape and values (checks run in NumPy:
    eager JAX reductions would each compile a kernel per shape)."""
    host = np.asarray(value)
    if tuple(host.shape) != tuple(shape):
        raise ValueError(f"solve_fk: {name} has shape {tuple(host.shape)} but u0 has shape {tuple(shape)}; "
                         f"give all fields on the same grid.")
    if not np.all(np.isfinite(host)):
        raise ValueError(f"solve_fk: {name} contains NaN or infinite values.")
    lo, hi = float(host.min(initial=0.0)), float(host.max(initial=0.0))
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"solve_fk: {name} must lie in [0, 1], got values in [{lo}, {hi}].")
    return jnp.asarray(value, dtype=dtype)


def _check_rates(dw, dg, rho, t_final, safety, max_rho_dt) -> tuple[float, float, float, float]:
    """``(dw, dg, rho, t_final)`` as floats after checking them and the step settings."""
    for name, value in (("dw", dw), ("dg", dg), ("rho", rho), ("t_final", t_final)):
        if not (np.ndim(value) == 0 and np.isfinite(float(value)) and float(value) >= 0):
            raise ValueError(f"solve_fk: {name} must be a non-negative number, got {value!r}.")
    if not 0 < safety <= 1 or not max_rho_dt > 0:
        raise ValueError(f"solve_fk: need 0 < safety <= 1 and max_rho_dt > 0, got {safety} and {max_rho_dt}.")
    return float(dw), float(dg), float(rho), float(t_final)


def _step_bound(d_max: float, h, rho: float, safety: float, max_rho_dt: float) -> float:
    """``min(safety / (2 sum_k Dmax / h_k^2), max_rho_dt / rho)`` (infinite when both terms vanish)."""
    dt_max = math.inf
    if d_max > 0:
        dt_max = cfl_time_step(d_max, h, safety)
    if rho > 0:
        dt_max = min(dt_max, max_rho_dt / rho)
    return dt_max


def solve_fk(u0, wm, gm, spacing_mm, *, dw: float, dg: float, rho: float, t_final: float, times=None,
             tissue_threshold: float = TISSUE_THRESHOLD, safety: float = SAFETY, max_rho_dt: float = MAX_RHO_DT,
             max_steps: int = 10_000_000):
    """Integrate ``u_t = div((Dw c_w + Dg c_g) grad u) + rho u (1 - u)`` from ``u0`` (mm, days).

    Args:
        u0: initial concentration in ``[0, 1]`` (for example ``fk_initial_condition``). Values in voxels cut
            off from tissue stay there and only grow logistically; zero them if that is unwanted.
        wm, gm: white- and grey-matter fractions ``c_w``, ``c_g`` in ``[0, 1]``, same shape as ``u0``.
        spacing_mm: voxel size ``h`` in mm, one number or one per axis.
        dw, dg: diffusivity in white and grey matter, mm^2/day (non-negative).
        rho: proliferation rate, 1/day (non-negative).
        t_final: final time in days.
        times: increasing output times in ``[0, t_final]`` (days); default ``[t_final]``. Each is reached
            exactly by shortening the steps of the interval that ends on it.
        tissue_threshold: faces with ``c_w + c_g`` below it on either side carry no flux.
        safety: fraction of the explicit stability bound used for the step (< 1).
        max_rho_dt: largest ``rho dt`` per step (reaction accuracy; Euler's relative growth error is about
            half of it).
        max_steps: refuse to run more steps than this (a too-fine grid or a huge ``Dw``).

    Returns:
        Array of shape ``(len(times), *u0.shape)``, dtype of ``u0``.

    Raises:
        ValueError: for fields of other shapes or outside ``[0, 1]``, negative coefficients, unordered
            ``times`` or more than ``max_steps`` steps.
    """
    u0 = jnp.asarray(u0)
    if not jnp.issubdtype(u0.dtype, jnp.floating):
        u0 = u0.astype(jnp.result_type(float))
    shape = tuple(u0.shape)
    if len(shape) < 1:
        raise ValueError("solve_fk: u0 must have at least one axis.")
    h = _spacing(spacing_mm, len(shape), "solve_fk")
    u0 = _check_field("u0", u0, shape, u0.dtype)
    wm = _check_field("wm", wm, shape, u0.dtype)
    gm = _check_field("gm", gm, shape, u0.dtype)
    dw, dg, rho, t_final = _check_rates(dw, dg, rho, t_final, safety, max_rho_dt)
    times = output_times(times, t_final, "solve_fk")

    faces, d_max = _faces(wm, gm, jnp.asarray(dw, u0.dtype), jnp.asarray(dg, u0.dtype),
                          jnp.asarray(tissue_threshold, u0.dtype), h)
    d_max = float(d_max)
    dt_max = _step_bound(d_max, h, rho, safety, max_rho_dt)
    rho_arr = jnp.asarray(rho, u0.dtype)
    return march(lambda u, dt, n: _advance(u, faces, rho_arr, dt, n), u0, times, dt_max, max_steps,
                 lambda n: f"solve_fk: {n} time steps needed (dt <= {dt_max:.3g} days for h = {h} mm, "
                           f"Dmax = {d_max:.3g} mm^2/day, rho = {rho:.3g}/day); coarsen the grid, shorten "
                           f"t_final or raise max_steps.")


@jax.tree_util.register_pytree_node_class
class BatchedFK:
    """``solve_fk`` on fixed tissue maps as a pure JAX function of ``(u0, Dw, Dg, rho)``: ``jit``- and ``vmap``-able.

    ``solve(u0, dw, dg, rho)`` takes the steps ``solve_fk(u0, wm, gm, spacing_mm, dw=dw, dg=dg, rho=rho,
    t_final=times[-1], times=times, ...)`` takes: each interval up to an output time is split into
    ``n = ceil(span / dt_max)`` equal steps, ``dt_max = min(safety / (2 sum_k Dmax / h_k^2), max_rho_dt / rho)``,
    with the same floating-point operations, so the two agree to rounding. The step count is computed on the
    device (no host synchronisation), the intervals run in ``lax.scan`` and the steps of each in a
    ``lax.fori_loop`` with that count. Under ``jax.vmap`` every member keeps its own steps; the loop runs as
    many steps as the batch's largest count, holding the members that are done, so a batch of similar rates
    costs what its slowest member costs (``steps`` gives the counts, to group runs of similar cost).

    Args:
        wm, gm: white- and grey-matter fractions in ``[0, 1]`` (checked once, kept on the device).
        spacing_mm: voxel size ``h`` in mm, one number or one per axis.
        times: increasing output times in ``[0, times[-1]]`` (days); the run starts at ``t = 0``.
        tissue_threshold, safety, max_rho_dt: as in ``solve_fk``.
        max_steps: most steps per interval; ``steps`` refuses more, ``solve`` returns NaN for such a run.
        dtype: of the fields (default JAX's default float). The step sizes are computed in JAX's default
            float (float64 with ``jax_enable_x64``, as ``solve_fk``'s on the host).
        final_only: ``solve`` returns only the field at ``times[-1]`` (a batch of runs then holds one field each).

    The object is a pytree whose leaves are the tissue maps: pass it as an argument into a function that
    ``jax.jit`` compiles (``jax.jit(f)(solver, ...)``, ``jax.vmap(..., in_axes=(None, ...))``) rather than
    closing over it, so that the maps are inputs of the compiled program, not constants folded into it.

    Raises:
        ValueError: for maps of different shapes or outside ``[0, 1]``, bad spacing, times or step settings.
    """

    def __init__(self, wm, gm, spacing_mm, times, *, tissue_threshold: float = TISSUE_THRESHOLD,
                 safety: float = SAFETY, max_rho_dt: float = MAX_RHO_DT, max_steps: int = 10_000_000, dtype=None,
                 final_only: bool = False):
        self.dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)
        self.shape = tuple(np.shape(wm))
        self.spacing = _spacing(spacing_mm, len(self.shape), "BatchedFK")
        self.wm = _check_field("wm", wm, self.shape, self.dtype)
        self.gm = _check_field("gm", gm, self.shape, self.dtype)
        _check_rates(0.0, 0.0, 0.0, 0.0, safety, max_rho_dt)
        times = np.asarray(times, dtype=float)
        self.times = output_times(times, float(times.reshape(-1)[-1]), "BatchedFK")
        self.spans = np.diff(np.concatenate([[0.0], self.times]))  # float(target) - t, as march computes them
        self.threshold, self.safety, self.max_rho_dt = float(tissue_threshold), float(safety), float(max_rho_dt)
        self.max_steps, self.final_only = int(max_steps), bool(final_only)
        host = np.stack([np.asarray(self.wm, float), np.asarray(self.gm, float)], -1).reshape(-1, 2)
        tissue = host[host.sum(axis=1) >= self.threshold]
        self._front = _upper_front(tissue)  # Dmax = max over these of Dw c_w + Dg c_g for any Dw, Dg >= 0

    def tree_flatten(self):
        static = (self.dtype, self.shape, self.spacing, tuple(self.spans), self.threshold, self.safety,
                  self.max_rho_dt, self.max_steps, self.final_only)
        return (self.wm, self.gm), static

    @classmethod
    def tree_unflatten(cls, static, leaves):
        self = object.__new__(cls)
        (self.dtype, self.shape, self.spacing, spans, self.threshold, self.safety, self.max_rho_dt, self.max_steps,
         self.final_only) = static
        self.spans, self.times, self._front = np.asarray(spans), np.cumsum(spans), None
        self.wm, self.gm = leaves
        return self

    def solve(self, u0, dw, dg, rho):
        """The fields at ``times`` (``(len(times), *shape)``; ``shape`` with ``final_only``) from ``u0``, for
        scalar ``dw``, ``dg``, ``rho`` (arrays or numbers); compiled, ``vmap``-able."""
        return _solve(self, u0, dw, dg, rho)

    def _step_counts(self, d_max, rho, xp):
        """Steps per interval (``march``'s count) from ``Dmax`` and ``rho`` (``xp``: ``numpy`` or ``jax.numpy``)."""
        dt_d = self.safety / (2.0 * sum(xp.where(d_max > 0, d_max, 1.0) / h**2 for h in self.spacing))
        dt_d = xp.where(d_max > 0, dt_d, xp.inf)
        dt_max = xp.minimum(dt_d, xp.where(rho > 0, self.max_rho_dt / xp.where(rho > 0, rho, 1.0), xp.inf))
        spans = xp.asarray(self.spans)
        n = xp.where(xp.isinf(dt_max)[..., None], 1.0, xp.ceil(spans / dt_max[..., None] - 1e-9))
        return xp.where(spans > 0, n, 0.0)

    def _run(self, u0, dw, dg, rho, batch: bool = False):
        """The run (``batch``: of stacked members, the steps of each interval looped up to the largest count and
        those of a member that is done taken with ``dt = 0``, exactly its state: ``vmap`` without its select)."""
        wide = jnp.result_type(float)
        n_rho = jnp.asarray(rho, wide)
        u0 = jnp.asarray(u0, self.dtype)
        dw, dg, rho = (jnp.asarray(v, self.dtype) for v in (dw, dg, rho))
        threshold, axes = jnp.asarray(self.threshold, self.dtype), (1,) * len(self.shape)

        def faces_of(a, c):
            return _faces(self.wm, self.gm, a, c, threshold, self.spacing)

        faces, d_max = (jax.vmap(faces_of) if batch else faces_of)(dw, dg)
        n = self._step_counts(d_max.astype(wide), n_rho, jnp)
        refused = jnp.any(n > self.max_steps, axis=-1)
        n = jnp.where(refused[..., None], 0.0, n)
        dts = (jnp.asarray(self.spans, wide) / jnp.where(n > 0, n, 1.0)).astype(self.dtype)
        rho = rho.reshape(rho.shape + axes)

        def interval(u, step):
            dt, k = step
            if batch:
                dt, k = dt.reshape(dt.shape + axes), k.reshape(k.shape + axes)
                u = jax.lax.fori_loop(0, jnp.max(k).astype(jnp.int32),
                                      lambda i, v: _euler(v, faces, rho, jnp.where(i < k, dt, 0)), u)
            else:
                u = _advance(u, faces, rho, dt, k.astype(jnp.int32))
            return u, (None if self.final_only else u)

        u, out = jax.lax.scan(interval, u0, (dts.T, n.T))
        out = u if self.final_only else jnp.moveaxis(out, 0, int(batch))
        return jnp.where(refused.reshape(refused.shape + (1,) * (out.ndim - refused.ndim)), jnp.nan, out)

    def steps(self, dw, dg, rho) -> np.ndarray:
        """Total steps of each run (host arithmetic; equal to ``solve``'s counts up to the rounding of ``Dmax``).

        Args:
            dw, dg, rho: numbers or 1-d arrays of the same length (non-negative).

        Returns:
            Integer array of the broadcast shape of the inputs.

        Raises:
            ValueError: when a run needs more than ``max_steps`` steps in one interval (as ``solve_fk``).
        """
        dw, dg, rho = np.broadcast_arrays(*(np.asarray(v, float) for v in (dw, dg, rho)))
        if np.any(~np.isfinite(dw + dg + rho)) or np.any(dw < 0) or np.any(dg < 0) or np.any(rho < 0):
            raise ValueError("BatchedFK.steps: dw, dg and rho must be finite and non-negative.")
        d_max = np.max(dw[..., None] * self._front[:, 0] + dg[..., None] * self._front[:, 1], axis=-1,
                       initial=0.0)
        n = self._step_counts(d_max, rho, np)
        if np.any(n > self.max_steps):
            i = np.unravel_index(np.argmax(n.max(axis=-1)), dw.shape)
            raise ValueError(f"BatchedFK: {int(n[i].max())} time steps needed in one interval (h = {self.spacing} "
                             f"mm, Dmax = {d_max[i]:.3g} mm^2/day, rho = {rho[i]:.3g}/day); coarsen the grid, "
                             f"shorten the times or raise max_steps.")
        return n.sum(axis=-1).astype(np.int64)

    def solve_batch(self, u0, dw, dg, rho):
        """``jax.vmap(solve)`` over a stacked batch (leading axis of every argument), computed as one batched
        loop (no ``vmap`` select per step); equal to ``solve`` of each member to rounding."""
        return _solve(self, u0, dw, dg, rho, batch=True)

    def __call__(self, u0, dw, dg, rho):
        """``solve_batch`` after ``steps`` checked the step counts on the host."""
        self.steps(dw, dg, rho)
        return self.solve_batch(u0, dw, dg, rho)


_solve = jax.jit(BatchedFK._run, static_argnames="batch")


def _upper_front(points: np.ndarray) -> np.ndarray:
    """The points of ``(k, 2)`` not dominated in both coordinates by another: where ``a x + b y`` (``a, b >= 0``)
    takes its maximum over all of them."""
    if len(points) == 0:
        return np.zeros((1, 2))
    p = points[np.lexsort((-points[:, 1], -points[:, 0]))]  # by x descending, then y descending
    best_before = np.concatenate([[-np.inf], np.maximum.accumulate(p[:, 1])[:-1]])
    return p[p[:, 1] > best_before]
