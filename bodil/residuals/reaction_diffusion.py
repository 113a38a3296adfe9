"""Reaction-diffusion (Fisher-KPP) residuals in 1, 2 and 3 space dimensions, Amoudruz et al. 2025, appendix A.

On a space-time grid with time first (node layout) and ``d`` space axes,

    A^n_i = div(D grad u^n)_i        (flux form with face diffusivity, eq. 33)
    B^n_i = rho u^n_i (1 - u^n_i)     (eq. 34)
    r^n_i = (u^{n+1}_i - u^n_i) / dt - (A^n_i + A^{n+1}_i) / 2 - (B^n_i + B^{n+1}_i) / 2   (eq. 35)

for ``n = 0 .. N_t - 2``: Crank-Nicolson, second order in ``dt`` and ``h``. Boundaries follow the grid: a
periodic axis wraps around, any other axis has no-flux walls. An optional tissue mask adds no-flux walls
inside the domain: a face whose two points are not both tissue (fraction >= ``tissue_threshold``) carries
no flux. With ``rho = 0`` and no source the scheme conserves ``sum_i u^n_i`` exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from .. import stencil
from ..stencil import TISSUE_THRESHOLD
from ._coefficients import Coefficient, resolve


def crank_nicolson(u, rate, dt):
    """``(u^{n+1} - u^n) / dt - (F^n + F^{n+1}) / 2`` along the leading (time) axis."""
    return (u[1:] - u[:-1]) / dt - 0.5 * (rate[1:] + rate[:-1])


class ReactionDiffusion:
    """Residual function ``(u, theta, grid) -> {"pde": r}`` of ``u_t = div(D grad u) + rho u (1 - u) + s``.

    Args:
        diffusivity: ``D(x)``, a number, a space-shaped array, a parameter name or ``(theta, grid) -> array``
            (for example ``lambda th, g: th["Dw"] * wm + th["Dg"] * gm``, Amoudruz et al. 2025, eq. 29).
        rho: reaction rate; number, parameter name or callable. Use ``0.0`` for pure diffusion.
        tissue: optional tissue fraction (white + grey matter) at the space points; faces touching a point
            with fraction below ``tissue_threshold`` carry no flux (no flux into CSF or background).
        tissue_threshold: see ``tissue`` (default ``bodil.stencil.TISSUE_THRESHOLD``, GliODIL's 0.1).
        source: optional source ``s(t, x)`` on the whole space-time grid, averaged Crank-Nicolson style
            like the other terms (manufactured solutions, forcing).
    """

    def __init__(self, diffusivity: Coefficient = "D", rho: Coefficient = "rho", *,
                 tissue: Coefficient | None = None, tissue_threshold: float = TISSUE_THRESHOLD,
                 source: Coefficient | None = None):
        self.diffusivity, self.rho, self.tissue = diffusivity, rho, tissue
        self.tissue_threshold, self.source = tissue_threshold, source

    def _mask(self, theta, grid):
        if self.tissue is None:
            return None
        return resolve(self.tissue, theta, grid) >= self.tissue_threshold

    def __call__(self, u, theta, grid):
        if grid.layout[0] != "node":
            raise ValueError(f"reaction_diffusion: the first grid axis must be time with node layout, got "
                             f"{grid.names[0]!r} with layout {grid.layout[0]!r}.")
        if u.shape != grid.shape:
            raise ValueError(f"reaction_diffusion: u has shape {u.shape}, grid has shape {grid.shape}.")
        dt = grid.spacing[0]
        space_shape, spacing, periodic = grid.shape[1:], grid.spacing[1:], grid.periodic[1:]
        d = resolve(self.diffusivity, theta, grid)
        faces = stencil.face_diffusivities(d, space_shape, spacing, periodic, self._mask(theta, grid))
        faces = tuple(f.astype(u.dtype) for f in faces)
        rate = stencil.diffusion_operator(u, faces, periodic)
        rate = rate + resolve(self.rho, theta, grid) * u * (1.0 - u)
        if self.source is not None:
            rate = rate + resolve(self.source, theta, grid)
        return {"pde": crank_nicolson(u, rate, dt)}

    def space_operator(self, theta, grid):
        """The pieces of the rate ``F(u) = A u + rho u (1 - u) + s`` that preconditioners need.

        Returns ``(faces, rho)``: face diffusivities ``D / h^2`` per space axis (``bodil.stencil``) and the
        reaction rate, so that ``F'(u) v = A v + rho (1 - 2 u) v``.
        """
        d = resolve(self.diffusivity, theta, grid)
        faces = stencil.face_diffusivities(d, grid.shape[1:], grid.spacing[1:], grid.periodic[1:],
                                           self._mask(theta, grid))
        return faces, jnp.asarray(resolve(self.rho, theta, grid))


def reaction_diffusion(diffusivity: Coefficient = "D", rho: Coefficient = "rho", **kwargs) -> ReactionDiffusion:
    """Residual of ``u_t = div(D grad u) + rho u (1 - u) + s`` (Crank-Nicolson); see ``ReactionDiffusion``."""
    return ReactionDiffusion(diffusivity, rho, **kwargs)


def fisher_kpp(diffusivity: Coefficient = "D", rho: Coefficient = "rho", **kwargs) -> Callable:
    """Fisher-KPP ``u_t = div(D grad u) + rho u (1 - u)`` (Amoudruz et al. 2025, eq. 19 and 26); see ``reaction_diffusion``."""
    return reaction_diffusion(diffusivity, rho, **kwargs)
