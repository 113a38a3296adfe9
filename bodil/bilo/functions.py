"""Unknown functions in BiLO through an auxiliary variable (Zhang et al., "BiLO: Bilevel Local Operator Learning for
PDE inverse problems", sec. 2.2 and appendix A), with the PINN on the same code path.

The unknown function is a second network ``f(y; V)`` of some of the coordinates, ``y = z[axes]`` (``x`` for a
diffusion coefficient or an initial condition of ``u(t, x)``). The local operator ``u(z; a, W)`` takes the
*value* ``a`` of the function at the point as its parameter input, and the field is ``U(z) = u(z; f(z[axes]))``.
The residual with the auxiliary variable is the PDE residual of that field when ``f`` is shifted by a constant
``delta``:

    r(z; delta) = F[U_delta, f + delta](z),   U_delta(z) = u(z; f(z[axes]) + delta; W),

and the two conditions of a local operator at ``f`` become ``r(z; 0) = 0`` and ``d r(z; delta) / d delta = 0`` at
``delta = 0`` (a small change of the function's value changes the residual little). ``d / d delta`` keeps the
derivatives of ``f`` fixed and moves its value, the derivative the authors' code takes with respect to the
auxiliary input. With ``L_res = mean_i r_i^2``, ``L_rgrad = mean_i (d r_i / d delta)^2`` (eq. 13-14),
``L_dat = mean_j (U(z_j) - y_j)^2`` and the gradient-norm regulariser (eq. 12)

    L_reg = mean_k ||grad f(y_k)||^2      ("h1")      or      mean_k sum_d |d f(y_k) / d y_d|   ("tv"),

BiLO solves ``min_V L_dat + w_reg L_reg`` at the upper level and ``min_W L_res + w_rgrad L_rgrad`` at the lower
level (eq. 15-16) by simultaneous Adam steps with two learning rates (``bodil.bilo.train``); the PINN minimises
``L_res + w L_dat + w_reg L_reg`` in ``(W, V)`` together. Pre-training moves ``f`` to the initial guess ``f_0``
(mean squared misfit at the regulariser points) while ``W`` learns the local operator there, plus the misfit to
a numerical solution at ``f_0`` when one is given (appendix A).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checks import choice, positive
from . import losses as L
from .network import split
from .train import BiLOSettings, BiLOState, StepInfo, Trainer

REGULARISERS = ("h1", "tv")


@dataclasses.dataclass(frozen=True, eq=False)
class FunctionProblem:
    """A PDE inverse problem for an unknown function ``f(y)``, ``y = z[axes]``.

    Attributes:
        operator: ``operator(u, f, z) -> r``: the residual at one point ``z``, where ``u`` (``z -> U(z)``) and ``f``
            (``y -> f(y)``) are functions to differentiate with ``jax.jvp``/``jax.grad``.
        collocation: residual points ``(n_res, n_coords)``.
        data_points, data_values: observations ``(n_data, n_coords)``, ``(n_data,)``.
        reg_points: points of the regulariser and of the pre-training misfit, ``(n_reg, len(axes))``.
        axes: the coordinates ``f`` depends on (indices into ``z``).
        w_reg: weight of the regulariser (eq. 12; ``0``: none).
        reg: ``"h1"`` (mean squared gradient norm) or ``"tv"`` (mean l1 norm of the gradient).
        name: the function's name in reports (``"D"``, ``"u0"``).
        monitor: points ``(n_mon, len(axes))`` at which training reports ``f`` (default: 3 of ``reg_points``).
        coords: names of the coordinates of ``z``.
    """

    operator: Callable
    collocation: np.ndarray
    data_points: np.ndarray
    data_values: np.ndarray
    reg_points: np.ndarray
    axes: tuple
    w_reg: float = 0.0
    reg: str = "h1"
    name: str = "f"
    monitor: np.ndarray | None = None
    coords: tuple = ()

    def __post_init__(self):
        where = "FunctionProblem"
        if not callable(self.operator):
            raise TypeError(f"{where}: operator must be callable (u, f, z) -> residual.")
        base = L.PointwiseProblem(lambda u, z, th: u(z), self.collocation, self.data_points, self.data_values, (),
                                  (), self.coords)
        axes = tuple(int(a) for a in np.atleast_1d(self.axes))
        if not axes or any(a < 0 or a >= base.collocation.shape[1] for a in axes):
            raise ValueError(f"{where}: axes {self.axes} must index the {base.collocation.shape[1]} coordinates.")
        reg = L.check_points(where, "reg_points", self.reg_points, len(axes))
        mon = reg[np.linspace(0, len(reg) - 1, min(3, len(reg))).astype(int)] if self.monitor is None else \
            L.check_points(where, "monitor", self.monitor, len(axes))
        positive(where, "w_reg", self.w_reg, allow_zero=True)
        choice(where, "reg", self.reg, REGULARISERS)
        for field, value in (("collocation", base.collocation), ("data_points", base.data_points),
                             ("data_values", base.data_values), ("reg_points", reg), ("axes", axes),
                             ("monitor", mon), ("coords", base.coords), ("w_reg", float(self.w_reg))):
            object.__setattr__(self, field, value)

    def theta(self, values) -> dict:
        """``{"f(y)": value}`` for the monitor values (what ``fit`` reports)."""
        names = [self.coords[a] for a in self.axes]
        return {f"{self.name}({','.join(f'{n}={v:.2f}' for n, v in zip(names, y))})": values[k]
                for k, y in enumerate(self.monitor)}


class FunctionModel(eqx.Module):
    """The local operator ``u`` and the unknown function ``f`` together: ``field(points)``, ``function(points)``."""

    u: eqx.Module
    f: eqx.Module
    axes: tuple = eqx.field(static=True)

    def function(self, points):
        """``f`` at ``points`` ``(n, len(axes))``, shape ``(n,)``."""
        return function_values(self.f, points)

    def field(self, points):
        """``U(z) = u(z; f(z[axes]))`` at ``points`` ``(n, n_coords)``, shape ``(n,)``."""
        u, _ = composite(self.u, self.f, self.axes)
        return jax.vmap(u)(jnp.asarray(points, _dtype(self.u)))


def _dtype(net):
    return jax.tree_util.tree_leaves(eqx.filter(net, eqx.is_inexact_array))[0].dtype


def function_values(f_net, points):
    """``f(y)`` at ``points`` ``(n, len(axes))`` (in the network's dtype), shape ``(n,)``."""
    pts = jnp.asarray(points, _dtype(f_net))
    empty = jnp.zeros((0,), pts.dtype)
    return jax.vmap(lambda y: f_net(y, empty))(pts)


def composite(u_net, f_net, axes, delta=0.0):
    """The functions ``(U_delta, f + delta)`` of the module docstring, on one point each."""
    def f(y):
        return f_net(y, jnp.zeros((0,), y.dtype)) + delta

    def u(z):
        return u_net(z, jnp.reshape(f(z[jnp.asarray(axes)]), (1,)))

    return u, f


def residuals(u_net, f_net, problem: FunctionProblem, delta=0.0):
    """``r(z_i; delta)`` at every collocation point, shape ``(n_res,)``."""
    u, f = composite(u_net, f_net, problem.axes, delta)
    return jax.vmap(lambda z: problem.operator(u, f, z))(jnp.asarray(problem.collocation, _dtype(u_net)))


def residual_gradients(u_net, f_net, problem: FunctionProblem, *, method: str = "autodiff", eps: float = 1e-3):
    """``d r(z_i; delta) / d delta`` at ``delta = 0``, shape ``(n_res,)``: autodiff or central differences."""
    choice("residual_gradients", "method", method, ("autodiff", "fd"))
    if method == "fd":
        return (residuals(u_net, f_net, problem, eps) - residuals(u_net, f_net, problem, -eps)) / (2 * eps)
    zero = jnp.zeros((), _dtype(u_net))
    return jax.jvp(lambda d: residuals(u_net, f_net, problem, d), (zero,), (jnp.ones_like(zero),))[1]


def local_operator_loss(u_net, f_net, problem: FunctionProblem, w_rgrad: float, *, method: str = "autodiff",
                        eps: float = 1e-3):
    """``L_LO = L_res + w_rgrad L_rgrad`` with the auxiliary variable (eq. 13-14, 16); returns
    ``(L_LO, (L_res, L_rgrad))``."""
    res = jnp.mean(residuals(u_net, f_net, problem) ** 2)
    rgrad = jnp.mean(residual_gradients(u_net, f_net, problem, method=method, eps=eps) ** 2)
    return res + w_rgrad * rgrad, (res, rgrad)


def regulariser(f_net, problem: FunctionProblem):
    """``L_reg`` (eq. 12): mean squared gradient norm (``"h1"``) or mean l1 gradient norm (``"tv"``) of ``f``."""
    _, f = composite(None, f_net, problem.axes)
    pts = jnp.asarray(problem.reg_points, _dtype(f_net))
    grads = jax.vmap(jax.grad(f))(pts)
    return jnp.mean(jnp.sum(grads**2 if problem.reg == "h1" else jnp.abs(grads), axis=1))


def data_loss(u_net, f_net, problem: FunctionProblem, values=None, points=None):
    """``mean_j (U(z_j) - y_j)^2`` at the data (or at given ``points`` with ``values``)."""
    model = FunctionModel(u_net, f_net, problem.axes)
    pred = model.field(problem.data_points if points is None else points)
    values = problem.data_values if values is None else values
    return jnp.mean((pred - jnp.asarray(values, pred.dtype)) ** 2)


class _Parts(NamedTuple):
    rest_u: eqx.Module
    rest_f: eqx.Module
    reference: tuple | None
    function0: tuple


def _check_networks(problem, u_net, f_net, settings):
    if not isinstance(problem, FunctionProblem):
        raise TypeError(f"function_trainer: problem must be a FunctionProblem, got {type(problem).__name__}.")
    if not isinstance(settings, BiLOSettings):
        raise TypeError(f"function_trainer: settings must be BiLOSettings, got {type(settings).__name__}.")
    if settings.inner_steps:
        raise ValueError("function_trainer: inner_steps is not supported for unknown functions; use 0.")
    if settings.method == "bilo" and not (u_net.uses_params and u_net.embedding.shape[1] == 1):
        raise ValueError("function_trainer: BiLO needs a local operator that sees one auxiliary variable "
                         "(local_operator_net(seed, n_coords, 1, uses_params=True)).")
    if u_net.n_coords != problem.collocation.shape[1]:
        raise ValueError(f"function_trainer: the local operator takes {u_net.n_coords} coordinate(s), "
                         f"the problem's points have {problem.collocation.shape[1]}.")
    if f_net.n_coords != len(problem.axes) or f_net.uses_params:
        raise ValueError(f"function_trainer: the function network must take the {len(problem.axes)} coordinate(s) "
                         f"{problem.axes} and no parameters (local_operator_net(seed, {len(problem.axes)}, 0, "
                         f"uses_params=False)).")


def function_trainer(problem: FunctionProblem, u_net, f_net, settings: BiLOSettings = BiLOSettings(), *,
                     function0, reference=None) -> Trainer:
    """``init``/``step``/``run`` of pre-training and fine-tuning for an unknown function (module docstring).

    Args:
        problem: the ``FunctionProblem``.
        u_net: the local operator ``local_operator_net(seed, n_coords, 1)`` (``uses_params=False``: the PINN).
        f_net: the function network ``local_operator_net(seed, len(axes), 0, uses_params=False)``.
        settings: ``BiLOSettings`` (``lr_net`` for ``W``, ``lr_theta`` for ``V``, ``w_rgrad``, ``w_data``, ``rgrad``).
        function0: values of the initial guess ``f_0`` at ``problem.reg_points`` (pre-training target).
        reference: ``(points, values)`` of a numerical solution at ``f_0`` (pre-training), or ``None``.

    Returns:
        A ``bodil.bilo.train.Trainer`` for ``bodil.bilo.fit``: ``init(p0=None, params=None, pretrain=False)`` starts
        from the function weights ``p0`` (``result.state.p``; default those of ``f_net``) and local-operator
        weights ``params``; ``network(state)`` is a ``FunctionModel``; ``fit``'s ``theta`` holds ``f`` at the
        monitor points.

    Raises:
        ValueError / TypeError: networks that do not fit the problem, values or points of the wrong shape.
    """
    _check_networks(problem, u_net, f_net, settings)
    f0 = jnp.asarray(L.check_values("function_trainer", "function0", function0, problem.reg_points))
    if reference is not None:
        pts = L.check_points("function_trainer", "reference points", reference[0], problem.collocation.shape[1])
        reference = (jnp.asarray(pts), jnp.asarray(L.check_values("function_trainer", "reference values",
                                                                  reference[1], pts)))
    W0, rest_u = split(u_net)
    V0, rest_f = split(f_net)
    dtype = jax.tree_util.tree_leaves(W0)[0].dtype
    parts = _Parts(rest_u, rest_f, reference, (jnp.asarray(problem.reg_points, dtype), f0.astype(dtype)))
    opt_w, opt_v = optax.adam(settings.lr_net), optax.adam(settings.lr_theta)
    step = _make_step(problem, parts, settings, opt_w, opt_v)

    def nets(W, V):
        return eqx.combine(W, rest_u), eqx.combine(V, rest_f)

    def monitor(state):
        return function_values(eqx.combine(state.p, rest_f), problem.monitor)

    def init(p0=None, params=None, pretrain: bool = False) -> BiLOState:
        V = V0 if p0 is None else p0
        W = W0 if params is None else params
        for got, ref, what in ((V, V0, "p0 (function weights)"), (W, W0, "params (local-operator weights)")):
            if jax.tree_util.tree_structure(got) != jax.tree_util.tree_structure(ref):
                raise ValueError(f"function_trainer.init: {what} do not have the structure of the trainer's network; "
                                 f"pass result.state.p / result.state.params of networks of the same size.")
        return BiLOState(W, V, opt_w.init(W), opt_v.init(V), jnp.zeros((), jnp.int32), jnp.asarray(bool(pretrain)))

    @eqx.filter_jit
    def run(state, y, n):
        return jax.lax.scan(lambda c, _: step(c, y), state, None, length=n)

    def values(y):
        y = problem.data_values if y is None else L.check_values("function_trainer", "values", y, problem.data_points)
        return jnp.asarray(y, dtype)

    def lower_level(W, V):  # L_LO at fixed function weights (eq. 16)
        return local_operator_loss(*nets(W, V), problem, settings.w_rgrad, method=settings.rgrad,
                                   eps=settings.fd_eps)[0]

    step_jit = jax.jit(step)
    return Trainer(init, lambda state, y=None: step_jit(state, values(y)),
                   lambda state, n, y=None: run(state, values(y), int(n)),
                   lambda state: FunctionModel(*nets(state.params, state.p), problem.axes), problem, settings,
                   jax.jit(monitor), jax.jit(lower_level) if settings.method == "bilo" else None)


def _make_step(problem: FunctionProblem, parts: _Parts, s: BiLOSettings, opt_w, opt_v):
    """One simultaneous step (BiLO: W on the lower level, V on the upper; PINN: one loss in (W, V))."""
    bilo = s.method == "bilo"

    def nets(W, V):
        return eqx.combine(W, parts.rest_u), eqx.combine(V, parts.rest_f)

    def function_misfit(V):
        values = function_values(eqx.combine(V, parts.rest_f), parts.function0[0])
        return jnp.mean((values - parts.function0[1]) ** 2)

    def lower(W, V, pre, y):
        u_net, f_net = nets(W, V)
        if bilo:
            loss, (res, rgrad) = local_operator_loss(u_net, f_net, problem, s.w_rgrad, method=s.rgrad, eps=s.fd_eps)
        else:
            res = jnp.mean(residuals(u_net, f_net, problem) ** 2)
            rgrad = jnp.zeros((), res.dtype)
            loss = res + jnp.where(pre, 0.0, s.w_data) * data_loss(u_net, f_net, problem, y)
        if parts.reference is not None:
            fit = data_loss(u_net, f_net, problem, parts.reference[1], parts.reference[0])
            loss = loss + jnp.where(pre, s.w_reference, 0.0) * fit
        return loss, (res, rgrad)

    def upper(V, W, pre, y):
        u_net, f_net = nets(W, V)
        if bilo:
            fine = data_loss(u_net, f_net, problem, y)
        else:
            fine = lower(W, V, pre, y)[0]
        fine = fine + problem.w_reg * regulariser(f_net, problem) if problem.w_reg else fine
        return jnp.where(pre, function_misfit(V), fine)

    def step(state: BiLOState, y):
        W, V, pre = state.params, state.p, state.pretraining
        (loss, (res, rgrad)), g_w = jax.value_and_grad(lower, has_aux=True)(W, V, pre, y)
        g_v = jax.grad(upper)(V, W, pre, y)
        dat = data_loss(*nets(W, V), problem, y)
        upd, ow = opt_w.update(g_w, state.opt_net, W)
        W = optax.apply_updates(W, upd)
        upd, ov = opt_v.update(g_v, state.opt_theta, V)
        V = optax.apply_updates(V, upd)
        mon = function_values(eqx.combine(V, parts.rest_f), problem.monitor)
        info = StepInfo(loss, res, rgrad, dat, mon, jnp.zeros((), jnp.int32), jnp.ones((), bool))
        return BiLOState(W, V, ow, ov, state.step + 1, pre), info

    return step
