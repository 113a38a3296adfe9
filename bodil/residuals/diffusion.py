"""Diffusion (heat) equation residuals, midpoint in time, Amoudruz et al. 2025, eq. 17.

    r^n_i = (u^{n+1}_i - u^n_i) / dt - D (u^{n+1/2}_{i-1} - 2 u^{n+1/2}_i + u^{n+1/2}_{i+1}) / dx^2,
    u^{n+1/2} = (u^n + u^{n+1}) / 2.

This is the Crank-Nicolson scheme of ``bodil.residuals.reaction_diffusion`` without reaction; with a
constant ``D`` it reduces to eq. 17 exactly. Periodic axes wrap, other axes have no-flux walls.
"""

from __future__ import annotations

from collections.abc import Callable

from ._coefficients import Coefficient
from .reaction_diffusion import reaction_diffusion


def heat_equation(diffusivity: Coefficient = "D", **kwargs) -> Callable:
    """Residual function ``(u, theta, grid) -> {"pde": r}`` of ``u_t = div(D grad u)`` (eq. 16-17)."""
    return reaction_diffusion(diffusivity, rho=0.0, **kwargs)
