"""Discrete PDE residuals (ODIL operators).

Every residual is a pure function ``residual(u, theta, grid) -> dict[str, Array]`` returning named residual
arrays; the builders here return such functions. Write your own the same way (see docs/residuals.md).
"""

from ._coefficients import Coefficient, resolve
from .diffusion import heat_equation
from .initial import clipped_gaussian, clipped_gaussian_profile, gaussian_bump, gaussian_profile
from .ode import harmonic_oscillator, midpoint_ode
from .reaction_diffusion import crank_nicolson, fisher_kpp, reaction_diffusion

__all__ = [
    "Coefficient",
    "resolve",
    "clipped_gaussian",
    "clipped_gaussian_profile",
    "crank_nicolson",
    "fisher_kpp",
    "gaussian_bump",
    "gaussian_profile",
    "harmonic_oscillator",
    "heat_equation",
    "midpoint_ode",
    "reaction_diffusion",
]
