"""Argument checks shared by bodil's entry points: one wording for one kind of mistake.

Each check raises ``ValueError`` (``TypeError`` for a wrong kind of object) whose message starts with the
caller's name, says what was given and what is allowed, and returns the value converted to its plain type.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import jax
import numpy as np


def choice(where: str, name: str, value: Any, options: Iterable) -> Any:
    """``value`` if it is one of ``options``."""
    options = tuple(options)
    if value not in options:
        raise ValueError(f"{where}: unknown {name} {value!r}; choose one of {options}.")
    return value


def integer(where: str, name: str, value: Any, low: int = 0, high: int | None = None) -> int:
    """``int(value)`` if it is a whole number in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or int(value) != value:
        raise ValueError(f"{where}: {name} must be an integer, got {value!r}.")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{where}: {name} must be an integer {bound}, got {value!r}.")
    return int(value)


def positive(where: str, name: str, value: Any, allow_zero: bool = False) -> float:
    """``float(value)`` if it is finite and ``> 0`` (``>= 0`` with ``allow_zero``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        what = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{where}: {name} must be a finite {what} number, got {value!r}.")
    return float(value)


def open_interval(where: str, name: str, value: Any, low: float, high: float) -> float:
    """``float(value)`` if ``low < value < high``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
        raise ValueError(f"{where}: {name} must lie in ({low}, {high}), got {value!r}.")
    return float(value)


def no_unknown(where: str, options: Mapping[str, Any], known: Iterable[str]) -> None:
    """Refuse keyword options that ``where`` does not take (a typo would otherwise be ignored)."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"{where}: unknown option(s) {', '.join(map(repr, unknown))}; "
                        f"it takes {', '.join(sorted(known))}.")


def is_key(value: Any) -> bool:
    """Whether ``value`` is a ``jax.random`` key: typed (``jax.random.key``) or raw (``PRNGKey``, uint32 (2,))."""
    return isinstance(value, jax.Array) and (jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key)
                                             or (value.shape == (2,) and value.dtype.name == "uint32"))


def seed_words(where: str, seed: Any) -> list[int]:
    """The integers behind ``seed``: ``[seed]`` for an integer, the key's data words for a key (to seed a
    ``numpy`` generator from the same argument that makes JAX keys)."""
    if is_key(seed):
        data = jax.random.key_data(seed) if jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key) else seed
        return [int(w) for w in np.asarray(data, np.uint32).ravel()]
    return [integer(where, "seed", seed)]


def as_key(where: str, seed: Any) -> jax.Array:
    """A ``jax.random`` key from ``seed``: an integer, or a key (typed ``jax.random.key`` or raw ``PRNGKey``)."""
    if is_key(seed):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int) and not (hasattr(seed, "__index__")
                                                                    and getattr(seed, "ndim", 0) == 0):
        raise TypeError(f"{where}: seed must be an integer or a jax.random key, got {type(seed).__name__}.")
    return jax.random.key(int(seed))


def starting_point(where: str, init: Any) -> tuple[Any, dict]:
    """``(u, theta)`` from a ``MAPResult`` (anything with ``.u`` and ``.theta``) or a pair ``(u, theta)``."""
    if hasattr(init, "u") and hasattr(init, "theta"):
        return init.u, init.theta
    if isinstance(init, (tuple, list)) and len(init) == 2 and isinstance(init[1], Mapping):
        return init[0], init[1]
    raise TypeError(f"{where}: the starting point must be a MAPResult or a pair (u, theta) with theta a dict of "
                    f"constrained parameters, got {type(init).__name__}.")
