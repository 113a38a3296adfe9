"""Fisher-Kolmogorov growth by Strang splitting: a second, independent solver for validation data.

Solves ``u_t = div(D grad u) + rho u (1 - u)`` (mm, days) on a grid of cell centres with no flux through the
box walls, ``D = Dw c_w + Dg c_g`` where the tissue fraction ``c_w + c_g`` reaches ``tissue_threshold`` and
``D = 0`` elsewhere. It shares no code with ``bodil.forward.fk`` or the ODIL residual, and differs from them on
purpose, so that patients it grows are not an inverse crime for the model:

* **Time: Strang splitting** (Strang 1968, "On the construction and comparison of difference schemes"),
  one step of length ``dt`` is ``R(dt / 2) o S(dt) o R(dt / 2)`` with the exact logistic flow

      R_tau(u) = u e^{rho tau} / (1 + u (e^{rho tau} - 1)),

  and ``S`` one step of the second-order Runge-Kutta-Legendre super-time-stepping method with ``s`` stages
  (RKL2; Meyer, Balsara and Aslam 2014, "A stabilized Runge-Kutta-Legendre method for explicit
  super-time-stepping of parabolic and mixed equations", eq. 16-17) for ``u_t = L u = div(D grad u)``:

      Y_0 = u,   Y_1 = Y_0 + mu~_1 dt L Y_0,
      Y_j = mu_j Y_{j-1} + nu_j Y_{j-2} + (1 - mu_j - nu_j) Y_0 + mu~_j dt L Y_{j-1} + gamma~_j dt L Y_0,
      S(dt) u = Y_s,

  stable for ``dt <= dt_E (s^2 + s - 2) / 4`` with ``dt_E = 2 / lambda_max`` the forward-Euler bound and
  ``lambda_max <= 4 sum_k Dmax / h_k^2``. The step is at most ``max_rho_dt / rho`` (splitting accuracy) and
  ``s`` the fewest stages that keep it within ``safety`` times the RKL2 bound.
* **Space: harmonic-mean faces.** The flux through the face between voxels ``i`` and ``j`` along axis ``k`` is
  ``D_f (u_j - u_i) / h_k`` with ``D_f = 2 D_i D_j / (D_i + D_j)`` (zero when either side is zero: nothing
  enters non-tissue), where the model uses the arithmetic mean and its own tissue cut.

Everything is JAX (one compiled loop per grid shape); the dtype is taken from ``u0``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnums=1)
def harmonic_faces(d, spacing: tuple) -> tuple:
    """Per axis ``k``: ``D_f / h_k^2`` on the interior faces (shape of ``d`` with one fewer point along ``k``),
    ``D_f = 2 D_i D_j / (D_i + D_j)``, zero where either neighbour has ``D = 0``."""
    faces = []
    for k, h in enumerate(spacing):
        a = jax.lax.slice_in_dim(d, 0, d.shape[k] - 1, axis=k)
        b = jax.lax.slice_in_dim(d, 1, d.shape[k], axis=k)
        total = a + b
        faces.append(jnp.where(total > 0, 2.0 * a * b / jnp.where(total > 0, total, 1.0), 0.0) / h**2)
    return tuple(faces)


def divergence(u, faces):
    """``div(D grad u)`` in flux form with walled axes: the sum over axes of the differences of face fluxes."""
    out = jnp.zeros_like(u)
    for k, f in enumerate(faces):
        flux = f * jnp.diff(u, axis=k)  # flux from i to i + 1 (times 1 / h^2)
        zero = jnp.zeros_like(jax.lax.slice_in_dim(u, 0, 1, axis=k))
        out = out + jnp.concatenate([flux, zero], axis=k) - jnp.concatenate([zero, flux], axis=k)
    return out


def logistic_flow(u, growth):
    """The exact solution of ``u' = rho u (1 - u)`` after time ``tau``, given ``growth = e^{rho tau}``."""
    return u * growth / (1.0 + u * (growth - 1.0))


def rkl2_coefficients(s: int) -> tuple[np.ndarray, ...]:
    """``(mu, nu, mu~, gamma~)`` of RKL2 with ``s >= 2`` stages (index ``j = 0 .. s``; entries for ``j < 2`` are
    unused except ``mu~_1``): ``b_j = (j^2 + j - 2) / (2 j (j + 1))`` (``b_0 = b_1 = 1/3``), ``a_j = 1 - b_j``,
    ``w_1 = 4 / (s^2 + s - 2)``, ``mu_j = (2j - 1) / j b_j / b_{j-1}``, ``nu_j = -(j - 1) / j b_j / b_{j-2}``,
    ``mu~_j = mu_j w_1`` (``mu~_1 = b_1 w_1``), ``gamma~_j = -a_{j-1} mu~_j``."""
    j = np.arange(s + 1, dtype=float)
    b = np.full(s + 1, 1.0 / 3.0)
    b[2:] = (j[2:] ** 2 + j[2:] - 2) / (2 * j[2:] * (j[2:] + 1))
    w1 = 4.0 / (s * s + s - 2)
    mu, nu, mut, gam = (np.zeros(s + 1) for _ in range(4))
    mut[1] = b[1] * w1
    for k in range(2, s + 1):
        mu[k] = (2 * k - 1) / k * b[k] / b[k - 1]
        nu[k] = -(k - 1) / k * b[k] / b[k - 2]
        mut[k] = mu[k] * w1
        gam[k] = -(1.0 - b[k - 1]) * mut[k]
    return mu, nu, mut, gam


@functools.partial(jax.jit, static_argnums=5)
def _steps(u, faces, rho, dt, n, stages):
    half = jnp.exp(rho * dt / 2)
    mu, nu, mut, gam = (jnp.asarray(c, u.dtype) for c in rkl2_coefficients(stages))

    def diffuse(y0):
        l0 = divergence(y0, faces)

        def stage(j, carry):  # a loop, not unrolled: each stage's field is materialised once
            prev, cur = carry
            nxt = (mu[j] * cur + nu[j] * prev + (1 - mu[j] - nu[j]) * y0 + mut[j] * dt * divergence(cur, faces)
                   + gam[j] * dt * l0)
            return cur, nxt

        return jax.lax.fori_loop(2, stages + 1, stage, (y0, y0 + mut[1] * dt * l0))[1]

    def step(_, v):
        return logistic_flow(diffuse(logistic_flow(v, half)), half)

    return jax.lax.fori_loop(0, n, step, u)


def solve_fk_split(u0, wm, gm, spacing_mm, *, dw: float, dg: float, rho: float, t_final: float, times=None,
                   tissue_threshold: float = 0.1, safety: float = 0.8, max_rho_dt: float = 0.1,
                   max_stages: int = 6, max_steps: int = 2_000_000):
    """Integrate Fisher-Kolmogorov growth from ``u0`` by Strang splitting (module docstring).

    Args:
        u0: initial concentration in ``[0, 1]``.
        wm, gm: white- and grey-matter fractions, same shape as ``u0``.
        spacing_mm: voxel size in mm, one number or one per axis.
        dw, dg: diffusivity in white and grey matter (mm^2/day, non-negative).
        rho: proliferation rate (1/day, non-negative).
        t_final: final time (days).
        times: increasing output times in ``(0, t_final]``; default ``[t_final]``. Each interval is split into
            equal steps no longer than the step bound.
        tissue_threshold: ``D = 0`` where ``c_w + c_g`` is below it.
        safety: fraction of the RKL2 stability bound used (``0 < safety <= 1``).
        max_rho_dt: largest ``rho dt`` per step.
        max_stages: most RKL2 stages per step (more stages allow longer steps; the step shrinks to fit).
        max_steps: refuse runs that need more steps.

    Returns:
        Array of shape ``(len(times), *u0.shape)``.

    Raises:
        ValueError: fields of different shapes or outside ``[0, 1]``, negative rates, unordered times, bad
            step settings, or more than ``max_steps`` steps.
    """
    u0 = jnp.asarray(u0)
    if not jnp.issubdtype(u0.dtype, jnp.floating):
        u0 = u0.astype(jnp.result_type(float))
    shape = u0.shape
    h = np.broadcast_to(np.asarray(spacing_mm, float), (len(shape),))
    if not np.all(np.isfinite(h)) or np.any(h <= 0):
        raise ValueError(f"solve_fk_split: spacing_mm must be positive, one number or {len(shape)}, got "
                         f"{spacing_mm!r}.")
    fields = {}
    for name, value in (("u0", u0), ("wm", wm), ("gm", gm)):
        host = np.asarray(value, float)
        if host.shape != shape:
            raise ValueError(f"solve_fk_split: {name} has shape {host.shape}, u0 has {shape}; give all fields on "
                             f"one grid.")
        if not np.all(np.isfinite(host)) or host.min(initial=0) < 0 or host.max(initial=0) > 1:
            raise ValueError(f"solve_fk_split: {name} must be finite and in [0, 1].")
        fields[name] = host
    for name, value in (("dw", dw), ("dg", dg), ("rho", rho), ("t_final", t_final)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"solve_fk_split: {name} must be a non-negative number, got {value!r}.")
    if not (0 < safety <= 1 and max_rho_dt > 0 and int(max_stages) >= 2):
        raise ValueError(f"solve_fk_split: need 0 < safety <= 1, max_rho_dt > 0 and max_stages >= 2, got "
                         f"{safety}, {max_rho_dt}, {max_stages}.")
    times = np.atleast_1d(np.asarray([t_final] if times is None else times, float))
    if np.any(np.diff(times) <= 0) or times[0] <= 0 or times[-1] > t_final:
        raise ValueError(f"solve_fk_split: times must increase within (0, t_final = {t_final}], got {times}.")

    tissue = fields["wm"] + fields["gm"] >= tissue_threshold
    d = np.where(tissue, dw * fields["wm"] + dg * fields["gm"], 0.0)
    faces = harmonic_faces(jnp.asarray(d, u0.dtype), tuple(float(x) for x in h))
    lam = 4.0 * float(d.max(initial=0.0)) * float(np.sum(1.0 / h**2))
    dt_euler = 2.0 / lam if lam > 0 else math.inf
    dt_bound = min(max_rho_dt / rho if rho > 0 else math.inf, dt_euler * safety * (max_stages**2 + max_stages - 2) / 4)
    out, u, t = [], u0, 0.0
    for target in times:
        n = 1 if math.isinf(dt_bound) else max(1, math.ceil((target - t) / dt_bound - 1e-9))
        if n > max_steps:
            raise ValueError(f"solve_fk_split: {n} steps needed (dt <= {dt_bound:.3g} days); coarsen the grid, "
                             f"shorten t_final or raise max_steps.")
        dt = (target - t) / n
        stages = 2
        while dt > dt_euler * safety * (stages**2 + stages - 2) / 4:
            stages += 1
        u = _steps(u, faces, jnp.asarray(rho, u0.dtype), jnp.asarray(dt, u0.dtype), n, stages)
        t = float(target)
        out.append(u)
    return jnp.stack(out)


__all__ = ["divergence", "harmonic_faces", "logistic_flow", "rkl2_coefficients", "solve_fk_split"]
