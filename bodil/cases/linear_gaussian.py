"""A linear-Gaussian problem with a closed-form posterior and evidence, for testing samplers and Laplace.

The 1-D periodic heat equation with a known initial condition and an unknown constant source ``s``:

    u_t = D u_xx + s,   u(0, x) = cos(2 pi x),   s ~ N(0, s_scale^2),

discretised by Crank-Nicolson (``bodil.residuals.reaction_diffusion`` with ``rho = 0``) and weighted by
``-log p(u | s) = lambda_PDE sum r_PDE^2 + lambda_IC sum r_IC^2`` (``reduction="sum"``). ``num_data``
nodes are measured with Gaussian noise ``sigma``. Every term is quadratic in ``x = (u, s)``, so

    -log p(x | D) = 0.5 x^T Q x - b^T x + const,    x | D ~ N(Q^{-1} b, Q^{-1}),

and with the PDE prior normalised (its minimum over ``u`` is 0 for every ``s``)

    u | s ~ N(a + c s, P^{-1}),   P = 2 lambda_PDE A^T A + 2 lambda_IC E^T E,
    log p(D) = log N(y; H a, H (P^{-1} + s_scale^2 c c^T) H^T + sigma^2 I).

``closed_form`` assembles ``A`` (the Crank-Nicolson matrix), ``E`` (picks ``u(0, .)``) and ``H`` (picks the
measured nodes) by hand with numpy, independently of the JAX residuals, and returns the posterior mean,
covariance and log-evidence.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..grid import Grid
from ..likelihood import Gaussian
from ..posterior import Posterior
from ..prior import Normal, Params, PDEPrior
from ..residuals import reaction_diffusion
from .problem import Problem


def linear_gaussian(*, nx: int = 8, nt: int = 8, t_final: float = 0.5, diffusivity: float = 0.05,
                    num_data: int = 10, sigma: float = 0.1, lambda_pde: float = 1.0, lambda_ic: float = 10.0,
                    source: float = 0.3, s_scale: float = 1.0, seed: int = 0, dtype=None) -> Problem:
    """Build the problem; ``Problem.truth["closed_form"]`` holds the exact posterior and evidence."""
    rng = np.random.default_rng(seed)
    grid = Grid(shape=(nt + 1, nx), lower=(0.0, 0.0), upper=(t_final, 1.0), names=("t", "x"),
                layout=("node", "periodic"))
    x = grid.coordinates("x")
    g = np.cos(2 * np.pi * x)

    def initial(u, theta, grid):
        return {"ic": u[0] - jnp.asarray(g, u.dtype)}

    prior = PDEPrior(reaction_diffusion(diffusivity, 0.0, source="s"), grid, beta=lambda_pde, initial=initial,
                     beta_initial=lambda_ic, reduction="sum")
    A, ones, E = _matrices(grid, diffusivity)
    u_true = _solve_forward(A, E, g, source, nx)
    flat = rng.choice(grid.size, size=num_data, replace=False)
    it, ix = np.unravel_index(flat, grid.shape)
    y = u_true[flat] + sigma * rng.standard_normal(num_data)
    lik = Gaussian(lambda u, theta: u[it, ix], y, sigma=sigma)
    post = Posterior(prior, lik, Params(s=Normal(0.0, s_scale)))
    H = np.zeros((num_data, grid.size))
    H[np.arange(num_data), flat] = 1.0
    exact = closed_form(A, ones, E, H, g, y, sigma, lambda_pde, lambda_ic, s_scale)
    return Problem(posterior=post, u0=jnp.zeros(grid.shape, dtype), theta0={"s": jnp.asarray(0.0, dtype)},
                   truth={"u": u_true.reshape(grid.shape), "s": source, "closed_form": exact},
                   data={"it": it, "ix": ix, "y": y, "sigma": sigma},
                   settings=dict(nx=nx, nt=nt, t_final=t_final, diffusivity=diffusivity, num_data=num_data,
                                 sigma=sigma, lambda_pde=lambda_pde, lambda_ic=lambda_ic, s_scale=s_scale,
                                 seed=seed))


def _matrices(grid: Grid, diffusivity: float):
    """Crank-Nicolson rows ``A u - s`` of the periodic heat equation and the initial-state selector ``E``."""
    nt1, nx = grid.shape
    dt, h = grid.spacing
    lap = (np.roll(np.eye(nx), 1, axis=1) - 2 * np.eye(nx) + np.roll(np.eye(nx), -1, axis=1)) * diffusivity / h**2
    A = np.zeros(((nt1 - 1) * nx, nt1 * nx))
    for n in range(nt1 - 1):
        rows = slice(n * nx, (n + 1) * nx)
        A[rows, n * nx:(n + 1) * nx] = -np.eye(nx) / dt - 0.5 * lap
        A[rows, (n + 1) * nx:(n + 2) * nx] = np.eye(nx) / dt - 0.5 * lap
    E = np.zeros((nx, nt1 * nx))
    E[:, :nx] = np.eye(nx)
    return A, np.ones((nt1 - 1) * nx), E


def _solve_forward(A, E, g, source, nx):
    """The field with zero PDE and IC residuals: ``[A; E] u = [s 1; g]``."""
    B = np.vstack([E, A])
    rhs = np.concatenate([g, source * np.ones(A.shape[0])])
    return np.linalg.solve(B, rhs)


def closed_form(A, ones, E, H, g, y, sigma, lambda_pde, lambda_ic, s_scale) -> dict:
    """Exact posterior of ``x = (u, s)`` and the evidence ``log p(D)`` (see the module docstring)."""
    n = A.shape[1]
    As = np.hstack([A, -ones[:, None]])                  # r_pde = As x
    Es = np.hstack([E, np.zeros((E.shape[0], 1))])      # r_ic = Es x - g
    Hs = np.hstack([H, np.zeros((H.shape[0], 1))])
    Q = 2 * lambda_pde * As.T @ As + 2 * lambda_ic * Es.T @ Es + Hs.T @ Hs / sigma**2
    Q[n, n] += 1.0 / s_scale**2
    b = 2 * lambda_ic * Es.T @ g + Hs.T @ y / sigma**2
    cov = np.linalg.inv(Q)
    mean = cov @ b
    P = 2 * lambda_pde * A.T @ A + 2 * lambda_ic * E.T @ E
    P_inv = np.linalg.inv(P)
    a = P_inv @ (2 * lambda_ic * E.T @ g)
    c = P_inv @ (2 * lambda_pde * A.T @ ones)
    m = H.shape[0]
    S = H @ (P_inv + s_scale**2 * np.outer(c, c)) @ H.T + sigma**2 * np.eye(m)
    resid = y - H @ a
    _, logdet = np.linalg.slogdet(S)
    log_evidence = -0.5 * (resid @ np.linalg.solve(S, resid) + logdet + m * np.log(2 * np.pi))
    return {"mean": mean, "cov": cov, "log_evidence": float(log_evidence), "n_field": n,
            "field_prior_cov": P_inv}
