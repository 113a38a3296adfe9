"""2-D Darcy flow with an unknown permeability (Zhang et al., "BiLO: Bilevel Local Operator Learning for PDE inverse
problems", sec. 3.5, appendix D.6), for BiLO, the PINN and bodil's ODIL on the same data.

    -div(k(x) grad u(x)) = 1,  x in (0, 1)^2,  u = 0 on the boundary,

infer ``k`` from ``u`` at every node of the ``n_res x n_res`` collocation grid (the authors' setup), with Gaussian
noise of sd ``noise``. As in appendix D.6 (after Li et al. 2024), ``g_0`` and ``g_1`` are samples of a Gaussian
random field with squared-exponential covariance ``sd^2 exp(-|x - x'|^2 / (2 l^2))``; the truth is piecewise
constant, ``k = 12`` where ``g_1 > 0`` and ``3`` elsewhere, the initial guess ``k_0 = 9 S(g_0) + 3`` (``S`` the
logistic function). The paper's ``sd`` and ``l`` are lost from its text; bodil uses ``sd = 1`` and ``l = 0.2``
(``length``), coarse enough for the CPU grid. Networks (appendix D.6): ``k = 9 S(k_raw) + 3`` and
``u = u_raw x (1 - x) y (1 - y)``; the regulariser is total variation, ``w_reg mean_k (|k_x| + |k_y|)`` at the
collocation points (the authors' weight ``1e-9``).

Reference solution (``solve_darcy``): the flux-form five-point difference of ``bodil.stencil`` (face-averaged
``k``, ``stencil.face_diffusivities``) on the ``nx_ref + 1`` nodes per axis, assembled as a scipy sparse matrix
on the interior nodes and solved directly. The error of ``k`` is measured on those nodes.

ODIL (``odil_posterior``): the same five-point residual on the collocation nodes with ``u`` and ``a`` both fields
(``k = 9 S(a) + 3``, the networks' range), zero wall values as a second block, a Gaussian likelihood at the nodes
and the regulariser as prior blocks weighted so that the MAP minimises ``L_dat + w_reg L_reg`` plus the PDE
penalty (``"tv"``: the smoothed ``sqrt(k_x^2 + eps^2)``; ``"h1"``: ``k_x^2``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.interpolate import RegularGridInterpolator

from .._checks import integer, positive, seed_words
from ..grid import Grid
from ..likelihood import Gaussian
from ..posterior import Posterior
from ..prior import PDEPrior
from ..stencil import diffusion_operator, face_diffusivities, forward_difference
from . import functions as F
from .cases_poisson import FunctionCase

K_LOW, K_HIGH = 3.0, 12.0
THRESHOLD = 0.5 * (K_LOW + K_HIGH)
TV_EPS = 1.0


def k_transform(y, raw):
    """``k = 9 S(k_raw) + 3``: between the two values of the truth."""
    return K_LOW + (K_HIGH - K_LOW) * jax.nn.sigmoid(raw)


def u_transform(z, raw):
    """``u = u_raw x (1 - x) y (1 - y)``: zero on the boundary."""
    return raw * z[0] * (1.0 - z[0]) * z[1] * (1.0 - z[1])


def operator(u, f, z):
    """``r = div(k grad u) + 1`` at ``z = (x, y)`` with ``k = f`` (``-div(k grad u) = 1`` holds where ``r = 0``)."""
    out = jnp.ones((), z.dtype)
    for e in jnp.eye(2, dtype=z.dtype):
        flux = lambda y, e=e: f(y) * jax.jvp(u, (y,), (e,))[1]  # noqa: E731
        out = out + jax.jvp(flux, (z,), (e,))[1]
    return out


def gaussian_random_field(seed, n: int, *, length: float = 0.2, sd: float = 1.0) -> np.ndarray:
    """A sample of the zero-mean Gaussian field with covariance ``sd^2 exp(-|x - x'|^2 / (2 length^2))`` on the
    ``n x n`` nodes of ``[0, 1]^2``. The covariance is the Kronecker product of two 1-D ones, so the sample is
    ``A Z A^T`` with ``A A^T`` the 1-D correlation (eigendecomposition, negative round-off eigenvalues dropped)."""
    n = integer("gaussian_random_field", "n", n, 2)
    positive("gaussian_random_field", "length", length)
    return _field(np.random.default_rng(seed_words("gaussian_random_field", seed)), n, length, sd)


def _field(rng, n, length, sd):
    x = np.linspace(0.0, 1.0, n)
    lam, vec = np.linalg.eigh(np.exp(-0.5 * (x[:, None] - x[None, :]) ** 2 / length**2))
    a = vec * np.sqrt(np.clip(lam, 0.0, None))
    return sd * a @ rng.standard_normal((n, n)) @ a.T


def stiffness(k) -> sp.csr_matrix:
    """The matrix of ``-div(k grad u)`` (``bodil.stencil`` flux form, face-averaged ``k``) on all ``(n + 1)^2``
    nodes of ``[0, 1]^2`` for ``k`` given there; rows and columns in row-major node order."""
    k = np.asarray(k, float)
    n = k.shape[0] - 1
    faces = [np.asarray(f) for f in face_diffusivities(k, k.shape, (1.0 / n, 1.0 / n), (False, False))]
    idx = np.arange(k.size).reshape(k.shape)
    rows, cols, vals = [], [], []
    for a, b, f in ((idx[:-1, :], idx[1:, :], faces[0]), (idx[:, :-1], idx[:, 1:], faces[1])):
        a, b, f = a.ravel(), b.ravel(), f.ravel()
        rows += [a, a, b, b]
        cols += [a, b, b, a]
        vals += [f, -f, f, -f]
    return sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(k.size, k.size)).tocsr()


def solve_darcy(k, rhs=None) -> np.ndarray:
    """``-div(k grad u) = s`` on the nodes of ``[0, 1]^2`` with ``u = 0`` on the boundary (module docstring).

    Args:
        k: the permeability at the ``(n + 1) x (n + 1)`` nodes (positive).
        rhs: ``s`` at the nodes (default 1).

    Returns:
        ``u`` at the nodes, shape ``k.shape``.

    Raises:
        ValueError: ``k`` not square with at least 3 nodes per axis, not positive, or ``rhs`` of another shape.
    """
    k = np.asarray(k, float)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] < 3:
        raise ValueError(f"solve_darcy: k must be a square 2-D array of at least 3 x 3 nodes, got shape {k.shape}.")
    if not np.all(k > 0):
        raise ValueError("solve_darcy: k must be positive at every node (no forward problem otherwise).")
    s = np.ones_like(k) if rhs is None else np.asarray(rhs, float)
    if s.shape != k.shape:
        raise ValueError(f"solve_darcy: rhs has shape {s.shape}, k {k.shape}.")
    inner = np.arange(k.size).reshape(k.shape)[1:-1, 1:-1].ravel()
    a = stiffness(k)[inner][:, inner]
    u = np.zeros(k.size)
    u[inner] = spla.spsolve(a.tocsc(), s.ravel()[inner])
    return u.reshape(k.shape)


def node_points(n: int) -> np.ndarray:
    """The ``n x n`` nodes of ``[0, 1]^2`` as rows ``(x, y)``, row-major (``x`` the first array axis)."""
    x = np.linspace(0.0, 1.0, n)
    gx, gy = np.meshgrid(x, x, indexing="ij")
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def to_eval(values, n_eval: int) -> np.ndarray:
    """Bilinear interpolation of node values ``(m, m)`` of ``[0, 1]^2`` to the ``n_eval x n_eval`` nodes."""
    values = np.asarray(values, float)
    x = np.linspace(0.0, 1.0, values.shape[0])
    return RegularGridInterpolator((x, x), values)(node_points(n_eval)).reshape(n_eval, n_eval)


@dataclasses.dataclass(frozen=True, eq=False)
class DarcyCase(FunctionCase):
    """The Darcy case; ``x_eval`` are the reference nodes per axis, ``k_true`` the truth on the reference grid
    (``x_eval x x_eval``), where the errors of ``k`` and ``u`` are measured."""

    k_true: np.ndarray = None

    def reference(self, k_eval) -> np.ndarray:
        """The reference solution on the reference grid for ``k`` given there."""
        return solve_darcy(k_eval)


def darcy(*, noise: float = 0.0, seed=0, n_res: int = 21, nx_ref: int | None = None, w_reg: float = 1e-9,
          reg: str = "tv", length: float = 0.2) -> DarcyCase:
    """Zhang et al., sec. 3.5: ``k`` from ``u`` at the ``n_res x n_res`` nodes with noise sd ``noise``.

    Args:
        noise: Gaussian noise sd.
        seed: integer or ``jax.random`` key: draws the two random fields (truth and initial guess) and the noise.
        n_res: collocation = data = regulariser nodes per axis (the paper: 51).
        nx_ref: reference intervals per axis, a multiple of ``n_res - 1`` (default ``5 (n_res - 1)``).
        w_reg: weight of the regulariser (the authors: ``1e-9``).
        reg: ``"tv"`` (the paper) or ``"h1"``.
        length: correlation length of the random fields.

    Returns:
        ``DarcyCase``.
    """
    positive("darcy", "noise", noise, allow_zero=True)
    n_res = integer("darcy", "n_res", n_res, 3)
    nx_ref = 5 * (n_res - 1) if nx_ref is None else integer("darcy", "nx_ref", nx_ref, n_res - 1)
    if nx_ref % (n_res - 1):
        raise ValueError(f"darcy: nx_ref = {nx_ref} must be a multiple of n_res - 1 = {n_res - 1} (nested nodes).")
    positive("darcy", "length", length)
    rng = np.random.default_rng(seed_words("darcy", seed))
    g1, g0 = _field(rng, nx_ref + 1, length, 1.0), _field(rng, nx_ref + 1, length, 1.0)
    k_true = np.where(g1 > 0, K_HIGH, K_LOW)
    k0 = K_LOW + (K_HIGH - K_LOW) / (1.0 + np.exp(-g0))
    stride = nx_ref // (n_res - 1)
    clean = solve_darcy(k_true)[::stride, ::stride].ravel()
    values = clean + noise * rng.standard_normal(clean.size)
    pts = node_points(n_res)
    problem = F.FunctionProblem(operator, pts, pts, values, pts, (0, 1), w_reg=w_reg, reg=reg, name="k",
                                monitor=np.array([[0.25, 0.25], [0.5, 0.5], [0.75, 0.75]]), coords=("x", "y"))
    u0 = solve_darcy(k0)[::stride, ::stride].ravel()
    return DarcyCase(problem, np.linspace(0.0, 1.0, nx_ref + 1), float(noise), clean, (pts, u0),
                     k0[::stride, ::stride].ravel(), dict(noise=float(noise), n_res=n_res, nx_ref=nx_ref,
                                                          w_reg=float(w_reg), reg=reg, length=float(length)), k_true)


def metrics(case: DarcyCase, k_eval, u_eval, data_loss: float | None = None) -> dict[str, float]:
    """Errors of ``k`` and ``u`` given on the reference grid.

    ``err_f``: relative L2 error of ``k``; ``acc``: fraction of nodes where ``k`` thresholded at 7.5 is the truth's
    class (the paper's classification accuracy); ``err_u``: relative L2 error of ``u`` against the reference solve at
    the inferred ``k`` (NaN where ``k <= 0``); ``data``: ``L_dat`` when given; ``err_data``:
    ``(L_dat - noise^2) / noise^2`` when ``noise > 0``.
    """
    k_eval, u_eval = np.asarray(k_eval, float), np.asarray(u_eval, float)
    out = {"err_f": float(np.linalg.norm(k_eval - case.k_true) / np.linalg.norm(case.k_true)),
           "acc": float(np.mean((k_eval > THRESHOLD) == (case.k_true > THRESHOLD)))}
    if np.all(k_eval > 0):
        ref = case.reference(k_eval)
        out["err_u"] = float(np.linalg.norm(u_eval - ref) / np.linalg.norm(ref))
    else:
        out["err_u"] = float("nan")
    if data_loss is not None:
        out["data"] = float(data_loss)
        if case.noise > 0:
            out["err_data"] = (float(data_loss) - case.noise**2) / case.noise**2
    return out


def model_metrics(case: DarcyCase, model, data_loss: float | None = None) -> dict[str, float]:
    """``metrics`` of a trained ``bodil.bilo.functions.FunctionModel`` (BiLO or PINN)."""
    n = case.x_eval.size
    pts = node_points(n)
    k = np.asarray(model.function(pts)).reshape(n, n)
    return metrics(case, k, np.asarray(model.field(pts)).reshape(n, n), data_loss)


# ---------------------------------------------------------------------------------------------- ODIL
def odil_posterior(case: DarcyCase, *, beta: float = 1e6, beta_conditions: float = 1e6, sigma=None,
                   dtype=None) -> tuple[Posterior, Any]:
    """ODIL's posterior over the fields ``{"u", "a"}`` (``k = 9 S(a) + 3``) on the collocation nodes, and its start.

    ``beta`` weighs the mean squared five-point residual, ``beta_conditions`` the wall values of ``u``; Gaussian
    likelihood with ``sigma`` (default ``max(noise, 1e-4)``); the regulariser blocks (one per axis) are weighted
    ``n_data w_reg / (2 sigma^2)`` so that the MAP minimises ``L_dat + w_reg L_reg`` plus the PDE penalty. The start
    is ``k_0`` and its reference solution. No scalar parameters (``theta = {}``).
    """
    n = case.settings["n_res"]
    grid = Grid(shape=(n, n), lower=0.0, upper=1.0, names=("x", "y"), layout=("node", "node"))
    sigma = max(case.noise, 1e-4) if sigma is None else float(sigma)
    n_data = case.problem.data_points.shape[0]
    scale = float(np.sqrt(n_data * case.problem.w_reg / (2.0 * sigma**2 * beta)))
    residual = functools.partial(_odil_residual, scale=scale, reg=case.problem.reg)
    prior = PDEPrior(residual, grid, beta, initial=_odil_walls, beta_initial=beta_conditions)
    lik = Gaussian(lambda u, theta: u["u"].ravel(), case.problem.data_values, sigma)
    dtype = dtype or jnp.zeros(()).dtype
    k0 = np.clip(np.asarray(case.function0).reshape(n, n), K_LOW + 1e-6, K_HIGH - 1e-6)
    a0 = np.log((k0 - K_LOW) / (K_HIGH - k0))
    return Posterior(prior, lik), {"u": jnp.asarray(case.pretrain[1].reshape(n, n), dtype),
                                   "a": jnp.asarray(a0, dtype)}


def odil_k(fields):
    """``k = 9 S(a) + 3`` of ODIL's fields."""
    return K_LOW + (K_HIGH - K_LOW) * jax.nn.sigmoid(fields["a"])


def _odil_residual(u, theta, grid, *, scale, reg):
    k = odil_k(u)
    faces = face_diffusivities(k, grid.shape, grid.spacing, (False, False))
    out = {"pde": diffusion_operator(u["u"], faces, (False, False))[1:-1, 1:-1] + 1.0}
    if scale > 0:
        for axis, name in enumerate(grid.names):
            g = forward_difference(k, axis, False) / grid.spacing[axis]
            out[f"smooth_{name}"] = scale * (g if reg == "h1" else (g**2 + TV_EPS**2) ** 0.25)
    return out


def _odil_walls(u, theta, grid):
    v = u["u"]
    return {"walls": jnp.concatenate([v[0], v[-1], v[1:-1, 0], v[1:-1, -1]])}


def odil_metrics(case: DarcyCase, fields, data_loss: float | None = None) -> dict[str, float]:
    """``metrics`` of an ODIL solution (node fields, bilinearly interpolated to the reference grid)."""
    n = case.x_eval.size
    return metrics(case, to_eval(np.asarray(odil_k(fields)), n), to_eval(np.asarray(fields["u"]), n), data_loss)
