"""The discrete forward solution of a Crank-Nicolson reaction-diffusion residual: the field whose ODIL residual
is zero (``bodil.residuals.reaction_diffusion``, Amoudruz et al. 2025, eq. 35).

From ``u^0`` each time step solves, for ``y = u^{n+1}``,

    G(y) = y / dt - F(y) / 2 - (u^n / dt + F(u^n) / 2) - (s^n + s^{n+1}) / 2 = 0,    F(u) = A u + rho u (1 - u),

by Newton's method, ``G'(y) = I / dt - (A + diag(rho (1 - 2 y))) / 2``, each Newton system solved by
Jacobi-preconditioned conjugate gradients. ``G'`` is symmetric positive definite while
``rho (1 - 2y) dt < 2``; on coarse time grids (``rho dt >= 2`` where ``u ~ 0``) the step has no such
guarantee, and the reaction in ``G'`` is replaced as in the time-marching preconditioner
(``bodil.optimize.preconditioner.reaction_for_blocks``): the iteration is then an approximate Newton method
that may stop short of ``G = 0`` within its ``newton_iterations``.

With ``bounds=(lower, upper)`` every Newton iterate is clipped to the box (for concentrations, ``[0, 1]``):
the march is then the projected solution, whose residual is not zero where a bound is met.

This is the minimiser of the PDE and initial-condition terms of the ODIL prior (their value is zero there),
so it is the natural starting field of an ODIL solve at given parameters: the solve then only has to move
the field by what the data ask, instead of first removing the discretisation error of another solver.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import stencil
from ..optimize.preconditioner import implicit_solve, reaction_for_blocks
from ..residuals._coefficients import resolve


def crank_nicolson_march(residual, u0, theta, grid, *, newton_iterations: int = 8, rtol: float = 1e-10,
                         cg_maxiter: int = 200, bounds=None) -> jax.Array:
    """March ``u0`` through the time nodes of ``grid`` with the Crank-Nicolson scheme of ``residual``.

    Args:
        residual: a ``bodil.residuals.reaction_diffusion.ReactionDiffusion`` (it gives ``space_operator``).
        u0: the field at the first time node, shape ``grid.shape[1:]``.
        theta: the parameters the residual reads.
        grid: the space-time grid (time first, node layout).
        newton_iterations: the most Newton iterations per time step (a step stops earlier once
            ``|G| <= rtol |u^n / dt + F(u^n) / 2|``).
        rtol: that relative tolerance; also the conjugate-gradient tolerance of each Newton system.
        cg_maxiter: the most conjugate-gradient iterations per Newton system.
        bounds: ``None`` or ``(lower, upper)``: clip every iterate to this box.

    Returns:
        The field on the whole grid, shape ``grid.shape``; its first time slice is ``u0`` (clipped to ``bounds``).

    Raises:
        ValueError: ``residual`` is not a Crank-Nicolson reaction-diffusion residual, or ``u0`` has the wrong shape.
    """
    if not hasattr(residual, "space_operator"):
        raise ValueError("crank_nicolson_march: the residual must be a reaction-diffusion residual "
                         "(bodil.residuals.reaction_diffusion), which gives its space operator.")
    u0 = jnp.asarray(u0)
    if u0.shape != tuple(grid.shape[1:]):
        raise ValueError(f"crank_nicolson_march: u0 has shape {u0.shape}; the grid's space shape is "
                         f"{tuple(grid.shape[1:])}.")
    clip = (lambda v: v) if bounds is None else (lambda v: jnp.clip(v, *bounds))
    dt = grid.spacing[0]
    faces, rho = residual.space_operator(theta, grid)
    faces = tuple(f.astype(u0.dtype) for f in faces)
    periodic = grid.periodic[1:]
    rho = jnp.broadcast_to(jnp.asarray(rho, u0.dtype), u0.shape)
    if residual.source is None:
        forcing = jnp.zeros((grid.shape[0] - 1,) + u0.shape, u0.dtype)
    else:  # (s^n + s^{n+1}) / 2 per step
        source = jnp.broadcast_to(resolve(residual.source, theta, grid), grid.shape).astype(u0.dtype)
        forcing = 0.5 * (source[:-1] + source[1:])

    def rate(v):
        return stencil.diffusion_operator(v, faces, periodic) + rho * v * (1.0 - v)

    def step(u_prev, forcing_n):
        known = u_prev / dt + 0.5 * rate(u_prev) + forcing_n
        tol = rtol * jnp.linalg.norm(known)

        def g(y):
            return y / dt - 0.5 * rate(y) - known

        def cond(state):
            _, k, g_y = state
            return (k < newton_iterations) & (jnp.linalg.norm(g_y) > tol)

        def body(state):
            y, k, g_y = state
            reaction = reaction_for_blocks(rho * (1.0 - 2.0 * y), dt)
            y = clip(y + implicit_solve(faces, periodic, dt, reaction, -g_y, rtol, cg_maxiter))
            return y, k + 1, g(y)

        y, _, _ = jax.lax.while_loop(cond, body, (u_prev, jnp.zeros((), jnp.int32), g(u_prev)))
        return y, y

    first = clip(u0)
    _, rest = jax.lax.scan(step, first, forcing)
    return jnp.concatenate([first[None], rest])
