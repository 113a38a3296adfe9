"""The joint posterior over the field and the parameters (Amoudruz et al. 2025, eq. 8-9):

    log p(u, theta | D) = sum_l log p_l(D_l | u, theta) - beta L_PDE(u, theta) - beta_IC L_IC(u, theta)
                          + log p(theta) + const.

Positions are pairs ``(u, theta)``: ``u`` a pytree of arrays (usually one array on the grid), ``theta`` a
dict of the inferred parameters. Fixed parameters from ``bodil.Params`` are merged in before the
residuals and likelihoods see theta. For optimisers and samplers the inferred parameters are moved to
unconstrained space, ``z = T^{-1}(theta)``; ``Posterior.potential`` includes ``log |det dT/dz|``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import terms
from .likelihood import Likelihood
from .prior import Params, PDEPrior
from .terms import Scalar


class Posterior:
    """``p(u, theta | D)`` from a ``PDEPrior``, one or more likelihoods and ``Params``.

    Example:
        >>> post = Posterior(prior, Gaussian(obs, y, sigma=0.1), params=Params(omega2=Uniform(0.5, 1.5)))
        >>> post.log_density(u, {"omega2": 1.0})
    """

    def __init__(self, prior: PDEPrior, likelihood: Likelihood | Sequence[Likelihood] | None = None,
                 params: Params | None = None):
        if not isinstance(prior, PDEPrior):
            raise TypeError(f"Posterior: prior must be a bodil.PDEPrior, got {type(prior).__name__}.")
        if likelihood is None:
            likelihoods: tuple = ()
        elif isinstance(likelihood, Likelihood):
            likelihoods = (likelihood,)
        else:
            likelihoods = tuple(likelihood)
        for lik in likelihoods:
            if not isinstance(lik, Likelihood):
                raise TypeError(f"Posterior: likelihoods must be bodil.likelihood objects, got {type(lik).__name__}.")
        self.prior = prior
        self.likelihoods = likelihoods
        self.params = params if params is not None else Params()

    @property
    def grid(self):
        return self.prior.grid

    # ------------------------------------------------------------------ densities
    def blocks(self, u, theta) -> dict:
        """All named blocks of ``-log p(u, theta | D)`` (constrained ``theta``, no Jacobian)."""
        full = self.params.merge(theta)
        out = dict(self.prior.blocks(u, full))
        for i, lik in enumerate(self.likelihoods):
            for name, block in lik.blocks(u, full).items():
                key = name if len(self.likelihoods) == 1 else f"{name}{i}"
                out[key] = block
        if self.params.priors:
            out["theta/prior"] = Scalar(-self.params.log_prob(theta))
        return out

    def log_density(self, u, theta):
        """``log p(u, theta | D)`` up to the PDE prior's normaliser (constrained ``theta``)."""
        return -terms.total(self.blocks(u, theta))

    def log_density_parts(self, u, theta) -> dict:
        """``log p`` contributions by group: ``pde``, ``ic``, ``data``, ``theta``."""
        return {k: -v for k, v in terms.group_totals(self.blocks(u, theta)).items()}

    # ------------------------------------------------------------------ unconstrained space
    def initial_theta(self, dtype=None) -> dict:
        """Prior means of the inferred parameters."""
        return self.params.initial(dtype)

    def unconstrain(self, u, theta) -> tuple[Any, dict]:
        return u, self.params.unconstrain(theta)

    def constrain(self, x) -> tuple[Any, dict]:
        u, z = x
        return u, self.params.constrain(z)

    def unconstrained_blocks(self, x) -> dict:
        """Blocks of ``-log p`` at an unconstrained position ``x = (u, z)`` (no Jacobian: MAP in theta)."""
        return self.blocks(*self.constrain(x))

    def potential(self, x):
        """``-log p(u, T(z) | D) - log |det dT/dz|``: the potential energy for samplers in unconstrained space."""
        u, z = x
        return terms.total(self.unconstrained_blocks(x)) - self.params.log_abs_det_jacobian(z)

    def check(self, u, theta) -> None:
        """Raise a clear error if ``(u, theta)`` is not a valid position (shapes, names, finiteness)."""
        leaves = u.values() if isinstance(u, dict) else [u]
        for leaf in leaves:
            if np.shape(leaf)[: self.grid.ndim] != self.grid.shape:
                raise ValueError(f"the field has shape {np.shape(leaf)} but the grid has shape {self.grid.shape}.")
            if not np.all(np.isfinite(np.asarray(leaf))):
                raise ValueError("the initial field contains NaN or infinite values.")
        self.params.unconstrain(theta)  # raises for missing names or values outside the support
