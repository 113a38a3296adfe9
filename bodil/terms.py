"""The pieces a negative log density is made of.

Every part of a posterior (PDE prior, initial condition, likelihood, parameter prior) reports its share of
``-log p`` as named blocks of two kinds:

* ``Squares`` ``(weight, residual)`` contributes ``weight * sum(residual ** 2)``; solvers use its
  Jacobian for a Gauss-Newton model of the curvature;
* ``Scalar`` ``(value)`` contributes ``value``; solvers use its exact Hessian.

Block names are ``"group/name"`` with groups ``pde``, ``ic``, ``data`` and ``theta``; reports sum by group.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp


class Squares(NamedTuple):
    """``weight * sum(residual ** 2)`` (a least-squares block)."""

    weight: Any
    residual: Any

    def value(self):
        return self.weight * jnp.sum(jnp.square(self.residual))


class Scalar(NamedTuple):
    """A scalar contribution to ``-log p``."""

    value_: Any

    def value(self):
        return jnp.asarray(self.value_)


def total(blocks: dict) -> Any:
    """``-log p`` of a dict of blocks."""
    return sum((b.value() for b in blocks.values()), jnp.zeros(()))


def group_totals(blocks: dict) -> dict:
    """``-log p`` summed per group (the part of the name before ``/``)."""
    out: dict = {}
    for name, b in blocks.items():
        group = name.split("/", 1)[0]
        out[group] = out.get(group, 0.0) + b.value()
    return out
