"""The PDE prior ``p(u | theta) ~ exp(-beta L_PDE(u, theta))`` and priors on the parameters theta.

Amoudruz et al. 2025, eq. 3 and 7: the prior on the field is

    log p(u | theta) = -beta * L_PDE(u, theta) - beta_IC * L_IC(u, theta) + const,

where ``L_PDE`` is built from the named residual arrays ``r_k`` the residual function returns. Two
normalisations are offered:

* ``reduction="mean"`` (default): ``L = sum_k mean(r_k^2)``, eq. 3 and 18. ``beta`` is then independent of
  the grid size; Amoudruz et al. (2025) uses ``beta = 1e4`` for the oscillator and the diffusion equation.
* ``reduction="sum"``: ``L = sum_k sum(r_k^2)``; then ``beta`` is the per-point weight ``lambda`` of eq. 24
  and 32 (``lambda_PDE n_x n_y n_t L_PDE = lambda_PDE * sum r^2``): reaction-diffusion uses
  ``lambda_PDE = 10`` or ``100`` and ``lambda_IC = 100`` or ``1000``; the tumour model ``1e3`` and ``200``.

Parameters live in ``Params``: each entry is either a fixed value or a numpyro distribution (its prior).
Inferred parameters are mapped to unconstrained space by ``numpyro.distributions.transforms.biject_to``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import distributions as dist
from numpyro.distributions.transforms import biject_to

from .grid import Grid
from .terms import Squares

# Priors on theta are numpyro distributions; these names are re-exported for convenience.
Uniform = dist.Uniform
Normal = dist.Normal
LogNormal = dist.LogNormal


class Params:
    """The model parameters: fixed values and inferred ones with their priors.

    Example:
        >>> params = Params(omega2=Uniform(0.5, 1.5), D=0.1)   # omega2 inferred, D fixed

    Inferred entries are numpyro ``Distribution`` objects (any with a support numpyro can biject to); other
    entries (numbers, arrays) are fixed and passed to the residual and likelihood unchanged.
    """

    def __init__(self, **entries: Any):
        self.priors: dict[str, dist.Distribution] = {}
        self.fixed: dict[str, Any] = {}
        for name, value in entries.items():
            if isinstance(value, dist.Distribution):
                self.priors[name] = value
            else:
                arr = np.asarray(value)
                if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
                    raise TypeError(f"Params: {name}={value!r} is neither a number/array nor a numpyro distribution.")
                if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
                    raise ValueError(f"Params: fixed value {name} contains NaN or infinity.")
                self.fixed[name] = value
        self.transforms = {k: biject_to(d.support) for k, d in self.priors.items()}

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the inferred parameters, in order."""
        return tuple(self.priors)

    def __repr__(self) -> str:
        inner = [f"{k}={type(d).__name__}" for k, d in self.priors.items()]
        inner += [f"{k}={v!r}" if np.ndim(v) == 0 else f"{k}=<array {np.shape(v)}>" for k, v in self.fixed.items()]
        return f"Params({', '.join(inner)})"

    def _check(self, theta: Mapping[str, Any]) -> None:
        missing = [k for k in self.priors if k not in theta]
        extra = [k for k in theta if k not in self.priors]
        if missing or extra:
            raise KeyError(f"theta must hold exactly the inferred parameters {list(self.priors)}; "
                           f"missing {missing}, unexpected {extra}"
                           + (" (fixed parameters are not part of theta)" if set(extra) & set(self.fixed) else "")
                           + ".")

    def merge(self, theta: Mapping[str, Any]) -> dict[str, Any]:
        """All parameters: the fixed ones and the inferred ``theta``."""
        return {**self.fixed, **theta}

    def log_prob(self, theta: Mapping[str, Any]):
        """``log p(theta)`` summed over the inferred parameters (on the constrained scale)."""
        self._check(theta)
        return sum((jnp.sum(d.log_prob(theta[k])) for k, d in self.priors.items()), jnp.zeros(()))

    def initial(self, dtype=None) -> dict[str, Any]:
        """A starting point: each prior's mean (its median when the mean is not finite)."""
        out = {}
        for k, d in self.priors.items():
            m = np.asarray(d.mean)
            if not np.all(np.isfinite(m)):
                m = np.asarray(d.icdf(0.5)) if hasattr(d, "icdf") else np.zeros(d.batch_shape)
            out[k] = jnp.asarray(m, dtype=dtype)
        return out

    def unconstrain(self, theta: Mapping[str, Any]) -> dict[str, Any]:
        """Map inferred parameters to unconstrained space (``z = T^{-1}(theta)``)."""
        self._check(theta)
        out = {}
        for k, t in self.transforms.items():
            z = t.inv(jnp.asarray(theta[k]))
            if not np.all(np.isfinite(np.asarray(z))) and not isinstance(z, jax.core.Tracer):
                d = self.priors[k]
                raise ValueError(f"parameter {k}={np.asarray(theta[k])} lies outside the support of its prior "
                                 f"{type(d).__name__} ({d.support}); start inside it.")
            out[k] = z
        return out

    def constrain(self, z: Mapping[str, Any]) -> dict[str, Any]:
        """Map unconstrained values back: ``theta = T(z)``."""
        return {k: t(z[k]) for k, t in self.transforms.items()}

    def log_abs_det_jacobian(self, z: Mapping[str, Any]):
        """``log |det dT/dz|`` of the map to constrained space (needed by samplers in unconstrained space)."""
        total = jnp.zeros(())
        for k, t in self.transforms.items():
            total = total + jnp.sum(t.log_abs_det_jacobian(z[k], t(z[k])))
        return total


class PDEPrior:
    """``log p(u | theta) = -beta L_PDE(u, theta) - beta_initial L_IC(u, theta)`` (Amoudruz et al. 2025, eq. 7, 24, 32).

    Args:
        residual: ``residual(u, theta, grid) -> dict[str, Array]`` (see ``bodil.residuals``).
        grid: the ``bodil.Grid`` the field lives on.
        beta: weight of the PDE loss.
        initial: optional initial/boundary-condition residual function, same signature.
        beta_initial: its weight (required with ``initial``).
        reduction: ``"mean"`` (``L = sum_k mean(r_k^2)``, eq. 3) or ``"sum"`` (``L = sum_k sum(r_k^2)``,
            so ``beta`` is the ``lambda`` of eq. 24/32).
    """

    def __init__(self, residual: Callable, grid: Grid, beta: float = 1.0, *, initial: Callable | None = None,
                 beta_initial: float | None = None, reduction: str = "mean"):
        if not isinstance(grid, Grid):
            raise TypeError(f"PDEPrior: grid must be a bodil.Grid, got {type(grid).__name__}.")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"PDEPrior: reduction must be 'mean' or 'sum', got {reduction!r}.")
        if not beta > 0:
            raise ValueError(f"PDEPrior: beta must be positive, got {beta}.")
        if initial is not None and (beta_initial is None or not beta_initial > 0):
            raise ValueError("PDEPrior: give a positive beta_initial together with initial=.")
        self.residual, self.grid, self.beta = residual, grid, float(beta)
        self.initial, self.beta_initial, self.reduction = initial, beta_initial, reduction

    def _squares(self, group: str, fn: Callable, beta: float, u, theta) -> dict[str, Squares]:
        res = fn(u, theta, self.grid)
        if not isinstance(res, Mapping):
            res = {group: res}
        out = {}
        for name, r in res.items():
            w = beta / r.size if self.reduction == "mean" else beta
            out[f"{group}/{name}"] = Squares(w, r)
        return out

    def blocks(self, u, theta) -> dict[str, Squares]:
        """Named least-squares blocks of ``-log p(u | theta)``."""
        out = self._squares("pde", self.residual, self.beta, u, theta)
        if self.initial is not None:
            out.update(self._squares("ic", self.initial, self.beta_initial, u, theta))
        return out

    def residuals(self, u, theta) -> dict[str, Any]:
        """The raw residual arrays by block name (diagnostics, plotting)."""
        return {k: b.residual for k, b in self.blocks(u, theta).items()}

    def log_prob(self, u, theta):
        """``-beta L_PDE - beta_initial L_IC`` (unnormalised: the constant ``log Z`` of eq. 7 is dropped)."""
        return -sum((b.value() for b in self.blocks(u, theta).values()), jnp.zeros(()))
