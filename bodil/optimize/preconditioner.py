"""A time-marching preconditioner for Gauss-Newton on Crank-Nicolson reaction-diffusion problems.

The Gauss-Newton matrix of an ODIL field is badly conditioned: stiff space stencils (``D / h^2``) and slow
propagation of information in time (``u^N`` is tied to ``u^0`` only through ``N_t`` residual rows) give
condition numbers of 1e6 and more, and plain CG needs thousands of iterations. Its PDE and initial-condition
rows, however, form a square block lower-bidiagonal matrix

    B = [ s_ic I                              ]      L_m = I/dt - F'(u^m)/2
        [ -s R_0    s L_1                     ]      R_m = I/dt + F'(u^m)/2
        [            -s R_1    s L_2          ]      F'(u) v = A v + rho (1 - 2u) v
        [                      ...     ...    ]      s = sqrt(2 w_pde), s_ic = sqrt(2 w_ic)

(the linearised Crank-Nicolson residual of ``bodil.residuals.reaction_diffusion.ReactionDiffusion``).
(without an initial-condition block a stand-in first row of the PDE rows' scale is used, and the outer CG
resolves the ``n_space`` initial-state directions it misjudges). ``B^{-1}`` is a forward time march and
``B^{-T}`` a backward one, each step an implicit solve with ``L_m``, done by Jacobi-preconditioned CG to a
tight tolerance (its condition number is ``1 + 2 dt D_max sum_k 1/h_k^2``, so a few tens of iterations).
``P_u = B^{-1} B^{-T}`` is then the exact inverse of the PDE and IC part of the Gauss-Newton matrix; only
data curvature is left for the outer CG, which converges in a handful of iterations.

``A`` is negative semi-definite, so ``L_m`` is symmetric positive definite while ``x = rho (1 - 2u) dt < 2``
at every point, and CG can solve with it. Beyond that (coarse time steps: on 12 nodes over 100 days any
``rho > 0.22 / day`` where ``u ~ 0``) ``L_m`` is indefinite or singular, CG breaks down, and the
preconditioner would be asymmetric and indefinite. The blocks are therefore built with the reaction
coefficient replaced by ``x~ / dt`` (``reaction_for_blocks``),

    x~ = min(x, c, 4 / max(x, c)),    c = REACTION_CAP = 1.8,

which keeps ``L_m >= (1 - c/2) / dt`` and ``P_u`` symmetric positive definite whatever ``u`` and ``rho``. It
is exact where ``x <= c``. For ``x > 4/c`` it keeps the magnitude of the reaction's Crank-Nicolson growth
factor per step, ``|1 + x/2| / |1 - x/2|``, which ``x`` and ``4/x`` share (a plain cap at ``c`` would grow by
``(1 + c/2) / (1 - c/2) = 19`` per step instead). Where it is active ``P_u`` is only an approximate inverse
and the outer CG needs more iterations: ``capped_points`` counts those points, and Gauss-Newton reports them.
A time grid with ``rho dt <= c`` (for ``0 <= u``) avoids it.

The parameters enter through the Schur complement: with ``M_{u theta}`` from ``n_theta`` matrix-vector
products, ``W = P_u M_{u theta}`` and ``S = M_{theta theta} - M_{u theta}^T W``, the block inverse

    y_u = P_u v_u,  y_theta = S^{-1} (v_theta - M_{u theta}^T y_u),  x_u = y_u - W y_theta

costs one ``P_u`` per application after ``n_theta`` at set-up.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import stencil
from ..terms import squares_weight
from .cg import truncated_cg

REACTION_CAP = 1.8
"""Largest ``rho (1 - 2u) dt`` the blocks ``L_m`` are built with: below 2, where ``L_m`` turns singular, so
that ``L_m >= (1 - REACTION_CAP / 2) / dt``, a tenth of its no-reaction bound ``1 / dt`` (the notebooks' value)."""


def reaction_for_blocks(reaction, dt):
    """The reaction coefficient the blocks use: ``x~ / dt`` with ``x = reaction dt`` and
    ``x~ = min(x, c, 4 / max(x, c))``, ``c = REACTION_CAP`` (see the module docstring); ``reaction`` itself
    where ``x <= c``."""
    x = reaction * dt
    c = REACTION_CAP
    return jnp.minimum(x, jnp.minimum(c, 4.0 / jnp.maximum(x, c))) / dt


def implicit_solve(faces, periodic, dt, reaction, rhs, rtol: float, maxiter: int, free=None):
    """Solve ``L y = rhs``, ``L = I/dt - (A + diag(reaction)) / 2`` (``A`` the diffusion operator of ``faces``,
    ``bodil.stencil``), by Jacobi-preconditioned CG to ``rtol |rhs|``: one implicit Crank-Nicolson step.
    ``L`` is SPD while ``reaction dt < 2`` (``reaction_for_blocks`` keeps it there). With ``free`` (0/1 on the
    space points) it solves on the free points with the others held at zero (``y = rhs`` there)."""
    diagonal = 1.0 / dt - 0.5 * (stencil.operator_diagonal(faces, periodic) + reaction)

    def l_op(v):
        return v / dt - 0.5 * (stencil.diffusion_operator(v, faces, periodic) + reaction * v)

    if free is None:
        operator, jacobi = l_op, 1.0 / diagonal
    else:
        def operator(v):
            return free * l_op(free * v) + (1.0 - free) * v

        jacobi = free / diagonal + (1.0 - free)
    y, _ = truncated_cg(operator, rhs, rtol * jnp.linalg.norm(rhs), maxiter, lambda r: jacobi * r)
    return y


def _linearised_reaction(obj, x):
    """``(u, theta, faces, rho (1 - 2u), dt)`` at ``x``: the pieces of ``F'(u) = A + diag(rho (1 - 2u))``."""
    post = obj.posterior
    u, z = obj.unravel(x)
    theta = post.params.merge(post.params.constrain(z))
    faces, rho = post.prior.residual.space_operator(theta, post.grid)
    return u, theta, faces, rho * (1.0 - 2.0 * u), post.grid.spacing[0]


def capped_points(obj, x):
    """How many space-time points of ``x`` have ``rho (1 - 2u) dt > REACTION_CAP``, where the time-marching
    preconditioner is only an approximate inverse (0: exact); ``None`` if it does not apply."""
    if not applies_time_marching(obj):
        return None
    *_, reaction, dt = _linearised_reaction(obj, x)
    return jnp.sum(reaction * dt > REACTION_CAP)


def applies_time_marching(obj) -> bool:
    """Whether the problem has the form the time-marching preconditioner needs: one field array on a
    space-time grid and a residual with ``space_operator`` (Crank-Nicolson reaction-diffusion)."""
    post = obj.posterior
    u, _ = obj.unravel(obj.x0)
    return (hasattr(post.prior.residual, "space_operator") and hasattr(u, "shape")
            and tuple(u.shape) == post.grid.shape)


def time_march(obj, x, inner_rtol: float, free=None):
    """Return ``(apply_B_inv, apply_B_inv_T)`` for the field part, or ``None`` if not applicable.

    With ``free`` (a 0/1 array of the grid's shape) the march inverts ``B_FF``, the rows and columns of ``B``
    at the free points: each implicit step solves ``L_m`` on the free points of time ``m`` with the others
    held at zero (Dirichlet), and both marches return zero at the points that are not free."""
    if not applies_time_marching(obj):
        return None
    post = obj.posterior
    grid = post.grid
    u, theta, faces, reaction, dt = _linearised_reaction(obj, x)
    blocks = post.prior.blocks(u, theta)
    w_pde, w_ic = squares_weight(blocks, "pde"), squares_weight(blocks, "ic")
    faces = tuple(f.astype(x.dtype) for f in faces)
    periodic = grid.periodic[1:]
    s = jnp.sqrt(2.0 * w_pde)
    # Without an initial-condition block (unknown initial state, constrained by data only) a stand-in row
    # of the PDE rows' scale closes B; the error it makes lives in the n_space-dimensional subspace of
    # initial states, which CG then resolves in about n_space iterations.
    s_ic = jnp.sqrt(2.0 * w_ic) if w_ic else s / dt
    reaction = reaction_for_blocks(reaction, dt)  # (nt, *space): F'(u^m) ~ A + diag(reaction[m])
    mask = None if free is None else jnp.asarray(free, x.dtype).reshape(grid.shape)

    def f_prime(m_reaction, v):
        return stencil.diffusion_operator(v, faces, periodic) + m_reaction * v

    def restrict(m_free, v):
        return v if m_free is None else m_free * v

    def solve_l(m_reaction, m_free, rhs):
        """Solve ``L_m y = rhs`` (on the free points) with ``L_m = I/dt - F'_m / 2``."""
        return implicit_solve(faces, periodic, dt, m_reaction, rhs, inner_rtol, 200, m_free)

    def times(m):  # the mask's time slices m (None without bounds)
        return None if mask is None else mask[m]

    def forward(b):
        y0 = restrict(times(0), b[0] / s_ic)

        def step(y_prev, inputs):
            b_next, react_prev, react_next, m_free = inputs
            rhs = restrict(m_free, b_next / s + (y_prev / dt + 0.5 * f_prime(react_prev, y_prev)))
            y = solve_l(react_next, m_free, rhs)
            return y, y

        _, ys = jax.lax.scan(step, y0, (b[1:], reaction[:-1], reaction[1:], times(slice(1, None))))
        return jnp.concatenate([y0[None], ys])

    def backward(c):
        w_last = solve_l(reaction[-1], times(-1), restrict(times(-1), c[-1])) / s

        def step(w_next, inputs):
            c_m, react_m, is_first, m_free = inputs
            rhs = restrict(m_free, c_m + s * (w_next / dt + 0.5 * f_prime(react_m, w_next)))
            w = jnp.where(is_first, rhs / s_ic, solve_l(react_m, m_free, rhs) / s)
            return w, w

        n = grid.shape[0]
        first = jnp.arange(n - 1) == 0
        _, ws = jax.lax.scan(step, w_last, (c[:-1], reaction[:-1], first, times(slice(None, -1))), reverse=True)
        return jnp.concatenate([ws, w_last[None]])

    return forward, backward


def time_marching_preconditioner(obj, x, matvec, fix_theta: bool = False, inner_rtol: float = 1e-10, free=None):
    """Build ``v -> P v`` at ``x`` (see the module docstring), or ``None`` when the problem is not a
    single-field Crank-Nicolson reaction-diffusion problem. With ``fix_theta`` the parameter block is zeroed
    (field-only solves). ``P`` is symmetric positive definite; it is the exact inverse of the PDE and IC
    curvature unless ``capped_points(obj, x) > 0``.

    ``free`` (0/1 per field value, bound-constrained solves) restricts the field block to the free values:
    ``P_u = B_FF^{-1} B_FF^{-T}`` (``time_march``), zero on the others. It inverts the curvature of the PDE and
    IC rows at free points; the rows at held points that touch free ones (the rim of the active set) are
    left to the outer CG."""
    march = time_march(obj, x, inner_rtol, free=None if free is None else free[:obj.posterior.grid.size])
    if march is None:
        return None
    forward, backward = march
    grid = obj.posterior.grid
    n_u = grid.size
    n_theta = x.size - n_u

    def p_u(v_u):
        return forward(backward(v_u.reshape(grid.shape))).reshape(-1)

    if fix_theta:
        return lambda v: jnp.concatenate([p_u(v[:n_u]), jnp.zeros_like(v[n_u:])])
    if n_theta == 0:
        return p_u
    probes = jnp.concatenate([jnp.zeros((n_theta, n_u), x.dtype), jnp.eye(n_theta, dtype=x.dtype)], axis=1)
    cols = jax.vmap(matvec)(probes)  # (n_theta, n): columns of M for the parameters
    m_ut, m_tt = cols[:, :n_u], cols[:, n_u:]
    w = jax.vmap(p_u)(m_ut)  # (n_theta, n_u) = (P_u M_{u theta})^T
    schur = m_tt - m_ut @ w.T
    schur = 0.5 * (schur + schur.T)
    eig = jnp.linalg.eigvalsh(schur)
    schur = schur + jnp.maximum(0.0, 1e-12 * jnp.max(jnp.abs(eig)) - jnp.min(eig)) * jnp.eye(n_theta, dtype=x.dtype)
    chol = jax.scipy.linalg.cho_factor(schur)

    def apply(v):
        y_u = p_u(v[:n_u])
        y_t = jax.scipy.linalg.cho_solve(chol, v[n_u:] - m_ut @ y_u)
        return jnp.concatenate([y_u - w.T @ y_t, y_t])

    return apply

