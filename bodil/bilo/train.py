"""Training of BiLO and of the PINN baseline: one code path, blackjax-style ``init``/``step`` over NamedTuple states.

Zhang et al., "BiLO: Bilevel Local Operator Learning for PDE inverse problems", Algorithm 1. With network
weights ``W`` and scaled parameters ``p`` (``bodil.bilo.losses``), one step of

* BiLO (``method="bilo"``) is simultaneous gradient descent on the bilevel problem (eq. 7), by Adam with two
  learning rates: ``W <- W - a_W grad_W L_LO(W, p)`` and ``p <- p - a_p grad_p L_dat(W, p)``; the upper level
  sees the data loss only. With ``inner_steps > 0`` the lower level first takes up to ``inner_steps`` further
  ``W`` steps until ``L_LO <= inner_tol`` (the "solve the lower level to a tolerance" variant, appendix D.1.1);
* the PINN (``method="pinn"``) is gradient descent on ``L_res + w L_dat`` (eq. 11) in ``(W, p)`` together.

Pre-training (``init(p0, pretrain=True)``) keeps ``p = p_0`` and minimises the lower-level loss (the PINN: the
residual loss) plus, when a numerical solution at ``theta_0`` is given (``reference=(points, values)``), its mean
squared misfit times ``w_reference`` (sec. 2.1, "Pre-train and Fine-tune"; a solution that is small on most
points, like a tumour in a brain slice, needs a larger weight than 1 for the fit to count against the residual's
trivial solution). The phase is a flag of the state, not of the compiled
function: one compilation serves pre-training and fine-tuning.

``fit`` runs compiled chunks of ``settings.chunk`` steps, reports progress through ``bodil.progress``, stops
with ``DivergenceError`` on a NaN or exploding loss, and writes/resumes checkpoints atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checks import choice, integer, positive
from ..io import atomic_path
from ..progress import as_meter
from . import losses as L
from .network import split

METHODS = ("bilo", "pinn")


class DivergenceError(RuntimeError):
    """Training produced a NaN/infinite or exploding loss; ``step`` is where it was seen."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


@dataclasses.dataclass(frozen=True)
class BiLOSettings:
    """Settings of BiLO / PINN training, validated on construction.

    Attributes:
        method: ``"bilo"`` or ``"pinn"``.
        lr_net: Adam learning rate of the network weights ``W``.
        lr_theta: Adam learning rate of the scaled parameters ``p``.
        w_rgrad: weight of the residual-gradient loss (eq. 6; 0.1 in the authors' examples).
        w_data: the PINN's data weight ``w`` (eq. 11); unused by BiLO.
        rgrad: ``"autodiff"`` or ``"fd"`` (central differences of step ``fd_eps`` on ``p``).
        fd_eps: finite-difference step.
        inner_steps: BiLO only: the most extra lower-level steps before each simultaneous step (0: none).
        inner_tol: the lower-level tolerance those steps aim at.
        chunk: steps per compiled chunk (progress, divergence checks and checkpoints happen between chunks).
        explode: ``DivergenceError`` when the trained loss exceeds ``explode * max(first loss, 1e-3)``.
        w_reference: weight of the misfit to the numerical solution during pre-training.
        log_params: Adam moves ``log p`` instead of ``p`` (gradient ``p * dL/dp``), so the parameters stay
            positive (a diffusion coefficient or a growth rate never crosses zero) and ``lr_theta`` is a relative
            step; the starting ``p`` must be positive.
    """

    method: str = "bilo"
    lr_net: float = 1e-3
    lr_theta: float = 1e-3
    w_rgrad: float = 0.1
    w_data: float = 1.0
    rgrad: str = "autodiff"
    fd_eps: float = 1e-3
    inner_steps: int = 0
    inner_tol: float = 0.0
    chunk: int = 100
    explode: float = 1e6
    log_params: bool = False
    w_reference: float = 1.0

    def __post_init__(self):
        where = "BiLOSettings"
        choice(where, "method", self.method, METHODS)
        choice(where, "rgrad", self.rgrad, ("autodiff", "fd"))
        for name in ("lr_net", "lr_theta", "fd_eps", "explode", "w_data", "w_reference"):
            positive(where, name, getattr(self, name))
        positive(where, "w_rgrad", self.w_rgrad, allow_zero=True)
        positive(where, "inner_tol", self.inner_tol, allow_zero=True)
        integer(where, "inner_steps", self.inner_steps, 0)
        integer(where, "chunk", self.chunk, 1)
        if self.inner_steps and self.method != "bilo":
            raise ValueError(f"{where}: inner_steps is a BiLO option (the lower level); the PINN has one loss.")


class BiLOState(NamedTuple):
    """Trained weights ``params`` (``bodil.bilo.network.split``), scaled parameters ``p``, Adam states, step, and
    whether this is pre-training (``p`` fixed, reference fit on)."""

    params: Any
    p: jax.Array
    opt_net: Any
    opt_theta: Any
    step: jax.Array
    pretraining: jax.Array


class StepInfo(NamedTuple):
    """Per-step diagnostics: the losses at the start of the step, ``p`` after it, the inner-loop count."""

    loss: jax.Array       # the objective of W (L_LO, L_PINN or the pre-training loss)
    residual: jax.Array   # L_res
    rgrad: jax.Array      # L_rgrad (0 for the PINN)
    data: jax.Array       # L_dat
    p: jax.Array
    inner: jax.Array      # lower-level steps taken before the step
    inner_ok: jax.Array   # whether the lower level met inner_tol (True without an inner loop)


class Trainer(NamedTuple):
    """``init(p0, params=None, pretrain=False) -> state``; ``step(state, values=None) -> (state, info)``;
    ``run(state, n, values=None) -> (state, infos)`` (jitted); ``network(state)`` is the full network. ``values``
    replaces the problem's data values (same points): one compilation serves every noise realisation.
    ``monitor(state)`` is the vector ``problem.theta`` reads (``state.p`` when ``None``; the values of an
    unknown function at its monitor points in ``bodil.bilo.functions``). ``lower(params, p)`` is BiLO's
    lower-level loss ``L_LO`` of the weights at fixed upper-level variables (``None`` for the PINN), what
    ``bodil.bilo.lower.solve_lower`` minimises."""

    init: Any
    step: Any
    run: Any
    network: Any
    problem: Any
    settings: BiLOSettings
    monitor: Any = None
    lower: Any = None


class BiLOResult(NamedTuple):
    """What ``fit`` returns: final state and network, ``theta`` (physical), per-step ``history``, wall time."""

    state: BiLOState
    net: Any
    theta: dict
    history: dict
    wall_time: float
    inner_unconverged: int


def trainer(problem: L.PointwiseProblem, net, settings: BiLOSettings = BiLOSettings(), *,
            reference=None) -> Trainer:
    """Build the ``init``/``step``/``run`` functions of pre-training and fine-tuning.

    Args:
        problem: the ``PointwiseProblem``.
        net: the initial ``LocalOperatorNet`` (its embedding stays fixed).
        settings: ``BiLOSettings``.
        reference: ``(points, values)`` of a numerical solution at ``theta_0``, fitted during pre-training, or
            ``None``.

    Raises:
        ValueError: a network that does not fit the problem (coordinates, parameters; BiLO with a network that
            ignores ``p``) or reference points of the wrong shape.

    Returns:
        A ``Trainer``; ``init(p0, params=None, pretrain=False)`` starts from the weights of ``net`` (or ``params``,
        e.g. ``pretrained.state.params``) at ``p0`` (a dict of physical parameters or the scaled vector).
    """
    if not isinstance(settings, BiLOSettings):
        raise TypeError(f"trainer: settings must be BiLOSettings, got {type(settings).__name__}.")
    if settings.method == "bilo" and not net.uses_params:
        raise ValueError("trainer: BiLO needs a network that sees the parameters (local_operator_net(..., "
                         "uses_params=True)); without them d u / d p = 0 and the parameters never move.")
    if net.uses_params and net.embedding.shape[1] != len(problem.names):
        raise ValueError(f"trainer: the network embeds {net.embedding.shape[1]} parameter(s), the problem has "
                         f"{len(problem.names)} {problem.names}; build it with n_params={len(problem.names)}.")
    if net.n_coords != problem.collocation.shape[1]:
        raise ValueError(f"trainer: the network takes {net.n_coords} coordinate(s), the problem's "
                         f"points have {problem.collocation.shape[1]}.")
    if reference is not None:
        pts = np.asarray(reference[0], float)
        if pts.ndim != 2 or pts.shape[1] != problem.collocation.shape[1]:
            raise ValueError(f"trainer: reference points must have shape (n, {problem.collocation.shape[1]}), got "
                             f"{pts.shape}.")
        vals = L.check_values("trainer", "reference values", reference[1], pts)
        reference = (jnp.asarray(pts), jnp.asarray(vals))
    if settings.inner_steps and settings.inner_tol <= 0:
        warnings.warn("trainer: inner_steps > 0 with inner_tol = 0 always takes every inner step.", stacklevel=2)
    s, bilo = settings, settings.method == "bilo"
    params0, rest = split(net)
    opt_net, opt_theta = optax.adam(s.lr_net), optax.adam(s.lr_theta)

    def lower(params, p, pre, y):
        m = eqx.combine(params, rest)
        if bilo:
            loss, (res, rgrad) = L.local_operator_loss(m, problem, p, s.w_rgrad, method=s.rgrad, eps=s.fd_eps)
        else:
            res, rgrad = L.residual_loss(m, problem, p), jnp.zeros((), p.dtype)
            loss = res + jnp.where(pre, 0.0, s.w_data) * L.data_loss(m, problem, p, y)
        if reference is not None:
            loss = loss + jnp.where(pre, s.w_reference, 0.0) * L.fit_loss(m, p, *reference)
        return loss, (res, rgrad)

    def upper(p, params, y):
        return L.data_loss(eqx.combine(params, rest), problem, p, y)

    def w_step(params, opt, p, pre, y):
        (loss, aux), g = jax.value_and_grad(lower, has_aux=True)(params, p, pre, y)
        upd, opt = opt_net.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, loss, aux

    def inner_loop(params, opt, p, pre, y):
        def cond(c):
            return ~pre & (c[2] < s.inner_steps) & (lower(c[0], p, pre, y)[0] > s.inner_tol)

        def body(c):
            params, opt, k = c
            params, opt, _, _ = w_step(params, opt, p, pre, y)
            return params, opt, k + 1

        params, opt, k = jax.lax.while_loop(cond, body, (params, opt, jnp.zeros((), jnp.int32)))
        return params, opt, k, pre | (lower(params, p, pre, y)[0] <= s.inner_tol)

    def step(state: BiLOState, y):
        params, p, opt_w, opt_p, pre = state.params, state.p, state.opt_net, state.opt_theta, state.pretraining
        k, ok = jnp.zeros((), jnp.int32), jnp.ones((), bool)
        if bilo and s.inner_steps:
            params, opt_w, k, ok = inner_loop(params, opt_w, p, pre, y)
        if bilo:  # W on the lower level, p on the data loss
            dat, g_p = jax.value_and_grad(upper)(p, params, y)
            new_params, opt_w, loss, (res, rgrad) = w_step(params, opt_w, p, pre, y)
        else:  # PINN: one loss in (W, p)
            (loss, (res, rgrad)), (g_w, g_p) = jax.value_and_grad(lower, argnums=(0, 1), has_aux=True)(
                params, p, pre, y)
            upd, opt_w = opt_net.update(g_w, opt_w, params)
            new_params = optax.apply_updates(params, upd)
            dat = upper(p, params, y)
        if s.log_params:  # Adam on q = log p: dL/dq = p dL/dp
            q = jnp.log(p)
            upd, opt_p = opt_theta.update(g_p * p, opt_p, q)
            p = jnp.where(pre, p, jnp.exp(optax.apply_updates(q, upd)))
        else:
            upd, opt_p = opt_theta.update(g_p, opt_p, p)
            p = jnp.where(pre, p, optax.apply_updates(p, upd))
        info = StepInfo(loss, res, rgrad, dat, p, k, ok)
        return BiLOState(new_params, p, opt_w, opt_p, state.step + 1, pre), info

    def init(p0, params=None, pretrain: bool = False) -> BiLOState:
        p0 = problem.scaled(p0) if isinstance(p0, dict) else jnp.asarray(p0)
        params = params0 if params is None else params
        p0 = p0.astype(jax.tree_util.tree_leaves(params)[0].dtype)
        if p0.shape != (len(problem.names),):
            raise ValueError(f"trainer.init: p0 has shape {p0.shape}; the problem has {len(problem.names)} "
                             f"parameter(s) {problem.names}.")
        if s.log_params and not bool(jnp.all(p0 > 0)):
            raise ValueError(f"trainer.init: log_params=True moves log p, so every starting parameter must be "
                             f"positive; got p0 = {np.asarray(p0)}.")
        if jax.tree_util.tree_structure(params) != jax.tree_util.tree_structure(params0):
            raise ValueError("trainer.init: params do not have the structure of the trainer's network; pass "
                             "result.state.params of a network of the same size.")
        return BiLOState(params, p0, opt_net.init(params), opt_theta.init(p0), jnp.zeros((), jnp.int32),
                         jnp.asarray(bool(pretrain)))

    @eqx.filter_jit
    def run(state, y, n):
        return jax.lax.scan(lambda c, _: step(c, y), state, None, length=n)

    def values(y):
        if y is None:
            return jnp.asarray(problem.data_values, params0_dtype)
        return jnp.asarray(L.check_values("trainer", "values", y, problem.data_points), params0_dtype)

    def network(state):
        return eqx.combine(state.params, rest)

    params0_dtype = jax.tree_util.tree_leaves(params0)[0].dtype
    step_jit = jax.jit(step)
    def lower_level(params, p):
        return L.local_operator_loss(eqx.combine(params, rest), problem, p, s.w_rgrad, method=s.rgrad,
                                     eps=s.fd_eps)[0]

    return Trainer(init, lambda state, values_=None: step_jit(state, values(values_)),
                   lambda state, n, values_=None: run(state, values(values_), int(n)), network, problem, settings,
                   lower=jax.jit(lower_level) if bilo else None)


# ---------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path, state: BiLOState, history: dict) -> str:
    """Write ``state`` and ``history`` to one ``.npz`` file atomically (temporary file, then ``os.replace``)."""
    leaves = jax.tree_util.tree_leaves(state)
    arrays = {f"leaf{i}": np.asarray(x) for i, x in enumerate(leaves)}
    arrays.update({f"hist_{k}": np.asarray(v) for k, v in history.items()})
    arrays["meta"] = np.asarray(json.dumps({"leaves": len(leaves), "step": int(state.step)}))
    with atomic_path(os.fspath(path), ".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return os.fspath(path)


def load_checkpoint(path, template: BiLOState) -> tuple[BiLOState, dict]:
    """Read a checkpoint written by ``save_checkpoint`` into the structure of ``template`` (same network/settings)."""
    with np.load(os.fspath(path)) as data:
        meta = json.loads(str(data["meta"]))
        leaves, treedef = jax.tree_util.tree_flatten(template)
        if meta["leaves"] != len(leaves):
            raise ValueError(f"load_checkpoint: {path!r} holds {meta['leaves']} arrays, the training state has "
                             f"{len(leaves)}: it was written for another network or method; delete it or use "
                             f"another path.")
        new = []
        for i, ref in enumerate(leaves):
            x = data[f"leaf{i}"]
            if x.shape != np.shape(ref):
                raise ValueError(f"load_checkpoint: array {i} of {path!r} has shape {x.shape}, the training state "
                                 f"expects {np.shape(ref)}: another network size; delete it or use another path.")
            new.append(jnp.asarray(x, dtype=jnp.asarray(ref).dtype))
        history = {k[5:]: data[k] for k in data.files if k.startswith("hist_")}
    return jax.tree_util.tree_unflatten(treedef, new), history


def _check_divergence(info: StepInfo, first: float, explode: float, step0: int, checkpoint) -> None:
    loss, p = np.asarray(info.loss), np.asarray(info.p)
    bad = ~np.isfinite(loss) | ~np.all(np.isfinite(p), axis=-1)
    big = loss > explode * max(first, 1e-3)
    where = np.flatnonzero(bad | big)
    if where.size:
        i = int(where[0])
        what = "a NaN or infinite loss/parameter" if bad[i] else f"an exploding loss {loss[i]:.3g} (first {first:.3g})"
        hint = f"; resume from the last checkpoint {os.fspath(checkpoint)!r}" if checkpoint else ""
        raise DivergenceError(f"fit: training diverged at step {step0 + i + 1} with {what}. Lower lr_net/lr_theta "
                              f"or start from a pre-trained network{hint}.", step0 + i + 1)


def fit(tr: Trainer, state: BiLOState, steps: int, *, values=None, progress=False, checkpoint=None,
        checkpoint_every=None, desc: str | None = None) -> BiLOResult:
    """Train until ``state.step == steps`` in compiled chunks of ``tr.settings.chunk`` steps.

    Args:
        tr: a ``Trainer``.
        state: the starting state (``tr.init(p0)``).
        steps: total number of steps of this phase.
        values: data values replacing ``tr.problem.data_values`` (same points), e.g. another noise draw.
        progress: ``True``, ``False`` or a ``bodil.progress`` meter.
        checkpoint: a ``.npz`` path; when it exists, training resumes from it (its state and history replace
            ``state``), and it is rewritten every ``checkpoint_every`` steps and at the end.
        checkpoint_every: steps between checkpoints (default: every chunk).
        desc: progress label.

    Returns:
        ``BiLOResult``; ``inner_unconverged`` counts the steps whose lower level missed ``inner_tol`` (a warning
        says so when it is not zero).

    Raises:
        DivergenceError: a NaN/infinite or exploding loss (nothing is checkpointed past the last good chunk).
    """
    steps = integer("fit", "steps", steps, 0)
    history: dict = {}
    if checkpoint is not None and os.path.exists(checkpoint):
        state, history = load_checkpoint(checkpoint, state)
    every = tr.settings.chunk if checkpoint_every is None else integer("fit", "checkpoint_every", checkpoint_every, 1)
    chunks = [history] if history else []
    done = int(state.step)
    meter = as_meter(progress)
    phase = "pre-training" if bool(state.pretraining) else "inverse"
    bar = meter.init(desc or f"{tr.settings.method} {phase}", total=steps,
                     unit="step", initial=min(done, steps))
    t0, last_saved = time.perf_counter(), done
    try:
        while done < steps:
            n = min(tr.settings.chunk, steps - done)
            new_state, info = tr.run(state, n, values)
            info = {k: np.asarray(v) for k, v in info._asdict().items()}
            first = float(chunks[0]["loss"][0]) if chunks else float(info["loss"][0])
            _check_divergence(StepInfo(**info), first, tr.settings.explode, done, checkpoint)
            state, done = new_state, done + n
            chunks.append(info)
            theta = tr.problem.theta(info["p"][-1])
            meter.step(bar, n, loss=float(info["loss"][-1]), **{k: float(v) for k, v in theta.items()})
            if checkpoint is not None and (done - last_saved >= every or done == steps):
                save_checkpoint(checkpoint, state, _concat(chunks))
                last_saved = done
    finally:
        meter.close(bar)
    history = _concat(chunks)
    unconverged = int(np.sum(~history["inner_ok"].astype(bool))) if history else 0
    if unconverged:
        warnings.warn(f"fit: the lower level missed inner_tol = {tr.settings.inner_tol:g} within inner_steps = "
                      f"{tr.settings.inner_steps} at {unconverged} of {done} steps; the upper-level gradient there is "
                      f"approximate (raise inner_steps or inner_tol).", stacklevel=2)
    vec = state.p if tr.monitor is None else tr.monitor(state)
    theta = {k: float(v) for k, v in tr.problem.theta(np.asarray(vec)).items()}
    return BiLOResult(state, tr.network(state), theta, history, time.perf_counter() - t0, unconverged)


def _concat(chunks) -> dict:
    if not chunks:
        return {}
    return {k: np.concatenate([np.asarray(c[k]) for c in chunks]) for k in chunks[0]}
