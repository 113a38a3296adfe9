"""The pieces a negative log density is made of.

Every part of a posterior (PDE prior, initial condition, likelihood, parameter prior) reports its share of
``-log p`` as named blocks of two kinds:

* ``Squares`` ``(weight, residual)`` contributes ``weight * sum(residual ** 2)``; solvers use its
  Jacobian for a Gauss-Newton model of the curvature;
* ``Scalar`` ``(value)`` contributes ``value``; solvers use its exact Hessian.

Block names are ``"group/name"`` with the groups of ``GROUPS``; reports sum by group, and solvers pick the
blocks of the field's PDE prior (``FIELD_PRIOR``) with ``select``, never by parsing names themselves.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

GROUPS = ("pde", "ic", "data", "theta")
"""The groups of block names: PDE residuals, initial condition, likelihoods, parameter prior."""

FIELD_PRIOR = ("pde", "ic")
"""The groups that make up the PDE prior on the field, ``exp(-beta L_PDE - beta_IC L_IC)``."""


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


def group(name: str) -> str:
    """The group of a block name (the part before ``/``)."""
    return name.split("/", 1)[0]


def group_totals(blocks: dict) -> dict:
    """``-log p`` summed per group."""
    out: dict = {}
    for name, b in blocks.items():
        out[group(name)] = out.get(group(name), 0.0) + b.value()
    return out


def select(blocks: dict, groups, kind: type | None = None, *, inside: bool = True) -> dict:
    """The blocks whose group is in ``groups`` (a name or a tuple such as ``FIELD_PRIOR``), or with
    ``inside=False`` the others; only those of type ``kind`` (``Squares`` or ``Scalar``) when given."""
    groups = (groups,) if isinstance(groups, str) else tuple(groups)
    return {k: b for k, b in blocks.items()
            if (group(k) in groups) == inside and (kind is None or isinstance(b, kind))}


def squares_weight(blocks: dict, groups) -> Any:
    """The summed ``weight`` of the least-squares blocks in ``groups`` (0 if there are none)."""
    return sum(b.weight for b in select(blocks, groups, Squares).values())
