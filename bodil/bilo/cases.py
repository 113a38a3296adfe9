"""The Fisher-KPP inverse problem of Zhang et al., "BiLO: Bilevel Local Operator Learning for PDE inverse problems"
(sec. 3.1, appendix D.1), for BiLO, the PINN and bodil's ODIL on the same data.

    u_t = D u_xx + rho u (1 - u),  x in (0, 1), t in (0, 1],  u(x, 0) = sin(pi x)^2 / 2,  u(0, t) = u(1, t) = 0.

Infer ``(D, rho)`` from ``u(x_j, 1)`` at 9 equally spaced points (ends included) with Gaussian noise of sd
``noise``. The authors infer scale factors of base values kept in their data file (truth 2, initial guess 1
for both); bodil uses ``D = 0.01 * scale`` and ``rho = 1 * scale``: truth ``(0.02, 2)``, initial guess
``(0.01, 1)``, and trains the network on ``p = theta / theta_0``. The network is
``u = u_0(x) + u_raw x (1 - x) t`` (appendix D.1), which holds the initial and boundary conditions exactly;
residual points are the 51 x 51 grid of ``[0, 1]^2`` (appendix D.1; smaller with ``n_res``).

Reference solutions: bodil's forward solvers (``bodil.forward``) have periodic or no-flux walls, and this
problem has Dirichlet walls, so the reference is a method-of-lines solve here: second-order differences on
``nx_ref`` intervals with ``u = 0`` at the ends, classical Runge-Kutta in time with steps of at most ``dt_ref``
(stable while ``dt_ref (4 D / h^2 + rho) < 2.78``). It is written in JAX so that it is differentiable in
``(D, rho)`` (the upper-level gradient test and the Bayesian reference need that).

The ODIL problem (``odil_posterior``) is the Crank-Nicolson residual of ``bodil.residuals`` on the interior
nodes of the same 51 x 51 node grid, with the initial and boundary values as a second block.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import integer, positive, seed_words
from ..forward.fd import march
from ..grid import Grid
from ..likelihood import Gaussian
from ..posterior import Posterior
from ..prior import Params, PDEPrior, Uniform
from ..residuals.reaction_diffusion import crank_nicolson
from . import losses as L

TRUTH = {"D": 0.02, "rho": 2.0}
THETA0 = {"D": 0.01, "rho": 1.0}


def initial_profile(x):
    """``u_0(x) = sin(pi x)^2 / 2``."""
    return 0.5 * jnp.sin(jnp.pi * x) ** 2


def hard_conditions(z, raw):
    """``u = u_0(x) + u_raw x (1 - x) t`` for ``z = (t, x)``: exact initial and boundary values."""
    t, x = z[0], z[1]
    return initial_profile(x) + raw * x * (1.0 - x) * t


def fisher_kpp_operator(u, z, theta):
    """``r = u_t - D u_xx - rho u (1 - u)`` at ``z = (t, x)`` (forward-mode derivatives of ``u``)."""
    e_t, e_x = jnp.eye(2, dtype=z.dtype)
    u_z, u_t = jax.jvp(u, (z,), (e_t,))
    _, u_xx = jax.jvp(lambda y: jax.jvp(u, (y,), (e_x,))[1], (z,), (e_x,))
    return u_t - theta["D"] * u_xx - theta["rho"] * u_z * (1.0 - u_z)


def solve_fisher_kpp(theta, times, *, nx_ref: int = 200, dt_ref: float = 1e-4, dtype=None):
    """Reference solution at ``times`` on the nodes ``x_j = j / nx_ref`` (method of lines, RK4; module docstring).

    Args:
        theta: ``{"D": ..., "rho": ...}`` (numbers or traced values: differentiable).
        times: increasing output times in ``[0, 1]`` (Python numbers).
        nx_ref: number of space intervals.
        dt_ref: largest time step.
        dtype: floating dtype (default: that of ``theta["D"]``, else JAX's default).

    Returns:
        Array ``(len(times), nx_ref + 1)``.

    Raises:
        ValueError: a concrete ``(D, rho)`` for which ``dt_ref`` is beyond the RK4 stability bound.
    """
    nx_ref = integer("solve_fisher_kpp", "nx_ref", nx_ref, 2)
    d, rho = theta["D"], theta["rho"]
    dtype = dtype or jnp.result_type(d, 0.0)
    try:
        rate_bound = 4.0 * float(d) * nx_ref**2 + abs(float(rho))
    except (TypeError, jax.errors.ConcretizationTypeError):  # traced values: the caller chose dt_ref
        rate_bound = 0.0
    if dt_ref * rate_bound >= 2.78:
        raise ValueError(f"solve_fisher_kpp: dt_ref = {dt_ref:g} is beyond the RK4 stability bound "
                         f"{2.78 / rate_bound:.3g} for D = {float(d):g} on {nx_ref} intervals; lower dt_ref.")
    times = tuple(float(t) for t in np.atleast_1d(np.asarray(times, float)))
    return _solve(jnp.asarray(d, dtype), jnp.asarray(rho, dtype), times, nx_ref, float(dt_ref))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _solve(d, rho, times, nx_ref, dt_ref):
    dtype, h = d.dtype, 1.0 / nx_ref
    x = jnp.linspace(0.0, 1.0, nx_ref + 1, dtype=dtype)

    def rate(v):  # v: interior values; u = 0 at both ends
        full = jnp.concatenate([jnp.zeros(1, dtype), v, jnp.zeros(1, dtype)])
        return d * (full[2:] - 2 * full[1:-1] + full[:-2]) / h**2 + rho * v * (1.0 - v)

    def advance(v, dt, n):
        def rk4(_, w):
            k1 = rate(w)
            k2 = rate(w + 0.5 * dt * k1)
            k3 = rate(w + 0.5 * dt * k2)
            k4 = rate(w + dt * k3)
            return w + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        return jax.lax.fori_loop(0, n, rk4, v)

    v0 = initial_profile(x)[1:-1]
    spans = np.diff(np.concatenate([[0.0], times]))
    if times[0] > 0 and np.allclose(spans, spans[0]):  # equal intervals: one compiled step in a scan
        n = max(1, int(np.ceil(spans[0] / dt_ref - 1e-9)))
        step = jnp.asarray(spans[0] / n, dtype)
        _, inner = jax.lax.scan(lambda v, _: (advance(v, step, n),) * 2, v0, None, length=len(times))
    elif times[0] == 0 and len(times) > 1 and np.allclose(spans[1:], spans[1]):
        n = max(1, int(np.ceil(spans[1] / dt_ref - 1e-9)))
        step = jnp.asarray(spans[1] / n, dtype)
        _, rest = jax.lax.scan(lambda v, _: (advance(v, step, n),) * 2, v0, None, length=len(times) - 1)
        inner = jnp.concatenate([v0[None], rest])
    else:
        inner = march(advance, v0, np.asarray(times), dt_ref, 10_000_000, lambda n: f"solve_fisher_kpp: {n} steps")
    zeros = jnp.zeros((inner.shape[0], 1), dtype)
    return jnp.concatenate([zeros, inner, zeros], axis=1)


def interpolate_x(u_ref, x):
    """Linear interpolation in ``x`` of reference rows ``(n_times, nx_ref + 1)`` at ``x`` (shape ``(m,)``)."""
    nodes = jnp.linspace(0.0, 1.0, u_ref.shape[-1], dtype=u_ref.dtype)
    return jax.vmap(lambda row: jnp.interp(jnp.asarray(x, u_ref.dtype), nodes, row))(u_ref)


@dataclasses.dataclass(frozen=True, eq=False)
class FisherKPPCase:
    """The case: the ``PointwiseProblem``, evaluation grid, truth, initial guess, data, pre-training target.

    Attributes:
        problem: ``bodil.bilo.losses.PointwiseProblem`` (collocation on ``grid``, data at ``t = 1``).
        grid: the node grid ``(t, x)`` of the collocation points; errors are measured on it.
        truth, theta0: physical parameters.
        noise: noise sd of the data.
        clean: the noise-free data.
        pretrain: ``(points, values)``: the reference solution at ``theta0`` on ``grid`` (pre-training).
        settings: the numbers that define the case.
    """

    problem: L.PointwiseProblem
    grid: Grid
    truth: dict
    theta0: dict
    noise: float
    clean: np.ndarray
    pretrain: tuple
    settings: dict

    def reference(self, theta, *, nx_ref: int | None = None) -> np.ndarray:
        """The reference solution at ``theta`` on ``grid``, shape ``grid.shape``."""
        times = self.grid.coordinates("t")
        u = solve_fisher_kpp(theta, times, nx_ref=nx_ref or self.settings["nx_ref"], dt_ref=self.settings["dt_ref"])
        return np.asarray(interpolate_x(u, self.grid.coordinates("x")))


def grid_points(grid: Grid) -> np.ndarray:
    """All points of a ``(t, x)`` grid as rows ``(t, x)``, time-major (row-major in ``grid.shape``)."""
    t, x = np.meshgrid(grid.coordinates("t"), grid.coordinates("x"), indexing="ij")
    return np.stack([t.ravel(), x.ravel()], axis=1)


def fisher_kpp(*, noise: float = 0.0, seed=0, n_res: int = 51, n_data: int = 9, truth=None, theta0=None,
               nx_ref: int = 200, dt_ref: float = 1e-4) -> FisherKPPCase:
    """Zhang et al., sec. 3.1: Fisher-KPP, ``(D, rho)`` from ``n_data`` points at ``t = 1`` with noise sd ``noise``.

    Args:
        noise: Gaussian noise sd (the paper: 0, 1e-3, 1e-2).
        seed: integer or ``jax.random`` key of the noise.
        n_res: residual grid ``n_res x n_res`` (nodes, ends included) in ``(t, x)``.
        n_data: data points, equally spaced in ``[0, 1]`` at ``t = 1``.
        truth, theta0: ``{"D", "rho"}``; default ``(0.02, 2)`` and ``(0.01, 1)``.
        nx_ref, dt_ref: reference solver resolution (``solve_fisher_kpp``).

    Returns:
        ``FisherKPPCase``.
    """
    positive("fisher_kpp", "noise", noise, allow_zero=True)
    n_res = integer("fisher_kpp", "n_res", n_res, 3)
    n_data = integer("fisher_kpp", "n_data", n_data, 1)
    truth = dict(TRUTH if truth is None else truth)
    theta0 = dict(THETA0 if theta0 is None else theta0)
    grid = Grid(shape=(n_res, n_res), lower=0.0, upper=1.0, names=("t", "x"), layout=("node", "node"))
    x_data = np.linspace(0.0, 1.0, n_data)
    times = grid.coordinates("t")  # the same output times for both solves: one compiled solver
    clean = np.asarray(interpolate_x(solve_fisher_kpp(truth, times, nx_ref=nx_ref, dt_ref=dt_ref), x_data))[-1]
    rng = np.random.default_rng(seed_words("fisher_kpp", seed))
    values = clean + noise * rng.standard_normal(n_data)
    points = np.stack([np.ones(n_data), x_data], axis=1)
    problem = L.PointwiseProblem(fisher_kpp_operator, grid_points(grid), points, values, ("D", "rho"),
                                 (theta0["D"], theta0["rho"]), ("t", "x"))
    u0 = np.asarray(interpolate_x(solve_fisher_kpp(theta0, times, nx_ref=nx_ref, dt_ref=dt_ref),
                                  grid.coordinates("x")))
    return FisherKPPCase(problem, grid, truth, theta0, float(noise), clean, (grid_points(grid), u0.ravel()),
                         dict(noise=float(noise), n_res=n_res, n_data=n_data, nx_ref=nx_ref, dt_ref=dt_ref))


def network_field(net, case: FisherKPPCase, p) -> np.ndarray:
    """The network solution on ``case.grid`` at scaled parameters ``p``, shape ``grid.shape``."""
    return np.asarray(L.predict(net, jnp.asarray(p), grid_points(case.grid))).reshape(case.grid.shape)


def metrics(case: FisherKPPCase, theta: dict, field, data_loss: float | None = None) -> dict[str, float]:
    """Relative errors of ``D`` and ``rho``, relative L2 error of ``field`` (on ``case.grid``) against the
    reference solve at ``theta``, and the relative data-loss error ``(L_dat - noise^2) / noise^2`` (sec. 3.1)
    when ``noise > 0`` and ``data_loss`` is given. ``err_u`` is NaN when ``D <= 0`` (no forward problem)."""
    field = np.asarray(field)
    case.grid.check_field(field, "metrics: field")
    out = {f"err_{k}": abs(float(theta[k]) - v) / abs(v) for k, v in case.truth.items()}
    if float(theta["D"]) > 0:
        ref = case.reference(theta)
        out["err_u"] = float(np.linalg.norm(field - ref) / np.linalg.norm(ref))
    else:  # backward diffusion: no reference solution to compare with
        out["err_u"] = float("nan")
    if data_loss is not None and case.noise > 0:
        out["err_data"] = (float(data_loss) - case.noise**2) / case.noise**2
    return out


# ---------------------------------------------------------------------------------------------- ODIL
def odil_residual(u, theta, grid):
    """Crank-Nicolson residual of ``u_t = D u_xx + rho u (1 - u)`` on the interior nodes (Dirichlet ends)."""
    h, dt = grid.spacing[1], grid.spacing[0]
    inner = u[:, 1:-1]
    rate = theta["D"] * (u[:, 2:] - 2 * inner + u[:, :-2]) / h**2 + theta["rho"] * inner * (1.0 - inner)
    return {"pde": crank_nicolson(inner, rate, dt)}


def odil_conditions(u, theta, grid):
    """Initial values ``u(x, 0) - u_0(x)`` and wall values ``u(0, t)``, ``u(1, t)``."""
    x = jnp.asarray(grid.coordinates("x"), u.dtype)
    return {"initial": u[0] - initial_profile(x), "walls": jnp.concatenate([u[1:, 0], u[1:, -1]])}


def odil_posterior(case: FisherKPPCase, *, beta: float = 1e4, beta_conditions: float = 1e6, sigma=None,
                   dtype=None) -> tuple[Posterior, Any, dict]:
    """ODIL's posterior for the same data on ``case.grid``, and its starting point ``(u0, theta0)``.

    ``beta`` weighs the discrete PDE residual (``reduction="mean"``), ``beta_conditions`` the initial and wall
    values; the Gaussian likelihood uses ``sigma`` (default ``max(noise, 1e-3)``). ``(D, rho)`` have uniform
    priors on ``[1e-3, 0.2] x [0.1, 10]``. The starting field is the reference solution at ``theta0``.
    """
    grid = case.grid
    x_data = np.asarray(case.problem.data_points[:, 1])
    weights = jnp.asarray(interpolate_x(jnp.eye(grid.shape[1]), x_data))  # (nx, n_data): u[-1] @ weights
    if not np.allclose(grid.coordinates("x") @ np.asarray(weights), x_data):
        raise ValueError("odil_posterior: the data points must lie in [0, 1].")
    sigma = max(case.noise, 1e-3) if sigma is None else sigma

    def observe(u, theta):
        return u[-1] @ weights.astype(u.dtype)

    prior = PDEPrior(odil_residual, grid, beta, initial=odil_conditions, beta_initial=beta_conditions)
    lik = Gaussian(observe, case.problem.data_values, sigma)
    post = Posterior(prior, lik, Params(D=Uniform(1e-3, 0.2), rho=Uniform(0.1, 10.0)))
    dtype = dtype or jnp.zeros(()).dtype
    u0 = jnp.asarray(case.pretrain[1].reshape(grid.shape), dtype)
    return post, u0, {k: jnp.asarray(v, dtype) for k, v in case.theta0.items()}
