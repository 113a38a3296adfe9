"""The parameter space of a run: flat particle rows ``(n, d)`` <-> theta dicts, the prior density, prior draws."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ...prior import Params

__all__ = ["ParameterSpace"]


class ParameterSpace:
    """The inferred entries of a ``bodil.Params`` as rows of ``d`` numbers (each parameter flattened, in order).

    Attributes:
        names, shapes: the inferred parameters and their shapes. d: the length of a row.
    """

    def __init__(self, params: Params):
        if not isinstance(params, Params):
            raise TypeError(f"params must be a bodil.Params, got {type(params).__name__}.")
        if not params.priors:
            raise ValueError("params has no inferred entries: give at least one parameter a prior, "
                             "e.g. Params(k=bodil.Uniform(0.0, 1.0)).")
        self.priors = params.priors
        self.names = tuple(params.priors)
        self.shapes = tuple(tuple(int(n) for n in d.batch_shape + d.event_shape) for d in self.priors.values())
        sizes = [math.prod(s) for s in self.shapes]
        ends = np.cumsum(sizes)
        self.slices = [slice(int(e - s), int(e)) for s, e in zip(sizes, ends)]
        self.d = int(ends[-1])
        self._log_prior = jax.jit(self._log_prior_jax)

    def split(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Rows ``(m, d)`` -> ``{name: (m, *shape)}``."""
        return {k: x[:, sl].reshape((len(x),) + sh) for k, sl, sh in zip(self.names, self.slices, self.shapes)}

    def thetas(self, x: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Rows ``(m, d)`` -> ``m`` dicts ``{name: array of its shape}`` (what a log-likelihood is given)."""
        return [{k: row[sl].reshape(sh) for k, sl, sh in zip(self.names, self.slices, self.shapes)} for row in x]

    def log_prior(self, x: np.ndarray) -> np.ndarray:
        """``log p(theta)`` per row, ``-inf`` outside the support (jitted; rows padded to a power of two)."""
        m = len(x)
        size = 1 << max(m - 1, 0).bit_length()
        padded = np.concatenate([x, np.repeat(x[-1:], size - m, axis=0)]) if size > m else x
        return np.asarray(self._log_prior(padded), dtype=float)[:m]

    def _log_prior_jax(self, x):
        total = jnp.zeros(x.shape[0], x.dtype)
        for sl, sh, d in zip(self.slices, self.shapes, self.priors.values()):
            v = x[:, sl].reshape((x.shape[0],) + sh)
            lp = jnp.where(d.support(v), d.log_prob(v), -jnp.inf)
            total = total + lp.reshape(x.shape[0], -1).sum(axis=1)
        return total

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` prior draws as rows; one integer of ``rng`` seeds the ``jax.random`` draws."""
        keys = jax.random.split(jax.random.PRNGKey(int(rng.integers(0, 2**32))), len(self.names))
        cols = [np.asarray(d.sample(key, (n,)), dtype=float).reshape(n, -1)
                for key, d in zip(keys, self.priors.values())]
        return np.concatenate(cols, axis=1)
