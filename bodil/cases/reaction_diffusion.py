"""Reaction-diffusion with an unknown initial position (Amoudruz et al. 2025, sec. 3.3, eq. 19-24).

``u_t = div(D grad u) + rho u (1 - u)`` on the periodic unit square, ``rho = 8``, ``T = 0.5``, ``D`` in
``{0.005, 0.1}`` from a thresholded random field (case 1: low frequencies, case 2: higher ones), initial
Gaussian bump (eq. 22, ``R = 1/16``) at ``(2/3, 1/3)``. Data: at ``t = T`` every pixel is 1 with probability
``S((u - 0.5) / sigma)`` (eq. 20-21). The reference solution is explicit Euler on 64^2 at the stability
limit ``dt = h^2 / (4 Dmax) = 6.1e-4``; ODIL uses 129 time nodes and the log-posterior of eq. 24 with
``(lambda_PDE, lambda_IC) = (10, 100)`` for ``sigma = 0.05`` and ``(100, 1000)`` for ``sigma = 0.01``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .. import stencil
from ..forward import cfl_time_step, solve_reaction_diffusion
from ..grid import Grid
from ..likelihood import Bernoulli
from ..posterior import Posterior
from ..prior import Params, PDEPrior, Uniform
from ..residuals import fisher_kpp, gaussian_bump, gaussian_profile
from .problem import Problem

CASE_CUTOFF = {1: 2.0, 2: 5.0}  # Gaussian filter width in wave numbers (cycles per domain)
DEFAULT_LAMBDAS = {0.05: (10.0, 100.0), 0.01: (100.0, 1000.0)}


def random_diffusivity(shape, cutoff: float, values=(0.005, 0.1), seed: int = 0) -> np.ndarray:
    """Two-valued field: Gaussian-filtered white noise (``exp(-|k|^2 / (2 cutoff^2))``) thresholded at its median."""
    rng = np.random.default_rng(seed)
    noise = np.fft.fftn(rng.standard_normal(shape))
    k2 = sum(np.meshgrid(*[(np.fft.fftfreq(n) * n) ** 2 for n in shape], indexing="ij"))
    field = np.real(np.fft.ifftn(noise * np.exp(-k2 / (2.0 * cutoff**2))))
    return np.where(field > np.median(field), values[1], values[0])


def _circular_mean(coords, weights, lower, upper):
    angle = 2 * np.pi * (coords - lower) / (upper - lower)
    mean = np.angle(np.sum(weights * np.exp(1j * angle)) / max(np.sum(weights), 1e-300)) % (2 * np.pi)
    return lower + mean / (2 * np.pi) * (upper - lower)


def _build(grid: Grid, diffusivity, *, rho, t_final, center, radius, sigma, lambdas, seed, forward_safety,
           centers, theta0, dtype, case_settings):
    space = grid.subgrid(grid.names[1:])
    truth_theta = dict(zip(centers, center))
    fine_u0 = gaussian_profile(truth_theta, grid, centers, radius)
    u_final = np.asarray(solve_reaction_diffusion(fine_u0, space, diffusivity, rho, t_final,
                                                  safety=forward_safety)[-1])
    rng = np.random.default_rng(seed + 1)
    prob = 1.0 / (1.0 + np.exp(-(u_final - 0.5) / sigma))
    y = (rng.uniform(size=prob.shape) < prob).astype(np.float64)
    lam_pde, lam_ic = lambdas if lambdas is not None else DEFAULT_LAMBDAS.get(sigma, (10.0, 100.0))
    prior = PDEPrior(fisher_kpp(diffusivity, rho), grid, beta=lam_pde, initial=gaussian_bump(centers, radius),
                     beta_initial=lam_ic, reduction="sum")
    lik = Bernoulli(lambda u, theta: u[-1], y, tau=0.5, sigma=sigma)
    params = Params(**{c: Uniform(lo, hi) for c, lo, hi in zip(centers, space.lower, space.upper)})
    post = Posterior(prior, lik, params)
    if theta0 is None:  # start at the centre of the pixels marked 1, a guess any user would make first
        w = y if y.sum() > 0 else np.ones_like(y)
        theta0 = {}
        for axis, c in enumerate(centers):
            coords = np.broadcast_to(space.mesh(axis)[0], y.shape)
            if space.periodic[axis]:
                theta0[c] = _circular_mean(coords, w, space.lower[axis], space.upper[axis])
            else:
                theta0[c] = float(np.sum(coords * w) / np.sum(w))
    theta0 = {k: jnp.asarray(v, dtype) for k, v in theta0.items()}
    init_profile = gaussian_profile(theta0, grid, centers, radius)
    u0 = solve_reaction_diffusion(jnp.asarray(init_profile, dtype), space, jnp.asarray(diffusivity, dtype), rho,
                                  t_final, times=grid.coordinates(0), safety=forward_safety)
    return Problem(posterior=post, u0=u0, theta0=theta0,
                   truth={**truth_theta, "u_final": u_final, "diffusivity": np.asarray(diffusivity)},
                   data={"y": y, "sigma": sigma},
                   settings=dict(rho=rho, t_final=t_final, radius=radius, sigma=sigma, lambda_pde=lam_pde,
                                 lambda_ic=lam_ic, seed=seed, shape=grid.shape, **case_settings))


def reaction_diffusion_2d(*, case: int = 1, sigma: float = 0.05, n: int = 64, nt: int = 129, rho: float = 8.0,
                          t_final: float = 0.5, center=(2 / 3, 1 / 3), radius: float = 1 / 16, lambdas=None,
                          seed: int = 0, theta0=None, forward_safety: float = 1.0, dtype=None) -> Problem:
    """Amoudruz et al. 2025, sec. 3.3, case 1 or 2; infer ``theta = (x0, y0)``."""
    if case not in CASE_CUTOFF:
        raise ValueError(f"reaction_diffusion_2d: case must be 1 or 2, got {case}.")
    grid = Grid(shape=(nt, n, n), lower=0.0, upper=(t_final, 1.0, 1.0), names=("t", "x", "y"),
                layout=("node", "periodic", "periodic"))
    d = random_diffusivity((n, n), CASE_CUTOFF[case], seed=seed + 100 * case)
    return _build(grid, d, rho=rho, t_final=t_final, center=center, radius=radius, sigma=sigma, lambdas=lambdas,
                  seed=seed, forward_safety=forward_safety, centers=("x0", "y0"), theta0=theta0, dtype=dtype,
                  case_settings={"case": case})


def reaction_diffusion_3d(*, n: int = 32, nt: int = 33, sigma: float = 0.05, rho: float = 8.0,
                          t_final: float = 0.5, center=(0.6, 0.4, 0.5), radius: float = 1 / 8, lambdas=None,
                          seed: int = 0, theta0=None, forward_safety: float = 1.0, dtype=None) -> Problem:
    """A 3-D analogue on the unit cube with no-flux walls (cell layout); infer ``(x0, y0, z0)``."""
    grid = Grid(shape=(nt, n, n, n), lower=0.0, upper=(t_final, 1.0, 1.0, 1.0), names=("t", "x", "y", "z"),
                layout=("node", "cell", "cell", "cell"))
    d = random_diffusivity((n, n, n), CASE_CUTOFF[1], seed=seed + 300)
    return _build(grid, d, rho=rho, t_final=t_final, center=center, radius=radius, sigma=sigma, lambdas=lambdas,
                  seed=seed, forward_safety=forward_safety, centers=("x0", "y0", "z0"), theta0=theta0, dtype=dtype,
                  case_settings={"case": "3d"})


def forward_field(problem: Problem, *, safety: float = 1.0) -> Callable[[dict], jax.Array]:
    """``theta -> u``: the forward solution from the initial bump at ``theta``, on the ODIL space-time grid.

    The same explicit scheme as ``bodil.forward.solve_reaction_diffusion`` (forward Euler, flux-form
    ``div(D grad u)``, ``dt <= 1 / (2 sum_k Dmax / h_k^2)`` times ``safety``) that made ``problem.u0``, compiled
    once for the problem so that it can be called for many ``theta``. Its PDE residual is small (the two
    schemes differ only in time stepping), which makes it a warm start for the inner solves of the mode
    approximation far from every previous solution: ``ModeApproximation(..., initial=forward_field(problem))``.

    Args:
        problem: a ``Problem`` from ``reaction_diffusion_2d`` or ``reaction_diffusion_3d``.
        safety: fraction of the forward-Euler stability bound used for the step.

    Returns:
        A jitted function of the constrained parameters ``{"x0": ..., "y0": ...}`` returning an array of the
        grid's shape ``(nt, *space)`` in the dtype of ``problem.u0``.
    """
    settings, grid = problem.settings, problem.grid
    if not {"rho", "t_final", "radius"} <= set(settings) or "diffusivity" not in problem.truth:
        raise ValueError("forward_field: the problem does not come from reaction_diffusion_2d/3d (it needs "
                         "settings rho, t_final, radius and truth['diffusivity']).")
    if not 0 < safety <= 1:
        raise ValueError(f"forward_field: safety must be in (0, 1], got {safety}.")
    space = grid.subgrid(grid.names[1:])
    centers = tuple(problem.posterior.params.priors)
    dtype = jnp.asarray(problem.u0).dtype
    d = np.broadcast_to(np.asarray(problem.truth["diffusivity"], dtype=float), space.shape)
    faces = tuple(f.astype(dtype) for f in stencil.face_diffusivities(d, space.shape, space.spacing, space.periodic))
    rho, radius = settings["rho"], settings["radius"]
    interval = settings["t_final"] / (grid.shape[0] - 1)  # the ODIL time nodes are equally spaced
    steps = max(1, math.ceil(interval / cfl_time_step(float(d.max()), space.spacing, safety) - 1e-9))
    dt = interval / steps

    def rate(u):
        return stencil.diffusion_operator(u, faces, space.periodic) + rho * u * (1.0 - u)

    def advance(u, _):
        u = jax.lax.fori_loop(0, steps, lambda i, v: v + dt * rate(v), u)
        return u, u

    @jax.jit
    def field(theta):
        th = {k: jnp.asarray(theta[k], dtype) for k in centers}
        u0 = gaussian_profile(th, grid, centers, radius).astype(dtype)
        _, us = jax.lax.scan(advance, u0, None, length=grid.shape[0] - 1)
        return jnp.concatenate([u0[None], us])

    return field
