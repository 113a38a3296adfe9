"""The initial condition of the heat equation from the final state (Zhang et al., "BiLO: Bilevel Local Operator
Learning for PDE inverse problems", appendix D.4), for BiLO, the PINN and bodil's ODIL on the same data.

    u_t = D u_xx,  x in (0, 1), t in (0, 1],  u(x, 0) = f(x),  u(0, t) = u(1, t) = 0,

with ``D`` known; infer ``f`` from ``u(x_j, 1)`` at ``n_data`` equally spaced points (ends included), noise sd
``noise``. The text of the paper does not keep its formulas; bodil's choices: ``D = 0.01``, truth the hat
``f(x) = 1 - |2 x - 1|``, initial guess ``f_0(x) = sin(pi x)``. Networks as in appendix D.4: the function is
``f = softplus(f_raw) x (1 - x)`` (zero at the walls, non-negative), the local operator
``u = u_raw(t, x, a) x (1 - x) t + a`` with the auxiliary variable ``a = f(x)``, so that ``u(x, 0) = f(x)`` and
the wall values hold exactly (the PINN: the same with ``u_raw(t, x)``). Residual points: the ``n_res x n_res``
node grid of ``[0, 1]^2``; regulariser ``w_reg mean f'(x)^2`` at ``n_reg`` points (the paper: none without noise,
1e-3 with noise).

Reference solution (``solve_heat``): second-order differences on ``nx_ref`` intervals, integrated exactly in
time in the sine eigenbasis of the discrete Laplacian (``u(t) = S exp(t D Lambda) S^T f``), in JAX.

ODIL (``odil_posterior``): the Crank-Nicolson residual of ``bodil.residuals`` on the same node grid; its field at
``t = 0`` is the inferred initial condition; the wall values as a second block, the regulariser on ``u(., 0)``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import integer, positive, seed_words
from ..grid import Grid
from ..likelihood import Gaussian
from ..posterior import Posterior
from ..prior import Params, PDEPrior
from ..stencil import forward_difference
from . import functions as F
from .cases import grid_points, interpolate_x, odil_residual as fisher_kpp_residual
from .cases_poisson import FunctionCase

DIFFUSIVITY = 0.01


def truth(x):
    """The hat ``f(x) = 1 - |2 x - 1|``."""
    return 1.0 - jnp.abs(2.0 * jnp.asarray(x) - 1.0)


def initial_guess(x):
    """``f_0(x) = sin(pi x)``."""
    return jnp.sin(jnp.pi * jnp.asarray(x))


def u_transform(z, raw, p):
    """``u = u_raw x (1 - x) t + a`` at ``z = (t, x)`` with ``a = p[0]`` the initial value ``f(x)``."""
    return raw * z[1] * (1.0 - z[1]) * z[0] + p[0]


def f_transform(y, raw):
    """``f = softplus(f_raw) x (1 - x)``."""
    return jax.nn.softplus(raw) * y[0] * (1.0 - y[0])


def make_operator(diffusivity: float = DIFFUSIVITY):
    """``r = u_t - D u_xx`` at ``z = (t, x)`` (the function ``f`` enters through ``u`` only)."""
    def operator(u, f, z):
        e_t, e_x = jnp.eye(2, dtype=z.dtype)
        u_t = jax.jvp(u, (z,), (e_t,))[1]
        u_xx = jax.jvp(lambda y: jax.jvp(u, (y,), (e_x,))[1], (z,), (e_x,))[1]
        return u_t - diffusivity * u_xx
    return operator


def solve_heat(initial, times, diffusivity: float = DIFFUSIVITY):
    """``u_t = D u_xx`` with zero walls on the nodes ``x_i = i / n`` from ``u(., 0) = initial`` (module docstring).

    Args:
        initial: the initial values at the ``n + 1`` nodes (the wall values are ignored: zero).
        times: output times ``>= 0``.
        diffusivity: ``D``.

    Returns:
        Array ``(len(times), n + 1)``.
    """
    f = jnp.asarray(initial)
    n = f.shape[0] - 1
    if f.ndim != 1 or n < 2:
        raise ValueError(f"solve_heat: initial must be 1-D with at least 3 nodes, got shape {f.shape}.")
    times = jnp.asarray(np.atleast_1d(np.asarray(times, float)), f.dtype)
    if not bool(jnp.all(times >= 0)):
        raise ValueError("solve_heat: times must be non-negative (the backward heat equation is ill-posed).")
    return _solve_heat(f, times, jnp.asarray(diffusivity, f.dtype))


@jax.jit
def _solve_heat(f, times, diffusivity):
    n = f.shape[0] - 1
    k = jnp.arange(1, n, dtype=f.dtype)
    basis = jnp.sin(jnp.pi * jnp.outer(k, k) / n)          # S_jk = sin(j k pi / n), S S = (n / 2) I
    lam = -4.0 * n**2 * jnp.sin(0.5 * jnp.pi * k / n) ** 2   # eigenvalues of the second difference
    coef = (2.0 / n) * basis @ f[1:-1]
    inner = (jnp.exp(diffusivity * times[:, None] * lam[None, :]) * coef[None, :]) @ basis
    zeros = jnp.zeros((times.shape[0], 1), f.dtype)
    return jnp.concatenate([zeros, inner, zeros], axis=1)


@dataclasses.dataclass(frozen=True, eq=False)
class HeatCase(FunctionCase):
    """The heat case (``f`` of ``x``, coordinates ``(t, x)``); ``grid`` is the ``(t, x)`` node grid of the
    collocation points, where the error of the field is measured."""

    grid: Grid = None

    def reference(self, f_eval) -> np.ndarray:
        """The reference solution on ``grid`` for ``f`` given on ``x_eval``, shape ``grid.shape``."""
        u = solve_heat(jnp.asarray(f_eval), self.grid.coordinates("t"), self.settings["D"])
        return np.asarray(interpolate_x(u, self.grid.coordinates("x")))


def heat_initial_condition(*, noise: float = 0.0, seed=0, n_res: int = 51, n_data: int = 51, n_reg: int = 101,
                           w_reg: float = 0.0, diffusivity: float = DIFFUSIVITY, nx_ref: int = 1000) -> HeatCase:
    """Zhang et al., appendix D.4: the initial condition ``f`` from ``u(., 1)`` at ``n_data`` points.

    Args:
        noise: Gaussian noise sd.
        seed: integer or ``jax.random`` key of the noise.
        n_res: residual grid ``n_res x n_res`` (nodes) in ``(t, x)`` (the paper: 51).
        n_data: data points at ``t = 1`` (the paper: 51).
        n_reg: regulariser points in ``x`` (the paper: 101).
        w_reg: weight of ``mean f'^2``.
        diffusivity: ``D``.
        nx_ref: intervals of the reference solve.

    Returns:
        ``HeatCase``.
    """
    positive("heat_initial_condition", "noise", noise, allow_zero=True)
    positive("heat_initial_condition", "diffusivity", diffusivity)
    n_res = integer("heat_initial_condition", "n_res", n_res, 3)
    n_data = integer("heat_initial_condition", "n_data", n_data, 1)
    n_reg = integer("heat_initial_condition", "n_reg", n_reg, 2)
    grid = Grid(shape=(n_res, n_res), lower=0.0, upper=1.0, names=("t", "x"), layout=("node", "node"))
    x_eval, x_data = np.linspace(0.0, 1.0, nx_ref + 1), np.linspace(0.0, 1.0, n_data)
    x_reg = np.linspace(0.0, 1.0, n_reg)[:, None]
    clean = np.interp(x_data, x_eval, np.asarray(solve_heat(truth(x_eval), [1.0], diffusivity))[0])
    rng = np.random.default_rng(seed_words("heat_initial_condition", seed))
    values = clean + noise * rng.standard_normal(n_data)
    points = np.stack([np.ones(n_data), x_data], axis=1)
    problem = F.FunctionProblem(make_operator(diffusivity), grid_points(grid), points, values, x_reg, (1,),
                                w_reg=w_reg, reg="h1", name="u0", monitor=np.array([[0.25], [0.5]]), coords=("t", "x"))
    case = HeatCase(problem, x_eval, float(noise), clean, (), np.asarray(initial_guess(x_reg[:, 0])),
                    dict(noise=float(noise), n_res=n_res, n_data=n_data, n_reg=n_reg, w_reg=float(w_reg),
                         D=float(diffusivity), nx_ref=nx_ref), grid)
    u0 = case.reference(initial_guess(x_eval))
    return dataclasses.replace(case, pretrain=(grid_points(grid), u0.ravel()))


def metrics(case: HeatCase, f_eval, u_grid, data_loss: float | None = None) -> dict[str, float]:
    """``err_f``, ``max_f``: relative L2 and largest absolute error of ``f`` on ``x_eval``; ``err_u``: relative L2
    error of the field on ``case.grid`` against the reference solve from the inferred ``f``; ``err_data`` as in
    ``bodil.bilo.cases_poisson.metrics``."""
    f_eval, u_grid = np.asarray(f_eval, float), np.asarray(u_grid, float)
    case.grid.check_field(u_grid, "metrics: field")
    f_true = np.asarray(truth(case.x_eval))
    ref = case.reference(f_eval)
    out = {"err_f": float(np.linalg.norm(f_eval - f_true) / np.linalg.norm(f_true)),
           "max_f": float(np.max(np.abs(f_eval - f_true))),
           "err_u": float(np.linalg.norm(u_grid - ref) / np.linalg.norm(ref))}
    if data_loss is not None and case.noise > 0:
        out["err_data"] = (float(data_loss) - case.noise**2) / case.noise**2
    return out


def model_metrics(case: HeatCase, model, data_loss: float | None = None) -> dict[str, float]:
    """``metrics`` of a trained ``bodil.bilo.functions.FunctionModel`` (BiLO or PINN)."""
    field = np.asarray(model.field(grid_points(case.grid))).reshape(case.grid.shape)
    return metrics(case, model.function(case.x_eval[:, None]), field, data_loss)


# ---------------------------------------------------------------------------------------------- ODIL
def odil_posterior(case: HeatCase, *, beta: float = 1e6, beta_conditions: float = 1e6, sigma=None,
                   dtype=None) -> tuple[Posterior, Any]:
    """ODIL's posterior over the field on ``case.grid`` (its first row is the initial condition) and its start.

    Crank-Nicolson residual (weight ``beta``, mean), wall values (``beta_conditions``), Gaussian likelihood at
    ``t = 1`` with ``sigma`` (default ``max(noise, 1e-3)``), and the regulariser on ``u(., 0)`` weighted as in
    ``bodil.bilo.cases_poisson.odil_posterior``. The start is the reference solution from ``f_0``.
    """
    grid = case.grid
    sigma = max(case.noise, 1e-3) if sigma is None else float(sigma)
    n_data = case.problem.data_points.shape[0]
    weights = interpolate_x(jnp.eye(grid.shape[1]), case.problem.data_points[:, 1])
    scale = float(np.sqrt(n_data * case.problem.w_reg / (2.0 * sigma**2 * beta)))
    prior = PDEPrior(functools.partial(_odil_residual, scale=scale), grid, beta, initial=_odil_walls,
                     beta_initial=beta_conditions)
    lik = Gaussian(lambda u, theta: u[-1] @ weights.astype(u.dtype), case.problem.data_values, sigma)
    post = Posterior(prior, lik, Params(D=case.settings["D"], rho=0.0))
    dtype = dtype or jnp.zeros(()).dtype
    return post, jnp.asarray(case.pretrain[1].reshape(grid.shape), dtype)


def _odil_residual(u, theta, grid, *, scale):
    out = fisher_kpp_residual(u, theta, grid)  # Crank-Nicolson of u_t = D u_xx + rho u (1 - u) with rho = 0
    if scale > 0:
        out["smoothness"] = scale * forward_difference(u[0], 0, False) / grid.spacing[1]
    return out


def _odil_walls(u, theta, grid):
    return {"walls": jnp.concatenate([u[:, 0], u[:, -1]])}


def odil_metrics(case: HeatCase, u, data_loss: float | None = None) -> dict[str, float]:
    """``metrics`` of an ODIL field on ``case.grid`` (its first row, interpolated, is the inferred ``f``)."""
    f = np.interp(case.x_eval, case.grid.coordinates("x"), np.asarray(u)[0])
    return metrics(case, f, u, data_loss)
