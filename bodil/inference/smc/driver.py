"""The driver of BASIS/TMCMC: ``smc``, ``basis`` and ``tmcmc``.

It runs the kernel's stages (``kernel``, ``chains``) with the likelihood evaluated by an executor
(``bodil.inference.executors``), in sweeps (``dispatch="sync"``) or each chain as soon as its last evaluation
is back (``"async"``), checkpoints the state after every stage and every batch of finished evaluations as it
comes back (``journal``), resumes, shows a stage bar, and returns ``arviz.InferenceData``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import arviz as az
import jax
import numpy as np
import xarray as xr

from ... import _checks
from ...prior import Params
from ...progress import ProgressMeter, as_meter
from ..executors import BatchExecutor, as_executor
from . import journal as _journal
from .chains import Chains, PriorDraws
from .kernel import SMCSettings, SMCState, init, plan_stage, prior_draws, update
from .space import ParameterSpace

__all__ = ["basis", "smc", "tmcmc"]


class _WithStart:
    """``(theta, start) -> fn(theta, start)``: one argument per task, as executors pass it."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, item: tuple) -> Any:
        return self.fn(*item)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _WithStart) and other.fn == self.fn

    def __hash__(self) -> int:
        return hash((_WithStart, self.fn))


class _Evaluator:
    """Runs the tasks of a stage (``chains.PriorDraws``, ``chains.Chains``) on the executor, journaled.

    Every task is ``(key, item)`` with ``key`` naming the evaluation within its stage and ``item`` the theta
    (with warm starts: ``(theta, start)``). Results found in the journal (a resumed stage) are handed back at
    once; the others go to the executor, in waves (``"sync"``: one ``executor.evaluate`` per sweep of the
    chains) or one by one as they finish (``"async"``: ``executor.dispatch``), and each batch of finished
    results is journaled before it is used.
    """

    def __init__(self, fn: Callable, executor: Any, dispatch: str, warm: bool, journal: _journal.Journal):
        self.fn = _WithStart(fn) if warm else fn
        self.executor, self.dispatch, self.journal = executor, dispatch, journal

    def run(self, number: int, token: str, stage: Any) -> None:
        known = self.journal.open(number, token)

        def replay(tasks: list) -> list:
            pending = []
            while tasks:
                pending += [t for t in tasks if t[0] not in known]
                found = [(k, known[k]) for k, _ in tasks if k in known]
                tasks = stage.handle(found) if found else []
            return pending

        def on_done(done: list) -> list:
            self.journal.write(done)
            return replay(stage.handle(done))

        tasks = replay(stage.start())
        if not tasks:
            return
        if self.dispatch == "async":
            self.executor.dispatch(self.fn, tasks, on_done)
        else:
            while tasks:
                results = self.executor.evaluate(self.fn, [item for _, item in tasks])
                if len(results) != len(tasks):
                    raise RuntimeError(f"executor {self.executor!r} returned {len(results)} results for "
                                       f"{len(tasks)} inputs.")
                tasks = on_done([(key, r) for (key, _), r in zip(tasks, results)])


def _named(tree: Any, taken: set[str], default: str) -> dict[str, np.ndarray]:
    """The leaves of ``tree`` named by their keys (``{"field": a}`` -> ``field``; nested keys joined by ``_``;
    a bare array -> ``default``); a name already ``taken`` gets the prefix ``default_``."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = jax.tree_util.keystr(path, simple=True, separator="_") or default
        out[f"{default}_{name}" if name in taken or name in out else name] = leaf
    return out


def _attr(value: Any) -> Any:
    if isinstance(value, tuple):
        return str(value)
    if isinstance(value, int) and not -2**63 <= value < 2**63:  # a seed from a jax key: netCDF has no such int
        return str(value)
    return value


def _inference_data(state: SMCState, space: ParameterSpace, settings: SMCSettings, algorithm: str) -> az.InferenceData:
    posterior = {k: v[None] for k, v in space.split(state.x).items()}
    posterior.update({k: v[None] for k, v in _named(state.extras, set(posterior), "aux").items()})
    stats = {"log_likelihood": state.loglik[None], "log_prior": state.logprior[None]}
    stats.update({k: v[None] for k, v in _named(state.stats, set(stats), "stats").items()})
    hist = {k: ("stage", np.asarray([h[k] for h in state.history])) for k in state.history[0]}
    evaluations = int(sum(h["evaluations"] for h in state.history))
    log_evidence = float(state.log_evidence)
    attrs = dict(log_evidence=log_evidence, algorithm=algorithm, stages=state.stage, evaluations=evaluations,
                 **{k: _attr(v) for k, v in settings._asdict().items()})
    return az.InferenceData(
        posterior=az.dict_to_dataset(posterior, attrs=dict(log_evidence=log_evidence)),
        sample_stats=az.dict_to_dataset(stats, attrs=dict(log_evidence=log_evidence)),
        smc_stages=xr.Dataset(hist, attrs=dict(log_evidence=log_evidence)),
        attrs=attrs)


def smc(log_likelihood: Callable, params: Params, num_samples: int = 512, *, seed: Any = 0, beta: float = 0.2,
        gamma: float = 1.0, max_chain_length: int | None = 1, lmax: int = 1, burn_in: int = 0,
        max_rho_update: float = 1.0, executor: Any = None, dispatch: str = "auto", warm_start: bool = False,
        checkpoint: str | os.PathLike | None = None, resume: bool = False, max_stages: int = 100,
        progress: bool | ProgressMeter = False, _algorithm: str = "smc") -> az.InferenceData:
    """Sample ``p(theta | D) ~ L(theta) p(theta)`` by annealing ``L^q p`` from ``q = 0`` to 1 (module doc of
    ``bodil.inference.smc``).

    Args:
        log_likelihood: ``theta -> log L`` (a float, ``-inf`` allowed; NaN raises), ``(log L, extras)`` or
            ``(log L, extras, stats)``. ``extras`` and ``stats`` are pytrees of arrays carried with their
            particle: ``extras`` (e.g. a reconstructed field) go to ``posterior``, ``stats`` (diagnostics of the
            evaluation, e.g. whether an inner solve converged) to ``sample_stats``, each leaf under its key
            (return ``{"field": u}``, not a bare ``u``, which is called ``aux``). ``theta`` is
            ``{name: np.ndarray}`` with the inferred parameters of ``params`` (fixed ones are not passed).
            With ``warm_start=True`` it is called as ``log_likelihood(theta, start)`` and returns
            ``(result, start')``: ``start`` is the warm start carried by the particle the chain is at (``None``
            for the prior draws), ``start'`` the one to carry on if the proposal is accepted (e.g.
            ``ModeApproximation.warm_log_likelihood``).
        params: ``bodil.Params``; its numpyro distributions are the priors.
        num_samples: number of particles.
        seed: an integer or a ``jax.random`` key; seeds the ``numpy`` PCG64 generator of the run (a key
            ``jax.random.key(s)`` gives the samples of ``seed=s``). The same seed gives the same result with any
            executor and dispatch as long as ``log_likelihood`` returns the same values there (``jit``/``vmap``
            may change the last bits of a JAX function's value against eager calls; then the samples differ by
            rounding).
        beta: proposal scale: covariance ``beta^2 C`` (Korali's covariance scaling ``0.04 = 0.2^2``).
        gamma: target coefficient of variation of the incremental weights (``ESS/n = 1/(1 + gamma^2)``).
        max_chain_length: longest chain; 1 is BASIS, ``None`` no limit (classic TMCMC).
        lmax: Metropolis steps per recorded chain sample. burn_in: extra unrecorded steps per chain.
        max_rho_update: largest increase of ``q`` per stage.
        executor: ``None`` (serial), a ``concurrent.futures.Executor``, an object with ``evaluate(fn, thetas)``
            (``bodil.inference.executors``), e.g. ``DaskExecutor`` for a ``dask.distributed`` cluster.
        dispatch: ``"sync"``: the chains advance in sweeps, one ``executor.evaluate`` per Metropolis step of
            all chains; ``"async"``: each finished evaluation at once starts its chain's next step
            (``executor.dispatch``; ``PoolExecutor``, ``DaskExecutor``), so slow evaluations hold back only
            their own chain; ``"auto"``: ``"async"`` where the executor has ``dispatch``. Same result.
        warm_start: pass each evaluation the warm start of its chain's particle (see ``log_likelihood``);
            needs an executor that evaluates one theta at a time (not ``BatchExecutor``/``VmapExecutor``).
        checkpoint: file written after every stage (pickle, atomic); while a stage runs, its finished
            evaluations are written as they come back to the folder ``<checkpoint>.evaluations``.
        resume: continue from ``checkpoint`` and the finished evaluations of the interrupted stage, if any
            (settings must match; ``max_stages``, executor, dispatch and progress may differ): a run killed at
            any moment and resumed gives the same result as one not interrupted. With ``resume=False`` the run
            starts afresh and overwrites them. A checkpoint that cannot be written raises ``CheckpointError``
            (an ``OSError``) and leaves the previous one intact.
        max_stages: raise ``RuntimeError`` if ``q < 1`` after this many stages (the checkpoint is kept).
        progress: ``True`` for a tqdm bar of the stages, or a ``bodil.progress`` meter.

    Returns:
        ``arviz.InferenceData``: ``posterior`` (chain 1, draw ``num_samples``; parameters and extras),
        ``sample_stats`` (``log_likelihood``, ``log_prior`` and the stats), ``smc_stages`` (per stage: ``q``,
        ``cv``, ``acceptance_rate``, ``unique_selections``, ``log_evidence``, ``evaluations``, ``wall_time``; a
        table: ``idata.smc_stages.to_dataframe()``). ``idata.attrs``: ``log_evidence`` (also in the groups'
        attrs), ``algorithm``, ``stages``, ``evaluations`` and the settings (``SMCSettings``;
        ``max_chain_length = 0``: no limit). All of it survives ``idata.to_netcdf(path)``.
    """
    where = _algorithm
    if not callable(log_likelihood):
        raise TypeError(f"{where}: log_likelihood must be callable, got {type(log_likelihood).__name__}.")
    _checks.choice(where, "dispatch", dispatch, ("auto", "sync", "async"))
    max_stages = _checks.integer(where, "max_stages", max_stages, 1)
    if resume and checkpoint is None:
        raise ValueError(f"{where}: resume=True needs checkpoint=path.")
    space, executor = ParameterSpace(params), as_executor(executor)
    settings = SMCSettings(num_samples, seed, beta, gamma, max_chain_length, lmax, burn_in, max_rho_update,
                           space.names, space.shapes, where=where)
    can_dispatch = callable(getattr(executor, "dispatch", None))
    if dispatch == "async" and not can_dispatch:
        raise ValueError(f"{where}: dispatch='async' needs an executor with a dispatch method (PoolExecutor, "
                         f"DaskExecutor); {executor!r} has none: use dispatch='sync'.")
    if warm_start and isinstance(executor, BatchExecutor):
        raise ValueError(f"{where}: warm_start=True needs an executor that evaluates one theta at a time "
                         f"(SerialExecutor, PoolExecutor, DaskExecutor), not {executor!r}.")
    meter = as_meter(progress)
    path = os.fspath(checkpoint) if checkpoint is not None else None
    journal = _journal.Journal(path)
    journal.prepare(keep=resume)
    evaluator = _Evaluator(log_likelihood, executor, "async" if dispatch == "auto" and can_dispatch else
                           dispatch.replace("auto", "sync"), warm_start, journal)

    def first_stage() -> SMCState:
        t0 = time.perf_counter()
        x, rng = prior_draws(space, settings)
        draws = PriorDraws(x, space, warm_start)
        evaluator.run(0, _journal.token(settings, 0, None), draws)
        return init(settings, draws.particles(), rng, time.perf_counter() - t0)

    def next_stage(state: SMCState) -> SMCState:
        t0 = time.perf_counter()
        plan = plan_stage(state, settings)
        chains = Chains(plan, state, space, warm_start)
        evaluator.run(plan.stage, _journal.token(settings, plan.stage, state.rng), chains)
        return update(state, plan, chains.particles(), chains.accepted, chains.evaluations,
                      time.perf_counter() - t0)

    bar = None
    try:
        if resume and os.path.exists(path):
            state = _journal.load(path, settings)
        else:
            state = first_stage()
            if path:
                _journal.save(path, settings, state)
                journal.clear(state.stage)
        bar = meter.init(where, unit="stage", initial=state.stage)
        while state.q < 1.0:
            if state.stage >= max_stages:
                raise RuntimeError(f"{where}: the exponent is only q = {state.q:.4g} after {state.stage} "
                                   f"stages (max_stages); raise max_stages"
                                   + (" and resume=True to continue." if path else "."))
            state = next_stage(state)
            if path:
                _journal.save(path, settings, state)
                journal.clear(state.stage)
            h = state.history[-1]
            bar = meter.step(bar, 1, q=float(h["q"]), acc=float(h["acceptance_rate"]),
                             logZ=float(h["log_evidence"]))
    finally:
        if bar is not None:
            meter.close(bar)
        journal.close()  # only an empty folder: a complete run, or an error between stages
    return _inference_data(state, space, settings, where)


def basis(log_likelihood: Callable, params: Params, num_samples: int = 512, *, lmax: int = 1,
          **options: Any) -> az.InferenceData:
    """BASIS (Wu et al. 2018): ``smc`` with ``max_chain_length = 1``: every selection starts its own chain of
    ``lmax`` Metropolis steps. Other options as in ``smc`` (defaults ``beta = 0.2``, ``gamma = 1``)."""
    if "max_chain_length" in options:
        raise TypeError("basis() fixes max_chain_length=1; use tmcmc() or smc() for longer chains.")
    return smc(log_likelihood, params, num_samples, lmax=lmax, max_chain_length=1, _algorithm="basis", **options)


def tmcmc(log_likelihood: Callable, params: Params, num_samples: int = 512, *, max_chain_length: int | None = None,
          **options: Any) -> az.InferenceData:
    """TMCMC (Ching & Chen 2007): ``smc`` where a particle selected ``k`` times grows one chain of length ``k``
    (split at ``max_chain_length`` as Korali does). Other options as in ``smc``."""
    return smc(log_likelihood, params, num_samples, max_chain_length=max_chain_length, _algorithm="tmcmc",
               **options)
