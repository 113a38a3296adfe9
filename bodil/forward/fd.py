"""Explicit finite-difference solver of ``u_t = div(D grad u) + rho u (1 - u)`` (forward Euler, flux form).

The space operator is the one of the ODIL residual (``bodil.stencil.diffusion_operator``, face-averaged
diffusivity, no flux through walls or into non-tissue), so a forward solution and an ODIL field agree up to
the time discretisation. Forward Euler is stable for

    dt <= 1 / (2 sum_k Dmax / h_k^2)        (= h^2 / (2 d Dmax) on a cubic grid),

and ``cfl_time_step`` counts the steps from that bound.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .. import stencil
from ..grid import Grid


def cfl_time_step(d_max: float, spacing, safety: float = 1.0) -> float:
    """Largest stable forward-Euler step ``safety / (2 sum_k Dmax / h_k^2)``."""
    if not d_max > 0:
        raise ValueError(f"cfl_time_step: the largest diffusivity must be positive, got {d_max}.")
    return safety / (2.0 * sum(d_max / h**2 for h in spacing))


def output_times(times, t_final: float, where: str) -> np.ndarray:
    """``times`` (default ``[t_final]``) as a float array, checked to increase within ``[0, t_final]``."""
    times = np.atleast_1d(np.asarray([t_final] if times is None else times, dtype=float))
    if times.ndim != 1 or np.any(np.diff(times) < 0) or times[0] < 0 or times[-1] > t_final * (1 + 1e-12):
        raise ValueError(f"{where}: times must be increasing within [0, t_final = {t_final}], got {times}.")
    return times


def march(advance, u0, times, dt_max: float, max_steps: int, too_many):
    """The states at ``times`` from ``u0`` at ``t = 0``, by steps of at most ``dt_max``.

    Each interval up to the next output time is split into ``n`` equal steps (``n = 1`` when ``dt_max`` is
    infinite) and run as ``advance(u, dt, n)``, ``dt`` of ``u0``'s dtype. ``too_many(n)`` makes the message of
    the ``ValueError`` raised when an interval needs more than ``max_steps`` steps.

    Returns:
        Array of shape ``(len(times), *u0.shape)``.
    """
    out, u, t = [], u0, 0.0
    for target in times:
        span = float(target) - t
        n = 0
        if span > 0:
            n = 1 if math.isinf(dt_max) else int(math.ceil(span / dt_max - 1e-9))
        if n > max_steps:
            raise ValueError(too_many(n))
        if n:
            u = advance(u, jnp.asarray(span / n, u0.dtype), n)
        t = float(target)
        out.append(u)
    return jnp.stack(out)


def solve_reaction_diffusion(u0, space: Grid, diffusivity, rho: float, t_final: float, *, times=None,
                             tissue_mask=None, safety: float = 1.0, max_steps: int = 10_000_000):
    """Integrate from ``u0`` to ``t_final`` and return the states at ``times`` (default: only ``t_final``).

    Args:
        u0: initial state on the ``space`` grid.
        space: the space grid (periodic axes wrap, other axes have no-flux walls).
        diffusivity: ``D`` at the points (number or array of the space shape).
        rho: reaction rate.
        t_final: final time.
        times: increasing output times in ``[0, t_final]``; each is reached exactly by shortening the
            steps of the interval that ends on it.
        tissue_mask: optional boolean mask; no flux across faces that leave it.
        safety: fraction of the stability bound used for the step.

    Returns:
        Array of shape ``(len(times), *space.shape)``.
    """
    u0 = jnp.asarray(u0)
    space.check_field(u0, "u0")
    d = jnp.broadcast_to(jnp.asarray(diffusivity, u0.dtype), space.shape)
    d_max = float(jnp.max(d))
    dt_max = cfl_time_step(d_max, space.spacing, safety) if d_max > 0 else t_final
    times = output_times(times, t_final, "solve_reaction_diffusion")
    faces = stencil.face_diffusivities(d, space.shape, space.spacing, space.periodic, tissue_mask)

    def rate(u):
        return stencil.diffusion_operator(u, faces, space.periodic) + rho * u * (1.0 - u)

    @jax.jit
    def advance(u, dt, n):
        return jax.lax.fori_loop(0, n, lambda i, v: v + dt * rate(v), u)

    return march(advance, u0, times, dt_max, max_steps,
                 lambda n: f"solve_reaction_diffusion: {n} steps needed (dt <= {dt_max:.3g}); raise max_steps "
                           f"or coarsen the grid.")
