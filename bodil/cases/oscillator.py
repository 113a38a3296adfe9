"""Harmonic oscillator with unknown initial conditions (Amoudruz et al. 2025, sec. 3.1, eq. 13-15).

``x' = v``, ``v' = -omega^2 x`` on ``(0, T)``, ``T = 10``, ``N = 64`` intervals; 20 positions measured at
times drawn uniformly in ``(0, T/2)`` with Gaussian noise ``sigma = 0.1`` around the exact solution for
``x(0) = 0.5``, ``v(0) = 0.2``, ``omega = 1``; prior ``beta = 1e4``; observations by linear interpolation.

The paper's prior leaves the initial state free (the field prior is improper: the data fix it). With
``ic_sigma`` an initial-condition term ``(x(0)^2 + v(0)^2) / (2 ic_sigma^2)`` makes it proper, so that the
evidence is defined.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..grid import Grid
from ..likelihood import Gaussian
from ..posterior import Posterior
from ..prior import Params, PDEPrior, Uniform
from ..residuals import harmonic_oscillator
from .problem import Problem


def exact_solution(t, x0: float, v0: float, omega: float):
    """``x(t), v(t)`` of the oscillator."""
    t = np.asarray(t, float)
    x = x0 * np.cos(omega * t) + v0 / omega * np.sin(omega * t)
    v = -x0 * omega * np.sin(omega * t) + v0 * np.cos(omega * t)
    return x, v


def oscillator(*, n: int = 64, t_final: float = 10.0, num_data: int = 20, sigma: float = 0.1,
               beta: float = 1e4, x0: float = 0.5, v0: float = 0.2, omega: float = 1.0,
               infer_omega: bool = False, omega2_prior=(0.5, 1.5), ic_sigma: float | None = None, seed: int = 0,
               dtype=None) -> Problem:
    """Build the oscillator problem. With ``infer_omega`` the parameter ``omega2`` gets a uniform prior; with
    ``ic_sigma`` the initial state gets the prior ``N(0, ic_sigma^2)`` per component."""
    rng = np.random.default_rng(seed)
    grid = Grid(shape=(n + 1,), lower=(0.0,), upper=(t_final,), names=("t",), layout=("node",))
    t_data = np.sort(rng.uniform(0.0, t_final / 2, size=num_data))
    x_true, _ = exact_solution(t_data, x0, v0, omega)
    y = x_true + sigma * rng.standard_normal(num_data)
    interp = grid.interpolator(t_data)
    lik = Gaussian(lambda u, theta: interp(u["x"]), y, sigma=sigma)
    params = Params(omega2=Uniform(*omega2_prior)) if infer_omega else Params(omega2=omega**2)
    initial = None if ic_sigma is None else (lambda u, theta, grid: {"x0": u["x"][:1], "v0": u["v"][:1]})
    prior = PDEPrior(harmonic_oscillator("omega2"), grid, beta=beta, initial=initial,
                     beta_initial=None if ic_sigma is None else 0.5 / ic_sigma**2)
    post = Posterior(prior, lik, params)
    tn = grid.coordinates("t")
    xs, vs = exact_solution(tn, x0, v0, omega)
    u0 = {"x": jnp.zeros(n + 1, dtype), "v": jnp.zeros(n + 1, dtype)}
    theta0 = {"omega2": jnp.asarray(0.5 * sum(omega2_prior), dtype)} if infer_omega else {}
    return Problem(posterior=post, u0=u0, theta0=theta0,
                   truth={"t": tn, "x": xs, "v": vs, "omega2": omega**2},
                   data={"t": t_data, "y": y, "sigma": sigma},
                   settings=dict(n=n, t_final=t_final, num_data=num_data, sigma=sigma, beta=beta, x0=x0, v0=v0,
                                 omega=omega, infer_omega=infer_omega, ic_sigma=ic_sigma, seed=seed))
