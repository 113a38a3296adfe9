"""1-D diffusion with unknown initial condition (Amoudruz et al. 2025, sec. 3.2, eq. 16-18).

``u_t = D u_xx`` on the periodic interval ``(0, 1)``, ``D = 0.1``, ``T = 1``, ``n_x = 16`` points,
``n_t = 64`` steps (65 time nodes); 200 measurements at random space-time nodes with noise ``sigma = 0.1``
around ``u = exp(-4 pi^2 D t) cos(2 pi x)``; prior ``beta = 1e4`` (mean normalisation, eq. 18).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..grid import Grid
from ..likelihood import Gaussian
from ..posterior import Posterior
from ..prior import Params, PDEPrior
from ..residuals import heat_equation
from .problem import Problem


def diffusion_1d(*, nx: int = 16, nt: int = 64, t_final: float = 1.0, length: float = 1.0,
                 diffusivity: float = 0.1, num_data: int = 200, sigma: float = 0.1, beta: float = 1e4,
                 seed: int = 0, dtype=None) -> Problem:
    """Build the diffusion problem (field only, no parameters)."""
    rng = np.random.default_rng(seed)
    grid = Grid(shape=(nt + 1, nx), lower=(0.0, 0.0), upper=(t_final, length), names=("t", "x"),
                layout=("node", "periodic"))
    t, x = grid.mesh()
    k = 2 * np.pi / length
    exact = np.exp(-diffusivity * k**2 * t) * np.cos(k * x)
    flat = rng.choice(grid.size, size=num_data, replace=False)
    it, ix = np.unravel_index(flat, grid.shape)
    y = exact[it, ix] + sigma * rng.standard_normal(num_data)
    lik = Gaussian(lambda u, theta: u[it, ix], y, sigma=sigma)
    post = Posterior(PDEPrior(heat_equation(diffusivity), grid, beta=beta), lik, Params())
    return Problem(posterior=post, u0=jnp.zeros(grid.shape, dtype), theta0={},
                   truth={"u": exact}, data={"it": it, "ix": ix, "y": y, "sigma": sigma},
                   settings=dict(nx=nx, nt=nt, t_final=t_final, diffusivity=diffusivity, num_data=num_data,
                                 sigma=sigma, beta=beta, seed=seed))
