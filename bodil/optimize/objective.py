"""The MAP objective ``f(x) = -log p(u, T(z) | D)`` on a flat unconstrained vector ``x = ravel(u, z)``.

Split for Gauss-Newton: ``f(x) = 0.5 |R(x)|^2 + S(x)`` where ``R`` stacks ``sqrt(2 w_b) r_b(x)`` over the
least-squares blocks and ``S`` sums the scalar blocks (``bodil.terms``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .. import terms
from ..terms import Squares


class Objective:
    """Flat-vector view of a ``bodil.Posterior`` around a starting point ``(u0, theta0)``."""

    def __init__(self, posterior, u0, theta0):
        posterior.check(u0, theta0)
        self.posterior = posterior
        x0 = posterior.unconstrain(u0, theta0)
        self.x0, self.unravel = ravel_pytree(x0)
        if not jnp.issubdtype(self.x0.dtype, jnp.floating):
            self.x0 = self.x0.astype(jnp.result_type(float))

    def blocks(self, x):
        return self.posterior.unconstrained_blocks(self.unravel(x))

    def value(self, x):
        """``f(x)``, compiled once per objective (called eagerly, every operation would compile on its own)."""
        return self._compiled_value(x)

    def residual(self, x) -> dict:
        """``R(x)``: the scaled residuals ``sqrt(2 w) r`` of the least-squares blocks."""
        return {k: jnp.sqrt(2.0 * b.weight) * b.residual for k, b in self.blocks(x).items() if isinstance(b, Squares)}

    def scalar(self, x):
        """``S(x)``: the sum of the scalar blocks."""
        return sum((b.value() for b in self.blocks(x).values() if not isinstance(b, Squares)), jnp.zeros((), x.dtype))

    def parts(self, x) -> dict:
        """``-log p`` by group (pde, ic, data, theta) as Python floats."""
        return {k: float(v) for k, v in self._compiled_parts(x).items()}

    @functools.cached_property
    def _compiled_value(self):
        return jax.jit(lambda x: terms.total(self.blocks(x)))

    @functools.cached_property
    def _compiled_parts(self):
        return jax.jit(lambda x: terms.group_totals(self.blocks(x)))

    def position(self, x):
        """``(u, theta)`` with theta on the constrained scale."""
        return self.posterior.constrain(self.unravel(x))
