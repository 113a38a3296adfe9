"""Poisson's equation with a variable diffusion coefficient (Zhang et al., "BiLO: Bilevel Local Operator Learning for
PDE inverse problems", sec. 3.3, appendix D.3), for BiLO, the PINN and bodil's ODIL on the same data.

    -(D(x) u'(x))' = pi^2 sin(pi x),  x in (0, 1),  u(0) = u(1) = 0,

infer ``D`` with ``D(0) = D(1) = 1`` from ``u`` at ``n_data`` equally spaced points (ends included) with Gaussian
noise of sd ``noise`` (the paper: 1e-2). Truth: the hat ``D(x) = 1 + 0.5 (1 - |2 x - 1|)``; initial guess
``D_0 = 1`` (whose solution is ``sin(pi x)``); the authors' tutorial. Networks (appendix D.3):
``u = u_raw x (1 - x)`` and ``D = 1 + D_raw x (1 - x)``, which hold the boundary values exactly; regulariser
``w_reg mean D'(x)^2`` at the collocation points (the paper's table: ``w_reg`` 1e-2, 1e-3, 1e-4).

Reference solution (``solve_poisson``): the flux-form second-order difference
``-(D_{i+1/2} (u_{i+1} - u_i) - D_{i-1/2} (u_i - u_{i-1})) / h^2 = s_i`` with ``D_{i+1/2} = (D_i + D_{i+1}) / 2``
(``bodil.stencil``) on ``nx_ref`` intervals, a tridiagonal solve in JAX (differentiable in ``D``).

ODIL (``odil_posterior``): the same difference residual on the collocation nodes with ``u`` and ``D`` both fields
of the grid, the boundary values as a second block, a Gaussian likelihood, and the regulariser as a block of
the prior weighted so that the MAP minimises ``L_dat + w_reg L_reg`` plus the soft PDE penalty.
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
from ..prior import PDEPrior
from ..stencil import face_average, forward_difference
from . import functions as F
from .cases import interpolate_x


def truth(x):
    """The hat ``D(x) = 1 + 0.5 (1 - |2 x - 1|)``."""
    return 1.0 + 0.5 * (1.0 - jnp.abs(2.0 * jnp.asarray(x) - 1.0))


def initial_guess(x):
    """``D_0(x) = 1``."""
    return jnp.ones_like(jnp.asarray(x, float))


def source(x):
    """``s(x) = pi^2 sin(pi x)``, the right-hand side of ``-(D u')' = s``."""
    return jnp.pi**2 * jnp.sin(jnp.pi * x)


def u_transform(z, raw):
    """``u = u_raw x (1 - x)``: zero at both ends."""
    return raw * z[0] * (1.0 - z[0])


def d_transform(y, raw):
    """``D = 1 + D_raw x (1 - x)``: one at both ends."""
    return 1.0 + raw * y[0] * (1.0 - y[0])


def operator(u, f, z):
    """``r = (D u')' + s`` at ``z = (x,)`` with ``D = f`` (``-(D u')' = s`` holds where ``r = 0``)."""
    e = jnp.ones_like(z)
    flux = lambda y: f(y) * jax.jvp(u, (y,), (e,))[1]  # noqa: E731
    return jax.jvp(flux, (z,), (e,))[1] + source(z[0])


def solve_poisson(diffusivity, rhs=None):
    """``-(D u')' = s`` on the nodes ``x_i = i / n`` of ``[0, 1]``, ``u = 0`` at both ends (module docstring).

    Args:
        diffusivity: ``D`` at the ``n + 1`` nodes (positive).
        rhs: ``s`` at the nodes (default ``pi^2 sin(pi x)``).

    Returns:
        ``u`` at the nodes, shape ``(n + 1,)``.

    Raises:
        ValueError: fewer than 3 nodes, or ``rhs`` of another length.
    """
    d = jnp.asarray(diffusivity)
    n = d.shape[0] - 1
    if d.ndim != 1 or n < 2:
        raise ValueError(f"solve_poisson: diffusivity must be 1-D with at least 3 nodes, got shape {d.shape}.")
    x = jnp.linspace(0.0, 1.0, n + 1, dtype=d.dtype)
    s = source(x) if rhs is None else jnp.asarray(rhs, d.dtype)
    if s.shape != d.shape:
        raise ValueError(f"solve_poisson: rhs has shape {s.shape}, the diffusivity {d.shape}.")
    return _solve(d, s)


@jax.jit
def _solve(d, s):
    n = d.shape[0] - 1
    h2 = (1.0 / n) ** 2
    faces = face_average(d, 0, False) / h2          # D_{i+1/2} / h^2, n faces
    diag = faces[:-1] + faces[1:]
    off = -faces[1:-1]
    zero = jnp.zeros((1,), d.dtype)
    lower, upper = jnp.concatenate([zero, off]), jnp.concatenate([off, zero])
    inner = jax.lax.linalg.tridiagonal_solve(lower, diag, upper, s[1:-1, None])[:, 0]
    return jnp.concatenate([zero, inner, zero])


@dataclasses.dataclass(frozen=True, eq=False)
class FunctionCase:
    """A case with an unknown function: ``FunctionProblem``, data, pre-training targets, evaluation nodes.

    Attributes:
        problem: ``bodil.bilo.functions.FunctionProblem``.
        x_eval: the ``nx_ref + 1`` reference nodes; the error of the function is measured there.
        noise: noise sd of the data; ``clean``: noise-free data.
        pretrain: ``(points, values)``: the reference solution at the initial guess on the collocation points.
        function0: the initial guess at the regulariser points.
        settings: the numbers that define the case.
    """

    problem: F.FunctionProblem
    x_eval: np.ndarray
    noise: float
    clean: np.ndarray
    pretrain: tuple
    function0: np.ndarray
    settings: dict


@dataclasses.dataclass(frozen=True, eq=False)
class PoissonCase(FunctionCase):
    """The variable-diffusion Poisson case (``D`` of ``x``); errors of ``u`` are measured on ``x_eval`` too."""

    def reference(self, d_eval) -> np.ndarray:
        """The reference solution on ``x_eval`` for ``D`` given on ``x_eval``."""
        return np.asarray(solve_poisson(jnp.asarray(d_eval)))


def variable_poisson(*, noise: float = 1e-2, seed=0, n_res: int = 101, n_data: int = 51, w_reg: float = 1e-3,
                     nx_ref: int = 1000) -> PoissonCase:
    """Zhang et al., sec. 3.3: ``D(x)`` of ``-(D u')' = pi^2 sin(pi x)`` from ``n_data`` noisy values of ``u``.

    Args:
        noise: Gaussian noise sd (the paper: 1e-2).
        seed: integer or ``jax.random`` key of the noise.
        n_res: collocation (and regulariser) points, equally spaced in ``[0, 1]`` (the authors: 101).
        n_data: data points, equally spaced in ``[0, 1]`` (the authors: 51).
        w_reg: weight of ``mean D'^2``.
        nx_ref: intervals of the reference solve (the evaluation nodes).

    Returns:
        ``PoissonCase``.
    """
    positive("variable_poisson", "noise", noise, allow_zero=True)
    n_res = integer("variable_poisson", "n_res", n_res, 3)
    n_data = integer("variable_poisson", "n_data", n_data, 1)
    nx_ref = integer("variable_poisson", "nx_ref", nx_ref, 2)
    x_eval = np.linspace(0.0, 1.0, nx_ref + 1)
    x_res, x_data = np.linspace(0.0, 1.0, n_res), np.linspace(0.0, 1.0, n_data)
    u_true = np.asarray(solve_poisson(truth(jnp.asarray(x_eval))))
    clean = np.interp(x_data, x_eval, u_true)
    rng = np.random.default_rng(seed_words("variable_poisson", seed))
    values = clean + noise * rng.standard_normal(n_data)
    problem = F.FunctionProblem(operator, x_res[:, None], x_data[:, None], values, x_res[:, None], (0,),
                                w_reg=w_reg, reg="h1", name="D", monitor=np.array([[0.25], [0.5]]), coords=("x",))
    u0 = np.interp(x_res, x_eval, np.asarray(solve_poisson(initial_guess(x_eval))))
    return PoissonCase(problem, x_eval, float(noise), clean, (x_res[:, None], u0), np.asarray(initial_guess(x_res)),
                       dict(noise=float(noise), n_res=n_res, n_data=n_data, w_reg=float(w_reg), nx_ref=nx_ref))


def metrics(case: PoissonCase, d_eval, u_eval, data_loss: float | None = None) -> dict[str, float]:
    """Errors of an inferred ``D`` and field ``u``, both given on ``case.x_eval``.

    ``err_f``: relative L2 error of ``D`` against the truth; ``max_f``: its largest absolute error; ``err_u``:
    relative L2 error of ``u`` against the reference solve at the inferred ``D`` (NaN where ``D <= 0``);
    ``err_data``: ``(L_dat - noise^2) / noise^2`` when ``noise > 0`` and ``data_loss`` is given.
    """
    d_eval, u_eval = np.asarray(d_eval, float), np.asarray(u_eval, float)
    d_true = np.asarray(truth(case.x_eval))
    out = {"err_f": float(np.linalg.norm(d_eval - d_true) / np.linalg.norm(d_true)),
           "max_f": float(np.max(np.abs(d_eval - d_true)))}
    if np.all(d_eval > 0):
        ref = case.reference(d_eval)
        out["err_u"] = float(np.linalg.norm(u_eval - ref) / np.linalg.norm(ref))
    else:
        out["err_u"] = float("nan")
    if data_loss is not None and case.noise > 0:
        out["err_data"] = (float(data_loss) - case.noise**2) / case.noise**2
    return out


def model_metrics(case: PoissonCase, model, data_loss: float | None = None) -> dict[str, float]:
    """``metrics`` of a trained ``bodil.bilo.functions.FunctionModel`` (BiLO or PINN)."""
    pts = case.x_eval[:, None]
    return metrics(case, model.function(pts), model.field(pts), data_loss)


# ---------------------------------------------------------------------------------------------- ODIL
def odil_posterior(case: PoissonCase, *, beta: float = 1e6, beta_conditions: float = 1e6, sigma=None,
                   dtype=None) -> tuple[Posterior, Any]:
    """ODIL's posterior over the fields ``{"u", "D"}`` on the collocation nodes, and its starting point.

    ``beta`` weighs the mean squared difference residual, ``beta_conditions`` the boundary values of ``u`` and
    ``D``; the Gaussian likelihood uses ``sigma`` (default ``max(noise, 1e-3)``); the regulariser block is
    ``(n_data w_reg / (2 sigma^2)) mean (D')^2``, so the MAP minimises ``L_dat + w_reg L_reg`` plus the PDE
    penalty. The start is ``D_0`` and its reference solution. There are no scalar parameters (``theta = {}``).
    """
    x = np.asarray(case.problem.collocation[:, 0])
    n = x.size
    if not np.allclose(x, np.linspace(0.0, 1.0, n)):
        raise ValueError("odil_posterior: the collocation points must be equally spaced nodes of [0, 1].")
    grid = Grid(shape=(n,), lower=0.0, upper=1.0, names=("x",), layout=("node",))
    sigma = max(case.noise, 1e-3) if sigma is None else float(sigma)
    n_data = case.problem.data_points.shape[0]
    weights = interpolate_x(jnp.eye(n), case.problem.data_points[:, 0])   # (n, n_data): u @ weights
    scale = float(np.sqrt(n_data * case.problem.w_reg / (2.0 * sigma**2 * beta)))
    residual = functools.partial(_odil_residual, scale=scale)
    prior = PDEPrior(residual, grid, beta, initial=_odil_conditions, beta_initial=beta_conditions)
    lik = Gaussian(lambda u, theta: u["u"] @ weights.astype(u["u"].dtype), case.problem.data_values, sigma)
    dtype = dtype or jnp.zeros(()).dtype
    u0 = {"u": jnp.asarray(case.pretrain[1], dtype), "D": jnp.asarray(case.function0, dtype)}
    return Posterior(prior, lik), u0


def _odil_residual(u, theta, grid, *, scale):
    h = grid.spacing[0]
    flux = face_average(u["D"], 0, False) * forward_difference(u["u"], 0, False) / h
    x = jnp.asarray(grid.coordinates("x"), u["u"].dtype)
    out = {"pde": -(flux[1:] - flux[:-1]) / h - source(x[1:-1])}
    if scale > 0:
        out["smoothness"] = scale * forward_difference(u["D"], 0, False) / h
    return out


def _odil_conditions(u, theta, grid):
    return {"walls": jnp.stack([u["u"][0], u["u"][-1]]), "D_ends": jnp.stack([u["D"][0], u["D"][-1]]) - 1.0}


def odil_metrics(case: PoissonCase, fields, data_loss: float | None = None) -> dict[str, float]:
    """``metrics`` of an ODIL solution (fields on the collocation nodes, linearly interpolated to ``x_eval``)."""
    x = case.problem.collocation[:, 0]
    d = np.interp(case.x_eval, x, np.asarray(fields["D"]))
    return metrics(case, d, np.interp(case.x_eval, x, np.asarray(fields["u"])), data_loss)
