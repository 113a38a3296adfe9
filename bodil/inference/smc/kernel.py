"""The kernel of BASIS/TMCMC: settings, state, the stage plan and the annealing maths, without executors or files.

``p_j(theta) ~ L(theta)^q_j p(theta)`` with ``0 = q_0 < q_1 < ... < q_J = 1``. ``init`` makes the state of
stage 0 from the evaluated prior draws; a stage ``j -> j + 1`` is

1. ``plan_stage``: the next exponent (``next_exponent``), the reweighting and the evidence increment
   (``reweight``), the selection and its chains (``select``, ``chain_lengths``), and every proposal step and
   uniform of every chain, drawn up front from the state's generator (``StagePlan``);
2. the chains (``chains.Chains``), advanced by whoever evaluates the likelihood, in any order;
3. ``update``: the new state from the particles the chains recorded.

``build_kernel`` puts these together with plain in-process calls of the likelihood, blackjax-style::

    algorithm = build_kernel(log_likelihood, params, SMCSettings(num_samples=256, seed=0))
    state = algorithm.init()
    while state.q < 1.0:
        state = algorithm.step(state)

``bodil.inference.smc.smc`` is the same loop with executors, asynchronous dispatch, checkpoints and progress.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from scipy.special import logsumexp

from ... import _checks
from .chains import Chains, Particles, PriorDraws
from .space import ParameterSpace

__all__ = ["SMCAlgorithm", "SMCSettings", "SMCState", "StagePlan", "build_kernel", "chain_lengths",
           "evaluate_in_process", "init", "next_exponent", "plan_stage", "prior_draws", "reweight", "seed_entropy",
           "select", "update", "weighted_cholesky"]


def seed_entropy(where: str, seed: Any) -> int:
    """The integer that seeds the run's ``numpy`` PCG64 generator: a non-negative ``int`` itself; a ``jax.random``
    key (typed or raw) its key data read as one integer (``jax.random.key(s)`` gives ``s`` for ``s < 2**32``)."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0:
        return int(seed)
    value = 0
    for word in _checks.seed_words(where, _checks.as_key(where, seed)):
        value = (value << 32) | word
    return value


class _Fields(NamedTuple):
    num_samples: int
    seed: int
    beta: float
    gamma: float
    max_chain_length: int  # 0: no limit
    lmax: int
    burn_in: int
    max_rho_update: float
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]


class SMCSettings(_Fields):
    """Everything that determines the samples (a resumed run must match these); checked when made.

    Args:
        num_samples: particles per stage (at least 2).
        seed: an integer >= 0 or a ``jax.random`` key; stored as the integer that seeds the ``numpy`` PCG64
            generator of the run (``seed_entropy``).
        beta: proposal scale: covariance ``beta^2 C`` (Korali's covariance scaling ``0.04 = 0.2^2``).
        gamma: target coefficient of variation of the incremental weights (``ESS/n = 1/(1 + gamma^2)``).
        max_chain_length: longest chain; 1 is BASIS, ``None`` or 0 (stored as 0) no limit (classic TMCMC).
        lmax: Metropolis steps per recorded chain sample. burn_in: extra unrecorded steps per chain.
        max_rho_update: largest increase of ``q`` per stage.
        names, shapes: the inferred parameters (``ParameterSpace``), so a checkpoint of other parameters is refused.
    """

    __slots__ = ()

    def __new__(cls, num_samples: int = 512, seed: Any = 0, beta: float = 0.2, gamma: float = 1.0,
                max_chain_length: int | None = 1, lmax: int = 1, burn_in: int = 0, max_rho_update: float = 1.0,
                names: tuple = (), shapes: tuple = (), *, where: str = "SMCSettings"):
        names = tuple(str(k) for k in names)
        shapes = tuple(tuple(int(i) for i in s) for s in shapes)
        if len(names) != len(shapes):
            raise ValueError(f"{where}: {len(names)} names but {len(shapes)} shapes.")
        max_chain_length = 0 if max_chain_length is None else _checks.integer(
            where, "max_chain_length (None or 0: no limit)", max_chain_length, 0)
        return super().__new__(
            cls, _checks.integer(where, "num_samples", num_samples, 2), seed_entropy(where, seed),
            _checks.positive(where, "beta", beta), _checks.positive(where, "gamma", gamma), max_chain_length,
            _checks.integer(where, "lmax", lmax, 1), _checks.integer(where, "burn_in", burn_in, 0),
            _checks.positive(where, "max_rho_update", max_rho_update), names, shapes)

    @classmethod
    def _make(cls, iterable) -> SMCSettings:
        return cls(*iterable)

    def _replace(self, **changes: Any) -> SMCSettings:
        return type(self)(**{**self._asdict(), **changes})


class SMCState(NamedTuple):
    """The particles of stage ``stage``, distributed as ``L^q p``, and all that is needed to go on."""
    stage: int
    q: float
    x: np.ndarray  # (n, d) flattened parameters
    loglik: np.ndarray  # (n,)
    logprior: np.ndarray  # (n,)
    extras: Any  # pytree of (n, ...) arrays carried with the particles (-> posterior), or None
    log_evidence: float
    rng: dict  # numpy bit-generator state
    history: tuple[dict, ...]  # per stage: q, cv, acceptance_rate, unique_selections, log_evidence, ...
    starts: Any = None  # with warm starts: one per particle (its last inner solution)
    stats: Any = None  # pytree of (n, ...) per-particle diagnostics of the evaluations (-> sample_stats), or None


def next_exponent(loglik: np.ndarray, q: float, gamma: float, max_rho_update: float = 1.0) -> tuple[float, float]:
    """``(q', cv)``: the largest ``q' <= min(1, q + max_rho_update)`` with ``cv(exp((q' - q) log L)) <= gamma``
    (bisection to rounding; ``cv = std / mean``, ``std`` with ``1/n``, increases with the step)."""
    shifted = loglik - np.max(loglik)

    def cv(dq: float) -> float:
        w = np.exp(dq * shifted)
        return float(np.std(w) / np.mean(w))

    hi = min(1.0 - q, max_rho_update)
    if cv(hi) <= gamma:
        return (1.0 if hi == 1.0 - q else q + hi), cv(hi)
    lo = 0.0
    while True:
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        lo, hi = (lo, mid) if cv(mid) > gamma else (mid, hi)
    dq = lo if lo > 0 else hi  # lo == 0: cv jumps above gamma at once (some log L = -inf); take the tiny step
    return q + dq, cv(dq)


def reweight(loglik: np.ndarray, dq: float, log_evidence: float) -> tuple[np.ndarray, float]:
    """``(w, log Z')``: the normalised incremental weights ``w_i ~ L_i^dq`` and ``log Z + log mean_i L_i^dq``."""
    log_w = dq * loglik
    lse = logsumexp(log_w)
    return np.exp(log_w - lse), log_evidence + lse - math.log(len(loglik))


def chain_lengths(counts: np.ndarray, max_chain_length: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Korali's split of selection counts into chains: ``(seed index, length)`` per chain. A particle selected
    ``k`` times starts chains of total length ``k``; while ``k > m = max_chain_length`` it splits off a chain of
    length ``m - (k % m != 0)``, the rest forms the last one (``None`` or 0: one chain of length ``k``)."""
    seeds, lengths = [], []
    for i, k in enumerate(counts):
        k = int(k)
        while k > 0:
            m = max_chain_length or k
            length = m - (k % m != 0) if k > m else k
            seeds.append(i)
            lengths.append(length)
            k -= length
    return np.asarray(seeds, dtype=int), np.asarray(lengths, dtype=int)


def select(rng: np.random.Generator, w: np.ndarray, max_chain_length: int | None) -> tuple[np.ndarray, ...]:
    """``(counts, seeds, lengths)``: counts ``k ~ Multinomial(n, w)`` and their chains (``chain_lengths``)."""
    counts = rng.multinomial(len(w), w / w.sum())
    return (counts, *chain_lengths(counts, max_chain_length))


def weighted_cholesky(x: np.ndarray, w: np.ndarray, scale: float) -> np.ndarray:
    """Cholesky factor of ``scale^2 C``, ``C = sum_i w_i (x_i - m)(x_i - m)^T / (1 - sum_i w_i^2)`` (``w``
    normalised; Korali scales ``w`` by the selection counts first, we do not: less noise in ``C``)."""
    xc = x - w @ x
    cov = (w[:, None] * xc).T @ xc / max(1.0 - np.sum(w**2), 1e-300) * scale**2
    if not (np.all(np.isfinite(cov)) and np.max(np.diag(cov)) > 0):
        raise FloatingPointError("the particles have collapsed onto one point (zero weighted covariance); "
                                 "use more particles or a smaller gamma.")
    jitter = 0.0
    for _ in range(8):
        try:
            return np.linalg.cholesky(cov + jitter * np.eye(len(cov)))
        except np.linalg.LinAlgError:
            jitter = max(jitter * 100, 1e-12 * max(np.max(np.diag(cov)), 1e-300))
    raise FloatingPointError("the particles have collapsed: their weighted covariance is singular.")


class StagePlan(NamedTuple):
    """Every random draw of one stage, made before any evaluation, and the Metropolis rules that use them.

    Chain ``c`` starts at particle ``seeds[c]`` and makes ``steps[c] = burn_in + lengths[c] * lmax`` steps; its
    step ``t`` (from 1) proposes ``x + dx[row]`` and accepts if ``log_u[row] < q (log L' - log L) + log p' - log p``,
    ``row = first[c] + t - 1``. It records its particle after every ``lmax``-th step past the burn-in, into
    slots ``offsets[c] ...``, so the stage again holds ``n`` particles.
    """
    stage: int
    q: float
    cv: float
    log_evidence: float
    counts: np.ndarray  # (n,) selections per particle
    seeds: np.ndarray  # (chains,) the particle each chain starts at
    lengths: np.ndarray  # (chains,) recorded samples per chain
    steps: np.ndarray  # (chains,) Metropolis steps per chain
    first: np.ndarray  # (chains,) row of the chain's first step in dx and log_u
    offsets: np.ndarray  # (chains,) the chain's first output slot
    dx: np.ndarray  # (steps.sum(), d) proposal steps, N(0, beta^2 C)
    log_u: np.ndarray  # (steps.sum(),) log of the acceptance uniforms
    burn_in: int
    lmax: int
    rng: dict  # the generator's state after the draws

    def proposal(self, x: np.ndarray, chains: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The proposals of ``chains`` at their step ``t``, from their current rows ``x``."""
        return x + self.dx[self.first[chains] + t - 1]

    def accept(self, chains: np.ndarray, t: np.ndarray, ll_new: np.ndarray, ll: np.ndarray, lp_new: np.ndarray,
               lp: np.ndarray) -> np.ndarray:
        """The Metropolis decisions at ``L^q p`` for step ``t`` of ``chains``."""
        with np.errstate(invalid="ignore"):
            return self.log_u[self.first[chains] + t - 1] < self.q * (ll_new - ll) + lp_new - lp

    def recorded(self, chains: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(mask, slots)``: which of ``chains`` record their particle after step ``t``, and where."""
        rec = (t > self.burn_in) & ((t - self.burn_in) % self.lmax == 0)
        return rec, self.offsets[chains[rec]] + (t[rec] - self.burn_in) // self.lmax - 1


def prior_draws(space: ParameterSpace, settings: SMCSettings) -> tuple[np.ndarray, dict]:
    """Stage 0's draws: ``(x (num_samples, d), generator state after them)``, from ``PCG64(settings.seed)``."""
    rng = np.random.Generator(np.random.PCG64(settings.seed))
    return space.sample(rng, settings.num_samples), rng.bit_generator.state


def init(settings: SMCSettings, particles: Particles, rng: dict, wall_time: float = math.nan) -> SMCState:
    """The state of stage 0 (``q = 0``) from the evaluated prior draws and the generator state after them."""
    if not np.any(np.isfinite(particles.loglik)):
        raise ValueError(f"log_likelihood is -inf at all {len(particles.loglik)} prior draws: check the likelihood "
                         f"and the priors.")
    n = len(particles.x)
    info = dict(stage=0, q=0.0, cv=np.nan, acceptance_rate=np.nan, unique_selections=n, log_evidence=0.0,
                evaluations=n, wall_time=wall_time)
    return SMCState(0, 0.0, particles.x, particles.loglik, particles.logprior, particles.extras, 0.0, rng, (info,),
                    particles.starts, particles.stats)


def plan_stage(state: SMCState, settings: SMCSettings) -> StagePlan:
    """Stage ``state.stage + 1``: next exponent, reweighting and evidence, selection and chains, and all proposal
    steps and uniforms, per chain and step in the order of a sweep over the chains, step by step."""
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = state.rng
    q, cv = next_exponent(state.loglik, state.q, settings.gamma, settings.max_rho_update)
    w, log_evidence = reweight(state.loglik, q - state.q, state.log_evidence)
    chol = weighted_cholesky(state.x, w, settings.beta)
    counts, seeds, lengths = select(rng, w, settings.max_chain_length)
    steps = settings.burn_in + lengths * settings.lmax
    first = np.cumsum(steps) - steps
    d, total = state.x.shape[1], int(steps.sum())
    dx, u = np.empty((total, d)), np.empty(total)
    for t in range(1, int(steps.max()) + 1):
        rows = first[steps >= t] + t - 1
        dx[rows], u[rows] = rng.standard_normal((len(rows), d)), rng.random(len(rows))
    return StagePlan(state.stage + 1, q, cv, log_evidence, counts, seeds, lengths, steps, first,
                     np.cumsum(lengths) - lengths, dx @ chol.T, np.log(u), settings.burn_in, settings.lmax,
                     rng.bit_generator.state)


def update(state: SMCState, plan: StagePlan, particles: Particles, accepted: int, evaluations: int,
           wall_time: float = math.nan) -> SMCState:
    """The state after the chains of ``plan`` recorded ``particles`` (with ``accepted`` moves in ``evaluations``)."""
    info = dict(stage=plan.stage, q=plan.q, cv=plan.cv, acceptance_rate=accepted / max(int(plan.steps.sum()), 1),
                unique_selections=int(np.count_nonzero(plan.counts)), log_evidence=plan.log_evidence,
                evaluations=evaluations, wall_time=wall_time)
    return SMCState(plan.stage, plan.q, particles.x, particles.loglik, particles.logprior, particles.extras,
                    plan.log_evidence, plan.rng, state.history + (info,), particles.starts, particles.stats)


class SMCAlgorithm(NamedTuple):
    """``init() -> SMCState`` (stage 0) and ``step(state) -> SMCState`` (one stage), as blackjax's algorithms."""
    init: Callable[[], SMCState]
    step: Callable[[SMCState], SMCState]


def evaluate_in_process(fn: Callable, stage: Any, warm: bool = False) -> None:
    """Run ``stage``'s tasks (``chains.PriorDraws``, ``chains.Chains``) here, one sweep at a time."""
    tasks = stage.start()
    while tasks:
        tasks = stage.handle([(key, fn(*item) if warm else fn(item)) for key, item in tasks])


def build_kernel(log_likelihood: Callable, params: Any, settings: SMCSettings, *,
                 warm_start: bool = False) -> SMCAlgorithm:
    """BASIS/TMCMC with the likelihood called in this process: ``SMCAlgorithm(init, step)``.

    ``params``: ``bodil.Params`` (or a ``ParameterSpace``); ``settings.names``/``shapes`` are filled in from it.
    ``log_likelihood`` as for ``bodil.inference.smc.smc`` (with ``warm_start``: ``(theta, start) -> (result,
    start')``). The same settings give the same states as ``smc`` with any executor.
    """
    space = params if isinstance(params, ParameterSpace) else ParameterSpace(params)
    if settings.names != space.names or settings.shapes != space.shapes:
        if settings.names:
            raise ValueError(f"build_kernel: the settings are for the parameters {settings.names} "
                             f"{settings.shapes}, params has {space.names} {space.shapes}.")
        settings = settings._replace(names=space.names, shapes=space.shapes)

    def init_fn() -> SMCState:
        t0 = time.perf_counter()
        x, rng = prior_draws(space, settings)
        draws = PriorDraws(x, space, warm_start)
        evaluate_in_process(log_likelihood, draws, warm_start)
        return init(settings, draws.particles(), rng, time.perf_counter() - t0)

    def step_fn(state: SMCState) -> SMCState:
        t0 = time.perf_counter()
        plan = plan_stage(state, settings)
        chains = Chains(plan, state, space, warm_start)
        evaluate_in_process(log_likelihood, chains, warm_start)
        return update(state, plan, chains.particles(), chains.accepted, chains.evaluations,
                      time.perf_counter() - t0)

    return SMCAlgorithm(init_fn, step_fn)
