"""The loss functions of BiLO and of the PINN baseline (Zhang et al., "BiLO: Bilevel Local Operator Learning for
PDE inverse problems", eq. 3-7 and 11).

A ``PointwiseProblem`` holds the PDE as a pointwise operator ``F(u, z; theta)`` evaluated with automatic
differentiation in the coordinates ``z``, the collocation points ``{z_i}`` of the residual and the data
``{(z_j, y_j)}``. The parameters are trained on the scale ``p = theta / scale`` (the authors' ``rD``,
``rRHO``), which keeps one learning rate meaningful for parameters of different magnitude. With
``r(z; p) = F(u(.; p, W), z; scale * p)``:

    L_res   = mean_i r(z_i; p)^2                                  (eq. 4)
    L_rgrad = mean_i ||d r(z_i; p) / d p||^2                      (eq. 5; total derivative, through u and theta)
    L_LO    = L_res + w_rgrad L_rgrad                             (eq. 6, the lower level of BiLO)
    L_dat   = mean_j (u(z_j; p) - y_j)^2                          (eq. 3, the upper level of BiLO)
    L_PINN  = L_res + w L_dat                                     (eq. 11, minimised over W and p together)

``L_rgrad`` comes from autodiff (``jax.grad`` of the pointwise residual in ``p``) or, as an option, from
central differences ``(r(p + eps e_k) - r(p - eps e_k)) / (2 eps)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import choice, positive


def check_points(where: str, name: str, value, n_cols: int | None = None) -> np.ndarray:
    """``value`` as a finite 2-D float array ``(points, n_cols)`` with at least one row (else ``ValueError``)."""
    arr = np.asarray(value, dtype=float)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{where}: {name} must be a 2-D array (points, coordinates) with at least one point, "
                         f"got shape {arr.shape}.")
    if n_cols is not None and arr.shape[1] != n_cols:
        raise ValueError(f"{where}: {name} has {arr.shape[1]} coordinate column(s) but the problem has {n_cols} "
                         f"coordinates; give the points in the same coordinate order.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{where}: {name} contains NaN or infinity.")
    return arr


def check_values(where: str, name: str, values, points: np.ndarray) -> np.ndarray:
    """``values`` as a finite 1-D float array with one entry per row of ``points`` (else ``ValueError``)."""
    arr = np.asarray(values, dtype=float)
    if arr.shape != (points.shape[0],):
        raise ValueError(f"{where}: {name} must have shape ({points.shape[0]},), one value per point, got "
                         f"{arr.shape}" + (" (flatten a column vector with .ravel())" if arr.size == points.shape[0]
                                           else "") + ".")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{where}: {name} contains NaN or infinity.")
    return arr


@dataclasses.dataclass(frozen=True, eq=False)
class PointwiseProblem:
    """A PDE inverse problem for BiLO and PINNs: pointwise operator, collocation points, data.

    Attributes:
        operator: ``operator(u, z, theta) -> r``: the PDE residual at one point ``z`` (shape ``(n_coords,)``),
            where ``u`` is the function ``z -> u(z)`` (differentiate it with ``jax.grad``) and ``theta`` the
            dict of physical parameters.
        collocation: residual points, shape ``(n_res, n_coords)``.
        data_points: observation points, shape ``(n_data, n_coords)``.
        data_values: observations, shape ``(n_data,)``.
        names: the inferred parameters, in order.
        scale: ``theta[name] = scale[k] * p[k]``; positive, one per name.
        coords: names of the coordinate columns (for reports), e.g. ``("t", "x")``.
        link: optional observation link: ``L_dat = mean_j (link(u)_j - y_j)^2`` with ``link`` mapping the vector
            of predictions at the data points to a vector of the same shape (a smooth threshold for a
            segmentation); default the identity.
    """

    operator: Callable
    collocation: np.ndarray
    data_points: np.ndarray
    data_values: np.ndarray
    names: tuple
    scale: tuple
    coords: tuple = ()
    link: Callable | None = None

    def __post_init__(self):
        where = "PointwiseProblem"
        if not callable(self.operator):
            raise TypeError(f"{where}: operator must be callable (u, z, theta) -> residual.")
        col = check_points(where, "collocation", self.collocation)
        pts = check_points(where, "data_points", self.data_points, col.shape[1])
        vals = check_values(where, "data_values", self.data_values, pts)
        names, scale = tuple(self.names), tuple(float(s) for s in np.atleast_1d(self.scale))
        if len(names) != len(scale):
            raise ValueError(f"{where}: {len(names)} parameter name(s) but {len(scale)} scale(s); give one scale "
                             f"per parameter.")
        for n, s in zip(names, scale):
            positive(where, f"scale of {n!r}", s)
        coords = tuple(self.coords) if self.coords else tuple(f"z{i}" for i in range(col.shape[1]))
        if len(coords) != col.shape[1]:
            raise ValueError(f"{where}: {len(coords)} coordinate name(s) for {col.shape[1]} coordinate column(s).")
        for field, value in (("collocation", col), ("data_points", pts), ("data_values", vals), ("names", names),
                             ("scale", scale), ("coords", coords)):
            object.__setattr__(self, field, value)

    def theta(self, p) -> dict:
        """Physical parameters ``{name: scale * p}`` from the scaled vector ``p``."""
        return {n: s * p[k] for k, (n, s) in enumerate(zip(self.names, self.scale))}

    def scaled(self, theta) -> jax.Array:
        """The scaled vector ``p = theta / scale`` from a dict of physical parameters."""
        missing = [n for n in self.names if n not in theta]
        if missing:
            raise KeyError(f"PointwiseProblem: theta lacks {missing}; it needs {list(self.names)}.")
        return jnp.stack([jnp.asarray(theta[n]) / s for n, s in zip(self.names, self.scale)])


def point_residual(net, problem: PointwiseProblem, p, z):
    """``r(z; p) = F(u(.; p), z; scale * p)`` at one point."""
    return problem.operator(lambda y: net(y, p), z, problem.theta(p))


def residuals(net, problem: PointwiseProblem, p, points=None):
    """The residual at every collocation point (or at ``points``), shape ``(n,)``."""
    points = problem.collocation if points is None else points
    return jax.vmap(lambda z: point_residual(net, problem, p, z))(jnp.asarray(points, p.dtype))


def residual_loss(net, problem: PointwiseProblem, p):
    """``L_res = mean_i r(z_i; p)^2`` (eq. 4)."""
    return jnp.mean(residuals(net, problem, p) ** 2)


def residual_gradients(net, problem: PointwiseProblem, p, *, method: str = "autodiff", eps: float = 1e-3):
    """``d r(z_i; p) / d p`` at every collocation point, shape ``(n_res, n_params)``.

    ``method="autodiff"``: exact (``jax.grad`` in ``p`` of the pointwise residual, which itself holds the
    coordinate derivatives). ``method="fd"``: central differences with step ``eps`` on the scaled ``p``.
    """
    choice("residual_gradients", "method", method, ("autodiff", "fd"))
    points = jnp.asarray(problem.collocation, p.dtype)
    if method == "autodiff":
        return jax.vmap(jax.grad(lambda q, z: point_residual(net, problem, q, z)), in_axes=(None, 0))(p, points)
    cols = []
    for k in range(p.shape[0]):
        step = jnp.zeros_like(p).at[k].set(eps)
        cols.append((residuals(net, problem, p + step) - residuals(net, problem, p - step)) / (2 * eps))
    return jnp.stack(cols, axis=1)


def residual_gradient_loss(net, problem: PointwiseProblem, p, *, method: str = "autodiff", eps: float = 1e-3):
    """``L_rgrad = mean_i ||d r(z_i; p) / d p||^2`` (eq. 5)."""
    return jnp.mean(jnp.sum(residual_gradients(net, problem, p, method=method, eps=eps) ** 2, axis=1))


def predict(net, p, points):
    """``u(z; p)`` at ``points`` (shape ``(n, n_coords)``), shape ``(n,)``."""
    return jax.vmap(lambda z: net(z, p))(jnp.asarray(points, p.dtype))


def data_loss(net, problem: PointwiseProblem, p, values=None):
    """``L_dat = mean_j (link(u)(z_j; p) - y_j)^2`` (eq. 3; ``link`` the identity unless the problem has one), against
    ``values`` instead of the problem's data values when given."""
    pred = predict(net, p, problem.data_points)
    pred = pred if problem.link is None else problem.link(pred)
    values = problem.data_values if values is None else values
    return jnp.mean((pred - jnp.asarray(values, pred.dtype)) ** 2)


def fit_loss(net, p, points, values):
    """``mean (u(z; p) - v)^2`` against given values (pre-training on a numerical solution at ``theta_0``)."""
    pred = predict(net, p, points)
    return jnp.mean((pred - jnp.asarray(values, pred.dtype)) ** 2)


def local_operator_loss(net, problem: PointwiseProblem, p, w_rgrad: float, *, method: str = "autodiff",
                        eps: float = 1e-3):
    """``L_LO = L_res + w_rgrad L_rgrad`` (eq. 6); returns ``(L_LO, (L_res, L_rgrad))``."""
    res = residual_loss(net, problem, p)
    rgrad = residual_gradient_loss(net, problem, p, method=method, eps=eps)
    return res + w_rgrad * rgrad, (res, rgrad)


def pinn_loss(net, problem: PointwiseProblem, p, w_data: float):
    """``L_PINN = L_res + w L_dat`` (eq. 11); returns ``(L_PINN, (L_res, L_dat))``."""
    res = residual_loss(net, problem, p)
    dat = data_loss(net, problem, p)
    return res + w_data * dat, (res, dat)
