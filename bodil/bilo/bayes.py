"""Bayesian BiLO: HMC and MALA over the PDE parameters, the lower level re-solved before every evaluation.

Zhang, Miles, Xie and Lowengrub (2025), "Bayesian BiLO: Bilevel Local Operator Learning for Efficient Uncertainty
Quantification of Bayesian PDE Inverse Problems with Low-Rank Adaptation" (Part II of Zhang et al., "BiLO:
Bilevel Local Operator Learning for PDE inverse problems"), without the low-rank adaptation: every trained
weight ``W`` of the local-operator network moves in the lower level.

Upper level: a position ``x`` in unconstrained space, ``theta = T(x)`` (``bodil.Params`` transforms), the
network input ``p = theta / scale``; with ``W*`` the lower-level solution at ``p`` and Gaussian data of sd ``sigma``,

    log pi(x) = -n_data L_dat(W*, p) / (2 sigma^2) + log p(theta) + log |det dT/dx|,

(``n_data L_dat = sum_j (u(z_j; p, W*) - y_j)^2``) with ``grad log pi`` through the network's parameter input at
fixed ``W*``: BiLO's upper-level gradient (Part I, eq. 7).

Lower level: before each evaluation of ``log pi`` (every leapfrog position, the proposal the accept/reject sees
included), Adam steps on ``L_LO = L_res + w_rgrad L_rgrad`` (Part I, eq. 6) move ``W`` from the ``W`` of the
previous position (warm start, moments carried) until ``L_LO <= lower_tol`` or ``lower_steps`` steps. Missed
tolerances are counted per draw and warned about. A rejected proposal leaves ``(x, W)`` as they were. As
``lower_tol -> 0`` the chain targets the posterior of the converged local operator; at a finite tolerance
``log pi`` depends on the path of ``W`` (Part II's static error), so the chain's target moves as it goes.
With ``lower_start="anchor"`` every solve starts instead from the anchor ``W_a`` (the solution at the starting
point) with a fresh Adam state: ``W*(x)``, and with it ``log pi(x)`` and its gradient, are then functions of ``x``
alone, and the chain is an exact Metropolis-Hastings chain for that fixed surrogate posterior (the leapfrog map
with any position-dependent force is reversible and volume-preserving, Neal 2011, sec. 3.1); the price is more
Adam steps away from the anchor. ``solver="lbfgs"`` replaces Adam by L-BFGS (its memory restarted at each solve):
with the anchor start and ``lower_tol = 0`` every evaluation is ``lower_steps`` L-BFGS iterations from ``W_a``,
a target that is a function of ``x`` and, as ``lower_steps`` grows, closer to the posterior of the converged
local operator.

Kernels: HMC with momentum ``r ~ N(0, M)``, ``num_steps`` leapfrog steps of size ``eps`` and diagonal ``M^{-1}``,
accepted with probability ``min(1, exp(H - H'))``, ``H = -log pi + r M^{-1} r / 2``; MALA,
``x' = x + (eps^2 / 2) M^{-1} grad log pi + eps M^{-1/2} xi``, is its one-step case (the same
Metropolis-Hastings ratio; Neal 2011, "MCMC using Hamiltonian dynamics", sec. 5.2). ``blackjax.hmc`` and
``blackjax.mala`` do not fit: their log density is a function of the position alone and their state has no
place for ``W``, whereas each evaluation here starts from the previous ``W`` and returns a new one. blackjax's
dual averaging (Hoffman and Gelman 2014) tunes ``eps`` towards ``target_accept`` during warmup; at the middle
of the warmup ``M^{-1}`` becomes the regularised variance of the second quarter's draws and the averaging restarts.

``reference_posterior`` and ``fisher_kpp_forward``: NUTS for the same likelihood and prior through the
differentiable finite-difference solve, the reference the benchmark compares with. (The module is about 480
lines: the kernel, its warmup and driver and that reference belong together; the kernel's closures share the
network's split and compiled chunk, so they live in one builder, ``bayesian_bilo``.)
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any, Callable, NamedTuple

import arviz as az
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import _checks
from ..progress import ProgressMeter, as_meter
from . import losses as L
from .cases import interpolate_x, solve_fisher_kpp
from .network import LocalOperatorNet, split

KERNELS = ("hmc", "mala")
LOWER_STARTS = ("warm", "anchor")
LOWER_SOLVERS = ("adam", "lbfgs")


@dataclasses.dataclass(frozen=True)
class BayesBiLOSettings:
    """Settings of ``sample``, validated on construction.

    Attributes:
        kernel: ``"hmc"`` or ``"mala"`` (one leapfrog step).
        num_samples, num_warmup: draws kept / discarded (the warmup adapts with ``adapt``).
        step_size: leapfrog step ``eps`` (the start of the adaptation with ``adapt``).
        num_steps: HMC's leapfrog steps per proposal (MALA: 1).
        adapt: dual-averaging step size and diagonal inverse mass during warmup (needs ``num_warmup >= 20``).
        target_accept: acceptance rate aimed at (default 0.65 for HMC, 0.57 for MALA).
        inverse_mass: diagonal ``M^{-1}`` (one positive number per parameter), or ``None`` for ones.
        lower_tol: the lower-level tolerance on ``L_LO``; ``0``: every solve takes ``lower_steps`` steps (none is
            counted as missed).
        lower_steps: the most optimiser steps (Adam steps or L-BFGS iterations) of one lower-level solve.
        lower_start: where each solve starts: ``"warm"``, the previous position's weights and Adam moments (the
            authors'), or ``"anchor"``, the starting point's solution with a fresh Adam state (a target that does
            not depend on the chain's path; module docstring).
        init_steps: the most Adam steps of the first solve, at the starting point.
        chunk: draws per compiled chunk (progress is shown between chunks).
    """

    kernel: str = "hmc"
    num_samples: int = 500
    num_warmup: int = 200
    step_size: float = 0.05
    num_steps: int = 5
    adapt: bool = True
    target_accept: float | None = None
    inverse_mass: tuple | None = None
    lower_tol: float = 1e-4
    lower_steps: int = 100
    lower_start: str = "warm"
    init_steps: int = 5000
    chunk: int = 50

    def __post_init__(self):
        where = "BayesBiLOSettings"
        _checks.choice(where, "kernel", self.kernel, KERNELS)
        _checks.choice(where, "lower_start", self.lower_start, LOWER_STARTS)
        values = {k: _checks.integer(where, k, getattr(self, k), low)
                  for k, low in (("num_samples", 1), ("num_warmup", 0), ("num_steps", 1), ("lower_steps", 0),
                                 ("init_steps", 0), ("chunk", 1))}
        values["step_size"] = _checks.positive(where, "step_size", self.step_size)
        values["lower_tol"] = _checks.positive(where, "lower_tol", self.lower_tol, allow_zero=True)
        if self.target_accept is not None:
            values["target_accept"] = _checks.open_interval(where, "target_accept", self.target_accept, 0.0, 1.0)
        if self.adapt and values["num_warmup"] < 20:
            raise ValueError(f"{where}: adapt=True needs num_warmup >= 20 (step size and mass are tuned there), got "
                             f"{self.num_warmup}; pass adapt=False for fixed settings.")
        if self.inverse_mass is not None:
            values["inverse_mass"] = tuple(_checks.positive(where, "inverse_mass entry", float(v))
                                           for v in np.ravel(self.inverse_mass))
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def target(self) -> float:
        """The acceptance rate aimed at: ``target_accept``, or 0.65 (HMC) / 0.57 (MALA)."""
        return self.target_accept if self.target_accept is not None else (0.65 if self.kernel == "hmc" else 0.57)

    @property
    def steps(self) -> int:
        """Leapfrog steps per proposal: ``num_steps`` for HMC, 1 for MALA."""
        return self.num_steps if self.kernel == "hmc" else 1


class KernelParams(NamedTuple):
    """The kernel's tunable numbers, traced (one compilation serves HMC, MALA and every tolerance)."""

    step_size: jax.Array
    inverse_mass: jax.Array
    num_steps: jax.Array
    lower_tol: jax.Array
    lower_steps: jax.Array
    anchor: Any  # the weights an "anchor" solve starts from
    restart: jax.Array  # True: every solve starts from ``anchor`` with a fresh Adam state


class BayesState(NamedTuple):
    """Position ``x`` (unconstrained), ``log pi(x)`` and its gradient, the network weights ``W`` at the lower-level
    solution there with their Adam state, the lower-level loss reached and whether it met the tolerance."""

    position: jax.Array
    logdensity: jax.Array
    grad: jax.Array
    params: Any
    opt: Any
    lower_loss: jax.Array
    lower_ok: jax.Array


class BayesInfo(NamedTuple):
    """Per transition: acceptance probability, accepted, divergent (energy error > 1000), ``H`` of the kept
    state, Adam steps of the proposal's solves and how many of them missed the tolerance."""

    acceptance_rate: jax.Array
    is_accepted: jax.Array
    is_divergent: jax.Array
    energy: jax.Array
    lower_steps: jax.Array
    lower_unconverged: jax.Array


class BayesianBiLO(NamedTuple):
    """``init(W, theta, kp) -> BayesState`` (solves the lower level at ``theta``); ``step(key, state, kp) ->
    (state, info)`` (pure); ``constrain(x) -> theta``; ``network(state)``; ``run`` the compiled chunk of ``sample``."""

    init: Callable
    step: Callable
    run: Callable
    constrain: Callable
    network: Callable
    problem: L.PointwiseProblem
    params: Any
    sigma: float


def bayesian_bilo(problem: L.PointwiseProblem, net: LocalOperatorNet, params, sigma: float, *, w_rgrad: float = 0.1,
                  lr: float = 1e-3, rgrad: str = "autodiff", fd_eps: float = 1e-3, solver: str = "adam",
                  optimizer: optax.GradientTransformation | None = None) -> BayesianBiLO:
    """Build the Bayesian BiLO kernel for ``problem`` (module docstring).

    Args:
        problem: the ``PointwiseProblem`` (operator, collocation points, data).
        net: a ``LocalOperatorNet`` that sees the parameters; its structure and embedding are used (the weights
            come with the starting point).
        params: ``bodil.Params`` with a prior for each of ``problem.names`` and nothing fixed.
        sigma: noise sd of the Gaussian likelihood.
        w_rgrad, rgrad, fd_eps: the residual-gradient loss of the lower level (``losses.local_operator_loss``).
        lr: Adam learning rate of the lower level.
        solver: the lower level's optimiser: ``"adam"`` (``optax.adam(lr)``, the authors'; its moments are carried
            from solve to solve with ``lower_start="warm"``) or ``"lbfgs"`` (``optax.lbfgs()`` with its zoom line
            search; its memory restarts at every solve, the curvature pairs of another ``theta`` being stale).
            L-BFGS reaches a far lower ``L_LO`` per gradient evaluation on these small networks; with
            ``lower_start="anchor"`` and ``lower_tol=0`` each evaluation is a fixed number of L-BFGS iterations
            from the anchor, a deterministic function of ``theta``.
        optimizer: an ``optax`` transformation replacing the ``solver``'s (it receives ``value``, ``grad`` and
            ``value_fn`` as extra arguments, as ``optax.lbfgs`` needs); with ``solver="lbfgs"`` its state is
            restarted at every solve and holds the value and gradient (``optax.value_and_grad_from_state``), so
            pass a line-search method there and a first-order one with ``solver="adam"``.

    Raises:
        ValueError: a network that ignores ``p`` or does not fit the problem, priors that do not match the
            problem's parameters, a bad ``sigma``/``lr``.
    """
    where = "bayesian_bilo"
    sigma = _checks.positive(where, "sigma", sigma)
    _checks.positive(where, "lr", lr)
    names = tuple(problem.names)
    if not net.uses_params or net.embedding.shape[1] != len(names):
        raise ValueError(f"{where}: the network must see the {len(names)} parameter(s) {names}: build it with "
                         f"local_operator_net(..., n_params={len(names)}, uses_params=True).")
    if set(params.names) != set(names) or params.fixed:
        raise ValueError(f"{where}: params must hold a prior for each of {names} and nothing else, got inferred "
                         f"{params.names} and fixed {tuple(params.fixed)}.")
    _checks.choice(where, "solver", solver, LOWER_SOLVERS)
    W0, rest = split(net)
    dtype = jax.tree_util.tree_leaves(W0)[0].dtype
    n_data, restarts = len(problem.data_values), solver == "lbfgs"
    opt_lower = optimizer or (optax.lbfgs() if restarts else optax.adam(lr))

    def constrain(x):
        return params.constrain({n: x[..., i] for i, n in enumerate(names)})

    def lower_loss(W, p):
        return L.local_operator_loss(eqx.combine(W, rest), problem, p, w_rgrad, method=rgrad, eps=fd_eps)[0]

    def lower(W, opt, p, tol, max_steps):
        def f(W):
            return lower_loss(W, p)

        if restarts:  # L-BFGS: fresh memory; the line search's last value and gradient are reused
            opt, value_and_grad = opt_lower.init(W), optax.value_and_grad_from_state(f)
        else:
            def value_and_grad(W, state):
                return jax.value_and_grad(f)(W)

        def body(c):  # one optimiser step per pass (one copy of the gradient in the compiled program)
            W, opt, k, _, _ = c
            loss, g = value_and_grad(W, state=opt)
            stop = (loss <= tol) | (k >= max_steps) | ~jnp.isfinite(loss)
            upd, new_opt = opt_lower.update(g, opt, W, value=loss, grad=g, value_fn=f)
            W, opt = jax.tree_util.tree_map(lambda a, b: jnp.where(stop, a, b), (W, opt),
                                            (optax.apply_updates(W, upd), new_opt))
            return W, opt, k + (~stop).astype(jnp.int32), loss, stop

        c = (W, opt, jnp.zeros((), jnp.int32), jnp.asarray(jnp.inf, dtype), jnp.asarray(False))
        W, opt, k, loss, _ = jax.lax.while_loop(lambda c: ~c[4], body, c)
        return W, opt, k, loss

    def upper(x, W):
        theta = constrain(x)
        z = {n: x[i] for i, n in enumerate(names)}
        dat = L.data_loss(eqx.combine(W, rest), problem, problem.scaled(theta))
        return -n_data * dat / (2 * sigma**2) + params.log_prob(theta) + params.log_abs_det_jacobian(z)

    def evaluate(x, W, opt, kp: KernelParams):
        W, opt = jax.tree_util.tree_map(lambda a, b: jnp.where(kp.restart, a, b),
                                        (kp.anchor, opt_lower.init(kp.anchor)), (W, opt))
        W, opt, k, loss = lower(W, opt, problem.scaled(constrain(x)), kp.lower_tol, kp.lower_steps)
        lp, g = jax.value_and_grad(upper)(x, W)
        lp, g = lp.astype(dtype), g.astype(dtype)  # priors in float64 with a float32 network
        finite = jnp.isfinite(lp) & jnp.all(jnp.isfinite(g))
        ok = (loss <= kp.lower_tol) | (kp.lower_tol == 0)  # tolerance 0: a fixed number of steps, nothing missed
        return BayesState(x, jnp.where(finite, lp, -jnp.inf), jnp.where(finite, g, 0.0), W, opt, loss, ok), k

    def init(W, theta, kp: KernelParams, chunk: int = 50) -> BayesState:
        if jax.tree_util.tree_structure(W) != jax.tree_util.tree_structure(W0):
            raise ValueError(f"{where}.init: the weights do not have the structure of the sampler's network; pass "
                             f"result.state.params of a network of the same size.")
        z = params.unconstrain({n: jnp.asarray(theta[n], dtype) for n in names})
        x = jnp.stack([z[n] for n in names]).astype(dtype)
        # A state with log pi = -inf, then one leapfrog step of size 0 through the compiled chunk: it solves the
        # lower level at x and is always accepted (no second compilation of the solve).
        raw = BayesState(x, jnp.asarray(-jnp.inf, dtype), jnp.zeros_like(x), W, opt_lower.init(W),
                         jnp.asarray(jnp.inf, dtype), jnp.asarray(False))
        kp0 = kp._replace(step_size=jnp.zeros_like(kp.step_size), num_steps=jnp.ones_like(kp.num_steps),
                          anchor=W, restart=jnp.asarray(False))
        da = _dual_averaging(0.5)[0](jnp.asarray(1.0, dtype))
        keys = jax.random.split(jax.random.key(0), chunk)
        return run(raw, kp0, da, keys, 1, False, jnp.asarray(0.5, dtype))[0][0]

    def step(key, state: BayesState, kp: KernelParams):
        k_mom, k_acc = jax.random.split(key)
        r0 = jax.random.normal(k_mom, state.position.shape, dtype) / jnp.sqrt(kp.inverse_mass)

        def kinetic(r):
            return 0.5 * jnp.sum(kp.inverse_mass * r**2)

        def leapfrog(_, c):
            s, r, steps, missed = c
            r = r + 0.5 * kp.step_size * s.grad
            s, k = evaluate(s.position + kp.step_size * kp.inverse_mass * r, s.params, s.opt, kp)
            return s, r + 0.5 * kp.step_size * s.grad, steps + k, missed + (~s.lower_ok).astype(jnp.int32)

        zero = jnp.zeros((), jnp.int32)
        prop, r1, steps, missed = jax.lax.fori_loop(0, kp.num_steps, leapfrog, (state, r0, zero, zero))
        h0, h1 = -state.logdensity + kinetic(r0), -prop.logdensity + kinetic(r1)
        delta = jnp.where(jnp.isnan(h0 - h1), -jnp.inf, h0 - h1)
        p_accept = jnp.minimum(1.0, jnp.exp(delta))
        accept = jax.random.uniform(k_acc, dtype=dtype) < p_accept
        new = jax.tree_util.tree_map(lambda a, b: jnp.where(accept, a, b), prop, state)
        return new, BayesInfo(p_accept, accept, delta < -1000.0, jnp.where(accept, h1, h0), steps, missed)

    def run(state, kp, da, keys, n_active, adapting, target):
        # strong dtypes throughout: a weakly typed scalar (a Python number) would compile the chunk again
        state, kp, da, target = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype=jnp.result_type(a)),
                                                       (state, kp, da, target))
        return run_jit(state, kp, da, keys, jnp.asarray(n_active, jnp.int32), jnp.asarray(adapting, bool), target)

    @jax.jit
    def run_jit(state, kp, da, keys, n_active, adapting, target):
        da_update = _dual_averaging(target)[1]

        def body(c, xs):
            state, kp, da = c
            key, i = xs
            active = i < n_active
            new, info = jax.lax.cond(active, lambda: step(key, state, kp), lambda: (state, idle))
            tune = active & adapting
            da = jax.tree_util.tree_map(lambda a, b: jnp.where(tune, a, b),
                                        da_update(da, info.acceptance_rate), da)
            stats = {"acceptance_rate": info.acceptance_rate, "diverging": info.is_divergent, "energy": info.energy,
                     "lp": new.logdensity, "step_size": kp.step_size, "n_steps": kp.num_steps,
                     "lower_loss": new.lower_loss, "lower_ok": new.lower_ok, "lower_steps": info.lower_steps,
                     "lower_unconverged": info.lower_unconverged}
            kp = kp._replace(step_size=jnp.where(tune, jnp.exp(da.log_step_size), kp.step_size))
            return (new, kp, da), (new.position, stats)

        return jax.lax.scan(body, (state, kp, da), (keys, jnp.arange(keys.shape[0])))

    zero, no = jnp.zeros((), dtype), jnp.zeros((), bool)
    idle = BayesInfo(zero, no, no, zero, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))  # an inactive slot

    return BayesianBiLO(init, step, run, constrain, lambda state: eqx.combine(state.params, rest), problem, params,
                        sigma)


def sample(sampler: BayesianBiLO, init, settings: BayesBiLOSettings | None = None, *, seed=0,
           progress: bool | ProgressMeter = False, **options) -> az.InferenceData:
    """Sample ``theta`` by Bayesian BiLO (module docstring), one chain.

    Args:
        sampler: from ``bayesian_bilo``.
        init: a ``BiLOResult`` (e.g. of pre-training: its weights and ``theta``) or a pair ``(W, theta)`` with ``W``
            a ``LocalOperatorNet`` or its trained weights and ``theta`` a dict of physical parameters. The lower
            level is first solved there (at most ``init_steps`` Adam steps).
        settings: ``BayesBiLOSettings``; keyword ``options`` replace its fields (``kernel="mala"``, ...).
        seed: an integer or a ``jax.random`` key.
        progress: ``True``, ``False`` or a ``bodil.progress`` meter (one job of ``num_warmup + num_samples`` draws).

    Returns:
        ``arviz.InferenceData``: ``posterior`` holds each parameter (physical), ``sample_stats`` per draw
        ``acceptance_rate``, ``diverging``, ``energy``, ``lp`` (``log pi``), ``step_size``, ``n_steps``,
        ``lower_loss`` and ``lower_ok`` (the kept state's lower level), ``lower_steps`` (Adam steps of the
        proposal) and ``lower_unconverged`` (its solves that missed ``lower_tol``); ``attrs`` the settings, the
        adapted ``step_size_adapted`` and ``inverse_mass``, ``lower_unconverged`` (all solves, warmup included),
        ``lower_solves``, ``wall_time`` (compilation included) and ``seed`` when it was an integer.

    Raises:
        ValueError: bad settings, weights of another network, ``log pi`` not finite at the start.

    Warns:
        UserWarning: when any lower-level solve (the first included) missed ``lower_tol``.
    """
    _checks.no_unknown("bayes.sample", options, [f.name for f in dataclasses.fields(BayesBiLOSettings)])
    s = BayesBiLOSettings(**options) if settings is None else dataclasses.replace(settings, **options)
    key = _checks.as_key("bayes.sample", seed)
    W, theta = _starting_point(init)
    n_par, dtype = len(sampler.problem.names), jax.tree_util.tree_leaves(W)[0].dtype
    inv_mass = np.ones(n_par) if s.inverse_mass is None else np.asarray(s.inverse_mass)
    if inv_mass.shape != (n_par,):
        raise ValueError(f"bayes.sample: inverse_mass has {inv_mass.size} entries for {n_par} parameters.")
    kp = KernelParams(jnp.asarray(s.step_size, dtype), jnp.asarray(inv_mass, dtype), jnp.asarray(s.steps),
                      jnp.asarray(s.lower_tol, dtype), jnp.asarray(s.lower_steps), W,
                      jnp.asarray(s.lower_start == "anchor"))
    t0 = time.perf_counter()
    state = sampler.init(W, theta, kp._replace(lower_steps=jnp.asarray(s.init_steps)), s.chunk)
    kp = kp._replace(anchor=state.params)  # the solution at the start: where "anchor" solves begin
    if not np.isfinite(float(state.logdensity)):
        raise ValueError(f"bayes.sample: log pi is not finite at the start theta = {theta} (lower-level loss "
                         f"{float(state.lower_loss):.3g}); start inside the prior's support from a trained network.")
    start = (bool(state.lower_ok), float(state.lower_loss))
    carry = (state, kp, _dual_averaging(s.target)[0](kp.step_size))
    keys = jax.random.split(key, 4)
    with as_meter(progress).session(f"bayesian bilo ({s.kernel})", total=s.num_warmup + s.num_samples,
                                    unit="draw") as bar:
        carry, warm = _warmup(sampler, s, carry, keys[:3], bar)
        carry, (positions, stats) = _advance(sampler, s, carry, s.num_samples, False, keys[3], bar)
    missed = {"init": int(not start[0]), "warmup": int(sum(np.sum(o[1]["lower_unconverged"]) for o in warm)),
              "sampling": int(np.sum(stats["lower_unconverged"]))}
    solves = 1 + (s.num_warmup + s.num_samples) * s.steps
    if sum(missed.values()):
        warnings.warn(f"bayes.sample: the lower level missed lower_tol = {s.lower_tol:g} at {sum(missed.values())} of "
                      f"{solves} solves (first solve {missed['init']}, warmup {missed['warmup']}, sampling "
                      f"{missed['sampling']}; per draw in sample_stats.lower_unconverged); there the data fit is that "
                      f"of a network off its local operator. Raise lower_steps (or init_steps) or lower_tol.",
                      stacklevel=2)
    kp = carry[1]
    attrs = {k: (int(v) if isinstance(v, bool) else v) for k, v in dataclasses.asdict(s).items() if v is not None}
    attrs.update(target_accept=s.target, num_steps=s.steps, step_size_adapted=float(kp.step_size),
                 inverse_mass=[float(v) for v in kp.inverse_mass],
                 lower_unconverged=sum(missed.values()), lower_unconverged_warmup=missed["warmup"],
                 lower_solves=solves, start_lower_loss=start[1], wall_time=time.perf_counter() - t0)
    if not isinstance(seed, jax.Array):
        attrs["seed"] = int(seed)
    return az.from_dict(posterior={k: np.asarray(v)[None] for k, v in sampler.constrain(positions).items()},
                        sample_stats={k: np.asarray(v)[None] for k, v in stats.items()}, attrs=attrs)


def _advance(sampler, s, carry, n, adapting, key, bar):
    """``n`` transitions in compiled chunks of ``s.chunk``; returns the carry and ``(positions, stats)``."""
    outs, target = [], jnp.asarray(s.target, carry[1].step_size.dtype)
    for first in range(0, n, s.chunk):
        m = min(s.chunk, n - first)
        keys = jax.random.split(jax.random.fold_in(key, first), s.chunk)
        carry, out = sampler.run(*carry, keys, m, adapting, target)
        outs.append(jax.tree_util.tree_map(lambda a: np.asarray(a)[:m], out))
        bar.step(m, accept=float(np.mean(outs[-1][1]["acceptance_rate"])),
                 lower=float(np.max(outs[-1][1]["lower_loss"])))
    return carry, jax.tree_util.tree_map(lambda *a: np.concatenate(a), *outs) if outs else None


def _warmup(sampler, s, carry, keys, bar):
    """Adaptive warmup (module docstring) or a fixed-settings burn-in; returns the carry and the phases' outputs."""
    if not s.adapt:
        carry, out = _advance(sampler, s, carry, s.num_warmup, False, keys[0], bar)
        return carry, [out] if s.num_warmup else []
    quarter, half = s.num_warmup // 4, s.num_warmup // 2
    carry, first = _advance(sampler, s, carry, quarter, True, keys[0], bar)
    carry, second = _advance(sampler, s, carry, half - quarter, True, keys[1], bar)
    n = half - quarter  # Stan's regularised variance of the window
    var = np.var(second[0], axis=0, ddof=1) * n / (n + 5.0) + 1e-3 * 5.0 / (n + 5.0)
    state, kp, _ = carry
    kp = kp._replace(inverse_mass=jnp.asarray(var, kp.step_size.dtype))
    carry = (state, kp, _dual_averaging(s.target)[0](kp.step_size))
    carry, third = _advance(sampler, s, carry, s.num_warmup - half, True, keys[2], bar)
    state, kp, da = carry
    return (state, kp._replace(step_size=jnp.exp(da.log_step_size_avg)), da), [first, second, third]


def _dual_averaging(target):
    from blackjax.adaptation.step_size import dual_averaging_adaptation

    return dual_averaging_adaptation(target)


def _starting_point(init):
    """``(W, theta)`` from a ``BiLOResult`` or a pair ``(W or network, theta)``."""
    if hasattr(init, "state") and hasattr(init, "theta") and hasattr(init.state, "params"):
        W, theta = init.state.params, init.theta
    else:
        W, theta = _checks.starting_point("bayes.sample", init)
    return (split(W)[0] if isinstance(W, LocalOperatorNet) else W), dict(theta)


# ---------------------------------------------------------------------------------------------- reference
def fisher_kpp_forward(case, *, nx_ref: int | None = None, dt_ref: float | None = None) -> Callable:
    """``theta -> u(x_j, t_d; theta)`` at the data points of a ``cases.fisher_kpp`` case by the differentiable
    finite-difference reference solve (``cases.solve_fisher_kpp``; resolution of the case unless given).

    Raises:
        ValueError: data at more than one time.
    """
    pts = np.asarray(case.problem.data_points)
    if not np.allclose(pts[:, 0], pts[0, 0]):
        raise ValueError("fisher_kpp_forward: the data must all be at one time (the case's t = 1).")
    nx, dt = nx_ref or case.settings["nx_ref"], dt_ref or case.settings["dt_ref"]

    def forward(theta):
        return interpolate_x(solve_fisher_kpp(theta, [float(pts[0, 0])], nx_ref=nx, dt_ref=dt), pts[:, 1])[0]

    return forward


def reference_posterior(forward: Callable, values, params, sigma: float, init: dict, *, num_samples: int = 1000,
                        num_warmup: int = 500, target_accept: float = 0.8, seed=0,
                        progress: bool | ProgressMeter = False) -> az.InferenceData:
    """NUTS (numpyro) over ``theta`` for ``log p = -sum_j (forward(theta)_j - y_j)^2 / (2 sigma^2) + log p(theta)``,
    in the unconstrained space of ``params`` (the same likelihood and prior as ``bayesian_bilo``), from ``init``.

    Returns:
        ``arviz.InferenceData`` with the parameters in ``posterior``, ``diverging`` and ``acceptance_rate`` in
        ``sample_stats`` and ``wall_time`` (compilation included) in ``attrs``.
    """
    from numpyro.infer import MCMC, NUTS

    sigma = _checks.positive("reference_posterior", "sigma", sigma)
    names, y = params.names, jnp.asarray(values)
    z0 = params.unconstrain({n: jnp.asarray(init[n], y.dtype) for n in names})

    def potential(z):
        theta = params.constrain(z)
        return (jnp.sum((forward(theta) - y) ** 2) / (2 * sigma**2) - params.log_prob(theta)
                - params.log_abs_det_jacobian(z))

    meter, t0 = as_meter(progress), time.perf_counter()
    with meter.session("reference NUTS", total=num_warmup + num_samples, unit="draw") as bar:
        mcmc = MCMC(NUTS(potential_fn=potential, target_accept_prob=target_accept), num_warmup=num_warmup,
                    num_samples=num_samples, progress_bar=False)
        mcmc.run(_checks.as_key("reference_posterior", seed), init_params=z0, extra_fields=("diverging", "accept_prob"))
        draws = jax.block_until_ready(mcmc.get_samples())
        bar.step(num_warmup + num_samples)
    theta, extra = params.constrain(draws), mcmc.get_extra_fields()
    return az.from_dict(posterior={k: np.asarray(v)[None] for k, v in theta.items()},
                        sample_stats={"diverging": np.asarray(extra["diverging"])[None],
                                      "acceptance_rate": np.asarray(extra["accept_prob"])[None]},
                        attrs={"wall_time": time.perf_counter() - t0, "sampler": "numpyro NUTS"})
