"""Truncated conjugate gradients for Newton-type steps (Nocedal & Wright, algorithm 7.1).

Solves ``A p = b`` for a symmetric operator given only as ``matvec``. Stops when ``|r| <= tol``, after
``maxiter`` iterations, or at the first direction of non-positive curvature (then the iterate so far is
returned; on the first iteration the right-hand side itself, a descent direction when ``b = -grad``).
Written with ``lax.while_loop`` so it jits and vmaps; ``lineax.CG`` has no negative-curvature exit, which an
exact-Hessian Newton step needs.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class CGInfo(NamedTuple):
    iterations: jax.Array
    residual_norm: jax.Array
    negative_curvature: jax.Array


def truncated_cg(matvec, b, tol, maxiter: int, precondition=None):
    """Return ``(p, CGInfo)`` with ``p`` approximately solving ``A p = b``."""
    precondition = precondition if precondition is not None else (lambda r: r)
    z0 = precondition(b)
    init = (jnp.zeros_like(b), b, z0, jnp.vdot(b, z0), jnp.zeros((), jnp.int32), jnp.zeros((), bool))

    def cond(state):
        _, r, _, _, k, neg = state
        return (k < maxiter) & (jnp.linalg.norm(r) > tol) & ~neg

    def body(state):
        x, r, p, rz, k, _ = state
        ap = matvec(p)
        pap = jnp.vdot(p, ap)
        neg = pap <= 0
        alpha = jnp.where(neg, 0.0, rz / jnp.where(neg, 1.0, pap))
        x_new = x + alpha * p
        # Negative curvature on the very first direction: fall back to the (preconditioned) right-hand side.
        x_new = jnp.where(neg & (k == 0), p, x_new)
        r_new = jnp.where(neg, r, r - alpha * ap)
        z_new = precondition(r_new)
        rz_new = jnp.vdot(r_new, z_new)
        p_new = z_new + (rz_new / jnp.where(rz == 0, 1.0, rz)) * p
        return x_new, r_new, p_new, rz_new, k + 1, neg

    x, r, _, _, k, neg = jax.lax.while_loop(cond, body, init)
    return x, CGInfo(k, jnp.linalg.norm(r), neg)
