"""How a residual gets a coefficient: a number or array, the name of a parameter, or a function of them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Union

import jax.numpy as jnp

Coefficient = Union[float, Any, str, Callable[[Mapping[str, Any], Any], Any]]


def resolve(value: Coefficient, theta: Mapping[str, Any], grid) -> Any:
    """Turn a coefficient specification into an array.

    * a ``str`` names an entry of ``theta`` (a parameter, fixed or inferred);
    * a callable is called as ``value(theta, grid)`` (for example ``D = Dw * cw + Dg * cg``);
    * anything else is taken as a constant number or array.
    """
    if isinstance(value, str):
        try:
            return theta[value]
        except (KeyError, TypeError):
            names = sorted(theta) if isinstance(theta, Mapping) else theta
            raise KeyError(f"the residual needs parameter {value!r}, but theta has {names}; "
                           f"add it to Params (fixed or with a prior).") from None
    if callable(value):
        return value(theta, grid)
    return jnp.asarray(value)
