"""Initial-condition residuals ``r = u(t=0, x) - u_0(x; theta)`` on the space points.

* ``gaussian_bump``: Amoudruz et al. 2025, eq. 22, ``u_0 = exp(-|x - x_0|^2 / (2 R^2))``.
* ``clipped_gaussian``: Amoudruz et al. 2025, eq. 27-28 (GliODIL), ``u_0 = M / (4 pi Dt^2)^{d/2}
  exp(-|x - x_0|^2 / (4 Dt^2))`` set to 0 below ``cutoff`` and clipped at 1; lengths in the grid's units
  (mm for the tumour model, ``Dt^2`` in mm^2).

The centre ``x_0`` comes from parameters named in ``center`` (one per space axis). The residual returns
``{"ic": r}``; give it to ``bodil.PDEPrior`` as ``initial=`` with its own weight.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp

from ._coefficients import Coefficient, resolve

SEED_MASS = 1500.0
"""``M`` of GliODIL's initial tumour (Amoudruz et al. 2025, eq. 27-28): concentration x volume before clipping."""

SEED_DT2 = 15.0
"""``Dt^2`` (mm^2) of GliODIL's initial tumour (Amoudruz et al. 2025, eq. 28): its variance is ``2 Dt^2`` per axis."""

SEED_CUTOFF = 0.1
"""GliODIL's initial tumour is 0 where the Gaussian is at or below this value (Amoudruz et al. 2025, eq. 28)."""


def _squared_distance(theta, grid, center: Sequence[Coefficient]):
    space = list(range(1, grid.ndim))
    if len(center) != len(space):
        raise ValueError(f"initial condition: center has {len(center)} entries but the grid has "
                         f"{len(space)} space axes {grid.names[1:]}.")
    r2 = 0.0
    for c, x in zip(center, grid.mesh(*space)):
        r2 = r2 + (jnp.asarray(x[0]) - resolve(c, theta, grid)) ** 2
    return r2


def gaussian_profile(theta, grid, center: Sequence[Coefficient], radius: Coefficient):
    """``exp(-|x - x_0|^2 / (2 R^2))`` on the space points (eq. 22)."""
    r = resolve(radius, theta, grid)
    return jnp.exp(-_squared_distance(theta, grid, center) / (2.0 * r**2))


def clipped_gaussian_profile(theta, grid, center: Sequence[Coefficient], mass: Coefficient = SEED_MASS,
                             dt2: Coefficient = SEED_DT2, cutoff: float = SEED_CUTOFF, scale: Coefficient = 1.0):
    """GliODIL's initial condition (eq. 27-28): a Gaussian of mass ``M`` and variance ``2 Dt^2``, cut and clipped,
    optionally scaled before the clip: ``min(1, s g)`` with ``g = M / (4 pi Dt^2)^{d/2} exp(-|x - x_0|^2 / (4 Dt^2))``
    where ``g > cutoff`` and 0 elsewhere (``s = scale``; the paper's seed is ``s = 1``)."""
    d = grid.ndim - 1
    m, s2 = resolve(mass, theta, grid), resolve(dt2, theta, grid)
    u0 = m / (4.0 * jnp.pi * s2) ** (d / 2) * jnp.exp(-_squared_distance(theta, grid, center) / (4.0 * s2))
    return jnp.where(u0 <= cutoff, 0.0, jnp.minimum(resolve(scale, theta, grid) * u0, 1.0))


def gaussian_bump(center: Sequence[Coefficient] = ("x0", "y0"), radius: Coefficient = 1.0 / 16.0) -> Callable:
    """IC residual ``u(0, x) - exp(-|x - x_0|^2 / (2 R^2))`` (Amoudruz et al. 2025, eq. 22; ``R = L/16`` there)."""

    def residual(u, theta, grid):
        return {"ic": u[0] - gaussian_profile(theta, grid, center, radius).astype(u.dtype)}

    return residual


def clipped_gaussian(center: Sequence[Coefficient] = ("x0", "y0", "z0"), mass: Coefficient = SEED_MASS,
                     dt2: Coefficient = SEED_DT2, cutoff: float = SEED_CUTOFF, scale: Coefficient = 1.0) -> Callable:
    """IC residual ``u(0, x) - clip(u_0)`` with GliODIL's ``u_0`` (Amoudruz et al. 2025, eq. 27-28, M = 1500, Dt^2 = 15 mm^2),
    scaled by ``scale`` before the clip (``clipped_gaussian_profile``)."""

    def residual(u, theta, grid):
        profile = clipped_gaussian_profile(theta, grid, center, mass, dt2, cutoff, scale)
        return {"ic": u[0] - profile.astype(u.dtype)}

    return residual
