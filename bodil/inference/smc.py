"""BASIS and TMCMC: one sequential Monte Carlo sampler with two settings, and the log-evidence.

The target ``p(theta | D) ~ L(theta) p(theta)`` is reached through ``p_j(theta) ~ L(theta)^q_j p(theta)``
with ``0 = q_0 < q_1 < ... < q_J = 1`` (Ching & Chen 2007; Wu et al. 2018; Korali's ``TMCMC`` solver).
Stage 0 draws ``n`` particles from the prior. Stage ``j -> j + 1``:

1. Next exponent: ``dq`` solves ``cv(w) = std(w) / mean(w) = gamma`` with ``w_i = exp(dq * log L_i)``
   (bisection; ``std`` with ``1/n``, so ``ESS / n = 1 / (1 + cv^2)``); ``q + dq`` is capped at 1 and at
   ``q + max_rho_update``.
2. Evidence: ``log Z += log(mean_i w_i)`` (a logsumexp), so ``log Z = sum_j log mean_i w_i^(j)``.
3. Proposal: ``N(0, beta^2 C)`` with ``C`` the weighted sample covariance of the particles with the
   normalised weights ``w``: ``C = sum_i w_i (x_i - m)(x_i - m)^T / (1 - sum_i w_i^2)``
   (Korali scales ``w_i`` by the selection counts first; we do not, which lowers the noise in ``C``).
4. Selection: counts ``k ~ Multinomial(n, w)``. Korali's chains: a seed picked ``k`` times starts chains
   of total length ``k``; while ``k > max_chain_length`` it splits off a chain of length
   ``max_chain_length - (k % max_chain_length != 0)``, the rest forms the last chain (``None``: no limit,
   one chain of length ``k``: classic TMCMC). ``max_chain_length = 1`` is BASIS.
5. Chains: Metropolis at ``L^q' p``, ``accept if log u < q' (log L' - log L) + log p' - log p``; a proposal
   outside the prior's support is rejected without evaluating ``L``. A chain of length ``l`` makes
   ``burn_in + l * lmax`` steps and records its state after each ``lmax``-th step past the burn-in, so
   every stage again holds ``n`` particles (``lmax = 1, burn_in = 0`` is Korali's rule).

The run stops after the chains at ``q = 1``; the particles are then equally weighted posterior samples.
All random numbers come from one ``numpy.random.Generator(PCG64(seed))`` whose state is checkpointed. A
stage draws all of its random numbers (selection, then the proposal steps and uniforms of every chain and
step) before any evaluation, so each chain's path depends only on its own draws and likelihood values: the
chains may advance in sweeps (``dispatch="sync"``) or each as soon as its last evaluation is back
(``"async"``, as Korali's conduits do), on any executor, with bit-identical results. With ``warm_start``
every particle carries a warm start (its last inner solution) that goes with its chain's next evaluation.

Checkpoints are pickle files (trusted input only), each written to a temporary file in its folder, flushed
and moved into place (``os.replace``). ``checkpoint`` holds ``{"format", "settings", "state"}`` after every
stage; while a stage runs, every batch of finished evaluations goes to ``<checkpoint>.evaluations/`` as it
comes back, and a resumed run replays them, so a run killed at any point continues where it was.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import re
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from scipy.special import logsumexp
from tqdm.auto import tqdm

from ..io import atomic_path
from ..prior import Params
from .executors import BatchExecutor, as_executor

__all__ = ["CheckpointError", "SMCState", "Settings", "basis", "chain_lengths", "next_exponent", "smc", "tmcmc"]
_FORMAT = "bodil.smc/1"
_EVALUATIONS = "bodil.smc-evaluations/1"


class Settings(NamedTuple):
    """Everything that determines the samples (a resumed run must match these)."""
    n: int
    seed: int
    beta: float
    gamma: float
    max_chain_length: int  # 0: no limit
    lmax: int
    burn_in: int
    max_rho_update: float
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]


class SMCState(NamedTuple):
    """The particles of stage ``stage``, distributed as ``L^q p``, and all that is needed to go on."""
    stage: int
    q: float
    x: np.ndarray  # (n, d) flattened parameters
    loglik: np.ndarray  # (n,)
    logprior: np.ndarray  # (n,)
    aux: Any  # pytree of (n, ...) arrays, or None
    log_evidence: float
    rng: dict  # numpy bit-generator state
    history: tuple[dict, ...]
    starts: Any = None  # with warm_start: one warm start per particle (its last inner solution)


class _Space:
    """Flat ``(n, d)`` particle rows <-> theta dicts, vectorised prior density and prior draws."""

    def __init__(self, params: Params):
        if not isinstance(params, Params):
            raise TypeError(f"params must be a bodil.Params, got {type(params).__name__}.")
        if not params.priors:
            raise ValueError("params has no inferred entries: give at least one parameter a prior, "
                             "e.g. Params(k=bodil.Uniform(0.0, 1.0)).")
        self.priors = params.priors
        self.names = tuple(params.priors)
        self.shapes = tuple(tuple(d.batch_shape + d.event_shape) for d in self.priors.values())
        sizes = [math.prod(s) for s in self.shapes]
        ends = np.cumsum(sizes)
        self.slices = [slice(int(e - s), int(e)) for s, e in zip(sizes, ends)]
        self.d = int(ends[-1])
        self._log_prior = jax.jit(self._log_prior_jax)

    def split(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Rows ``(m, d)`` -> ``{name: (m, *shape)}``."""
        return {k: x[:, sl].reshape((len(x),) + sh) for k, sl, sh in zip(self.names, self.slices, self.shapes)}

    def thetas(self, x: np.ndarray) -> list[dict[str, np.ndarray]]:
        return [{k: row[sl].reshape(sh) for k, sl, sh in zip(self.names, self.slices, self.shapes)} for row in x]

    def log_prior(self, x: np.ndarray) -> np.ndarray:
        """``log p(theta)`` per row, ``-inf`` outside the support (jitted; rows padded to a power of two)."""
        m = len(x)
        size = 1 << max(m - 1, 0).bit_length()
        padded = np.concatenate([x, np.repeat(x[-1:], size - m, axis=0)]) if size > m else x
        return np.asarray(self._log_prior(padded), dtype=float)[:m]

    def _log_prior_jax(self, x):
        total = jnp.zeros(x.shape[0], x.dtype)
        for sl, sh, d in zip(self.slices, self.shapes, self.priors.values()):
            v = x[:, sl].reshape((x.shape[0],) + sh)
            lp = jnp.where(d.support(v), d.log_prob(v), -jnp.inf)
            total = total + lp.reshape(x.shape[0], -1).sum(axis=1)
        return total

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        keys = jax.random.split(jax.random.PRNGKey(int(rng.integers(0, 2**32))), len(self.names))
        cols = [np.asarray(d.sample(key, (n,)), dtype=float).reshape(n, -1)
                for key, d in zip(keys, self.priors.values())]
        return np.concatenate(cols, axis=1)


def next_exponent(loglik: np.ndarray, q: float, gamma: float, max_rho_update: float = 1.0) -> tuple[float, float]:
    """``(q', cv)``: the largest ``q' <= min(1, q + max_rho_update)`` with ``cv(exp((q' - q) log L)) <= gamma``
    (bisection to rounding; ``cv`` increases with the step)."""
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


def chain_lengths(counts: np.ndarray, max_chain_length: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Korali's split of selection counts into chains: ``(seed index, length)`` per chain."""
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


def _weighted_cholesky(x: np.ndarray, w: np.ndarray, scale: float) -> np.ndarray:
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


def _parse(results: list, thetas: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, Any]:
    """Log-likelihoods ``(m,)`` and stacked aux (or None) of the results of ``log_likelihood`` at ``thetas``."""
    has_aux = [isinstance(r, tuple) for r in results]
    if any(has_aux) and not all(has_aux):
        raise TypeError("log_likelihood must return either always a float or always (float, aux).")
    lls = np.empty(len(results))
    for i, (r, theta) in enumerate(zip(results, thetas)):
        value = np.asarray(r[0] if has_aux[i] else r)
        if value.size != 1:
            raise TypeError(f"log_likelihood must return a scalar, got shape {value.shape}.")
        lls[i] = float(value.reshape(()))
        if np.isnan(lls[i]) or lls[i] == np.inf:
            shown = {k: np.asarray(v).tolist() for k, v in theta.items()}
            raise FloatingPointError(f"log_likelihood returned {lls[i]} at theta = {shown}; return a finite "
                                     f"value, or -inf where the parameters are impossible.")
    aux = None
    if results and has_aux[0]:
        aux = jax.tree_util.tree_map(lambda *a: np.stack([np.asarray(v) for v in a]), *[r[1] for r in results])
    return lls, aux


def _tree_set(dst: Any, idx: np.ndarray, src: Any, sidx: np.ndarray) -> None:
    for d, s in zip(jax.tree_util.tree_leaves(dst), jax.tree_util.tree_leaves(src)):
        d[idx] = s[sidx]


def _take(tree: Any, idx: np.ndarray) -> Any:
    return jax.tree_util.tree_map(lambda a: np.array(a[idx]), tree)


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


class _Run:
    """What stays fixed during a run: the likelihood, how it is evaluated, and the evaluation journal.

    Every task is ``(key, item)`` with ``key`` naming the evaluation within its stage (a chain and a step)
    and ``item`` the theta (with ``warm_start``: ``(theta, start)``). Results found in the journal (a resumed
    stage) are handed back at once; the others go to the executor, in waves (``"sync"``: one
    ``executor.evaluate`` per sweep of the chains) or one by one as they finish (``"async"``:
    ``executor.dispatch``), and each batch of finished results is journaled before it is used.
    """

    def __init__(self, fn: Callable, space: _Space, cfg: Settings, executor: Any, dispatch: str, warm: bool,
                 journal: _Journal):
        self.fn = _WithStart(fn) if warm else fn
        self.space, self.cfg, self.executor, self.warm, self.journal = space, cfg, executor, warm, journal
        self.dispatch = dispatch

    def run(self, stage: int, token: str, tasks: list, handle: Callable[[list], list]) -> None:
        """Evaluate ``tasks`` and every task that ``handle(finished [(key, result)])`` returns, until none is left."""
        known = self.journal.open(stage, token)

        def replay(tasks: list) -> list:
            pending = []
            while tasks:
                pending += [t for t in tasks if t[0] not in known]
                found = [(k, known[k]) for k, _ in tasks if k in known]
                tasks = handle(found) if found else []
            return pending

        def on_done(done: list) -> list:
            self.journal.write(done)
            return replay(handle(done))

        tasks = replay(tasks)
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

    def unpack(self, done: list, thetas: list) -> tuple[np.ndarray, Any, list]:
        """``(log L (m,), stacked aux or None, warm starts or None)`` of finished tasks."""
        results = [r for _, r in done]
        starts = None
        if self.warm:
            if not all(isinstance(r, tuple) and len(r) == 2 for r in results):
                raise TypeError("with warm_start=True, log_likelihood(theta, start) must return (result, start), "
                                "where result is log L or (log L, aux).")
            results, starts = [r[0] for r in results], [r[1] for r in results]
        lls, aux = _parse(results, thetas)
        return lls, aux, starts


def _token(cfg: Settings, stage: int, rng: dict | None) -> str:
    """Names the evaluations of the stage that ends at ``stage`` and starts from the generator state ``rng``."""
    return hashlib.sha256(repr((tuple(cfg), stage, rng)).encode()).hexdigest()


def init(fn: Callable, space: _Space, cfg: Settings, executor: Any, *, run: _Run | None = None) -> SMCState:
    """Stage 0: ``n`` prior draws and their log-likelihoods."""
    t0 = time.perf_counter()
    run = run or _Run(fn, space, cfg, as_executor(executor), "sync", False, _Journal(None))
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    x = space.sample(rng, cfg.n)
    thetas = space.thetas(x)
    results: list = [None] * cfg.n

    def handle(done: list) -> list:
        for (i,), r in done:
            results[i] = r
        return []

    run.run(0, _token(cfg, 0, None), [((i,), (th, None) if run.warm else th) for i, th in enumerate(thetas)],
            handle)
    loglik, aux, starts = run.unpack([(None, r) for r in results], thetas)
    if not np.any(np.isfinite(loglik)):
        raise ValueError(f"log_likelihood is -inf at all {cfg.n} prior draws: check the likelihood and the priors.")
    info = dict(stage=0, q=0.0, cv=np.nan, acceptance_rate=np.nan, unique_selections=cfg.n, log_evidence=0.0,
                evaluations=cfg.n, wall_time=time.perf_counter() - t0)
    return SMCState(0, 0.0, x, loglik, space.log_prior(x), aux, 0.0, rng.bit_generator.state, (info,), starts)


def step(fn: Callable, space: _Space, cfg: Settings, executor: Any, state: SMCState, *,
         run: _Run | None = None) -> SMCState:
    """One stage: next exponent, evidence increment, selection, Metropolis chains at the new exponent.

    All random numbers of the stage are drawn first, per chain and step (in the order of a sweep over the
    chains, step by step), so each chain's path depends on its own draws and likelihood values only: the
    chains may advance in any order, one evaluation at a time or in sweeps, with the same result.
    """
    t0 = time.perf_counter()
    run = run or _Run(fn, space, cfg, as_executor(executor), "sync", False, _Journal(None))
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = state.rng
    token = _token(cfg, state.stage + 1, state.rng)
    q, cv = next_exponent(state.loglik, state.q, cfg.gamma, cfg.max_rho_update)
    log_w = (q - state.q) * state.loglik
    lse = logsumexp(log_w)
    log_evidence = state.log_evidence + lse - math.log(cfg.n)
    w = np.exp(log_w - lse)
    chol = _weighted_cholesky(state.x, w, cfg.beta)
    counts = rng.multinomial(cfg.n, w / w.sum())
    seeds, lengths = chain_lengths(counts, cfg.max_chain_length)
    steps = cfg.burn_in + lengths * cfg.lmax  # Metropolis steps per chain
    first = np.cumsum(steps) - steps  # row of (chain c, step t) in the draws: first[c] + t - 1
    dx, log_u = np.empty((int(steps.sum()), space.d)), np.empty(int(steps.sum()))
    for t in range(1, int(steps.max()) + 1):
        rows = first[steps >= t] + t - 1
        dx[rows], log_u[rows] = rng.standard_normal((len(rows), space.d)), rng.random(len(rows))
    dx, log_u = dx @ chol.T, np.log(log_u)

    x, ll, lp, aux = state.x[seeds], state.loglik[seeds], state.logprior[seeds], _take(state.aux, seeds)
    starts = [state.starts[s] for s in seeds] if run.warm and state.starts is not None else None
    if run.warm and starts is None:
        starts = [None] * len(seeds)
    offsets = np.cumsum(lengths) - lengths
    out_x, out_ll, out_lp = np.empty_like(state.x), np.empty(cfg.n), np.empty(cfg.n)
    out_aux = _take(state.aux, np.zeros(cfg.n, int))  # every slot is filled below
    out_starts = [None] * cfg.n if starts is not None else None
    t_chain = np.zeros(len(seeds), int)  # the step each chain is at
    prop_x, prop_lp = np.empty_like(x), np.empty(len(seeds))
    stats = dict(accepted=0, evaluations=0)

    def finish(chains: np.ndarray, accept: np.ndarray, ll_new=None, aux_new=None, starts_new=None) -> np.ndarray:
        """End step ``t_chain`` of ``chains`` (moving where ``accept``), record; the chains that go on."""
        a, j = chains[accept], np.flatnonzero(accept)
        if len(a):
            x[a], ll[a], lp[a] = prop_x[a], ll_new[j], prop_lp[a]
            if aux is not None:
                _tree_set(aux, a, aux_new, j)
            if starts is not None:
                for c, k in zip(a, j):
                    starts[c] = starts_new[k]
        stats["accepted"] += len(a)
        t = t_chain[chains]
        rec = (t > cfg.burn_in) & ((t - cfg.burn_in) % cfg.lmax == 0)
        c_rec = chains[rec]
        slot = offsets[c_rec] + (t[rec] - cfg.burn_in) // cfg.lmax - 1
        out_x[slot], out_ll[slot], out_lp[slot] = x[c_rec], ll[c_rec], lp[c_rec]
        if aux is not None:
            _tree_set(out_aux, slot, aux, c_rec)
        if starts is not None:
            for s, c in zip(slot, c_rec):
                out_starts[s] = starts[c]
        return chains[t < steps[chains]]

    def propose(chains: np.ndarray) -> list:
        """The next step of ``chains``: tasks for the proposals inside the prior's support; the others are
        rejected without evaluating the likelihood and their chains move on at once."""
        tasks = []
        while len(chains):
            t_chain[chains] += 1
            prop_x[chains] = x[chains] + dx[first[chains] + t_chain[chains] - 1]
            prop_lp[chains] = space.log_prior(prop_x[chains])
            ok = np.isfinite(prop_lp[chains])
            for c, theta in zip(chains[ok], space.thetas(prop_x[chains[ok]])):
                tasks.append(((int(c), int(t_chain[c])), (theta, starts[c]) if starts is not None else theta))
            chains = finish(chains[~ok], np.zeros(int(np.count_nonzero(~ok)), bool))
        return tasks

    def handle(done: list) -> list:
        chains = np.asarray([c for (c, _), _ in done], int)
        if np.any(t_chain[chains] != np.asarray([t for (_, t), _ in done])):
            raise RuntimeError("an evaluation came back for a step its chain is not at (a duplicated task).")
        ll_new, aux_new, starts_new = run.unpack(done, space.thetas(prop_x[chains]))
        stats["evaluations"] += len(done)
        with np.errstate(invalid="ignore"):
            accept = log_u[first[chains] + t_chain[chains] - 1] < (q * (ll_new - ll[chains]) + prop_lp[chains]
                                                                   - lp[chains])
        return propose(finish(chains, accept, ll_new, aux_new, starts_new))

    run.run(state.stage + 1, token, propose(np.arange(len(seeds))), handle)
    info = dict(stage=state.stage + 1, q=q, cv=cv, acceptance_rate=stats["accepted"] / max(int(steps.sum()), 1),
                unique_selections=int(np.count_nonzero(counts)), log_evidence=log_evidence,
                evaluations=stats["evaluations"], wall_time=time.perf_counter() - t0)
    return SMCState(state.stage + 1, q, out_x, out_ll, out_lp, out_aux, log_evidence, rng.bit_generator.state,
                    state.history + (info,), out_starts)


class CheckpointError(OSError):
    """A checkpoint could not be written (disk full, folder not writable...); the previous one is intact."""


def _atomic_write(path: str, obj: Any) -> None:
    """Pickle ``obj`` to a temporary file next to ``path``, flush it to disk and move it into place."""
    try:
        with atomic_path(path, ".tmp") as tmp, open(tmp, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise CheckpointError(err.errno, f"cannot write the checkpoint {path!r}: {err.strerror or err}. The "
                                         f"previous checkpoint is left as it was; free disk space or choose a "
                                         f"writable folder, then call again with resume=True") from err


class _Journal:
    """The finished evaluations of the running stage, checkpointed as they come back.

    One pickle file per batch of results, ``<checkpoint>.evaluations/stage-SSSSS-BBBBBBB.pkl`` (written by
    ``_atomic_write``), holding ``{"format", "token", "results": [(key, result), ...]}``. The token names the
    stage and the generator state it starts from, so only results of the very same stage are replayed; files
    that cannot be read (a power loss) are ignored and their evaluations run again. The files of a stage are
    deleted once the stage's state is checkpointed.
    """

    def __init__(self, checkpoint: str | None):
        self.folder = None if checkpoint is None else checkpoint + ".evaluations"
        self.stage, self.token, self.batch = 0, "", 0

    def prepare(self, keep: bool) -> None:
        """Create the folder (fails early where it cannot be written); without ``keep``, empty it."""
        if self.folder is None:
            return
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as err:
            raise CheckpointError(err.errno, f"cannot create the checkpoint folder {self.folder!r}: "
                                             f"{err.strerror or err}") from err
        if not keep:
            self.clear(None)

    def _files(self) -> list[tuple[int, int, str]]:
        out = []
        for name in os.listdir(self.folder):
            m = re.fullmatch(r"stage-(\d+)-(\d+)\.pkl", name)
            if m:
                out.append((int(m[1]), int(m[2]), os.path.join(self.folder, name)))
            elif name.endswith(".tmp"):
                out.append((-1, 0, os.path.join(self.folder, name)))
        return sorted(out)

    def open(self, stage: int, token: str) -> dict:
        """Start journaling ``stage``; the results already journaled for it, ``{key: result}``."""
        self.stage, self.token, self.batch, known = stage, token, 0, {}
        if self.folder is None:
            return known
        for s, b, file in self._files():
            if s != stage:
                continue
            self.batch = max(self.batch, b)
            try:
                with open(file, "rb") as f:
                    data = pickle.load(f)
            except Exception:  # cut short by a crash of the machine: evaluate again
                continue
            if data.get("format") == _EVALUATIONS and data.get("token") == token:
                known.update(data["results"])
        return known

    def write(self, done: list) -> None:
        if self.folder is None:
            return
        self.batch += 1
        _atomic_write(os.path.join(self.folder, f"stage-{self.stage:05d}-{self.batch:07d}.pkl"),
                      {"format": _EVALUATIONS, "token": self.token, "results": done})

    def clear(self, upto: int | None) -> None:
        """Delete the files of stages ``<= upto`` (all files for ``None``) and leftover temporary files."""
        if self.folder is None:
            return
        for s, _, file in self._files():
            if upto is None or s <= upto:
                os.unlink(file)

    def close(self) -> None:
        """Remove the folder if it is empty (the run is complete)."""
        if self.folder is not None and os.path.isdir(self.folder) and not os.listdir(self.folder):
            os.rmdir(self.folder)


def _save(path: str, cfg: Settings, state: SMCState) -> None:
    _atomic_write(path, {"format": _FORMAT, "settings": cfg._asdict(), "state": state._asdict()})


def _load(path: str, cfg: Settings) -> SMCState:
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
        if data.get("format") != _FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {_FORMAT!r}")
        stored, state = Settings(**data["settings"]), SMCState(**data["state"])
    except Exception as err:
        raise ValueError(f"cannot resume from {path!r}: not a readable bodil SMC checkpoint ({err}). "
                         f"Delete it or pass resume=False to start afresh.") from err
    diff = [f"{k}: checkpoint {a!r}, call {b!r}" for k, a, b in zip(cfg._fields, stored, cfg) if a != b]
    if diff:
        raise ValueError(f"checkpoint {path!r} was written with other settings ({'; '.join(diff)}); "
                         f"call with the same settings, or resume=False to start afresh.")
    return state


def _name_aux(aux: Any, taken: set[str]) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(aux)[0]
    out = {}
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path, simple=True, separator="_") or "aux"
        out[f"aux_{name}" if name in taken else name] = leaf
    return out


def _inference_data(state: SMCState, space: _Space, cfg: Settings, algorithm: str) -> az.InferenceData:
    posterior = {k: v[None] for k, v in space.split(state.x).items()}
    if state.aux is not None:
        posterior.update({k: v[None] for k, v in _name_aux(state.aux, set(posterior)).items()})
    hist = {k: ("stage", np.asarray([h[k] for h in state.history])) for k in state.history[0]}
    evaluations = int(sum(h["evaluations"] for h in state.history))
    attrs = dict(log_evidence=float(state.log_evidence), algorithm=algorithm, stages=state.stage,
                 evaluations=evaluations, **{k: str(v) if isinstance(v, tuple) else v
                                             for k, v in cfg._asdict().items()})
    return az.InferenceData(
        posterior=az.dict_to_dataset(posterior, attrs=dict(log_evidence=float(state.log_evidence))),
        sample_stats=az.dict_to_dataset({"log_likelihood": state.loglik[None], "log_prior": state.logprior[None]},
                                        attrs=dict(log_evidence=float(state.log_evidence))),
        smc_stages=xr.Dataset(hist, attrs=dict(log_evidence=float(state.log_evidence))),
        attrs=attrs)


def smc(log_likelihood: Callable, params: Params, n: int = 512, *, seed: int = 0, beta: float = 0.2,
        gamma: float = 1.0, max_chain_length: int | None = 1, lmax: int = 1, burn_in: int = 0,
        max_rho_update: float = 1.0, executor: Any = None, dispatch: str = "auto", warm_start: bool = False,
        checkpoint: str | os.PathLike | None = None, resume: bool = False, max_stages: int = 100,
        progress: bool = False, _algorithm: str = "smc") -> az.InferenceData:
    """Sample ``p(theta | D) ~ L(theta) p(theta)`` by annealing ``L^q p`` from ``q = 0`` to 1; see the module doc.

    Args:
        log_likelihood: ``theta -> log L`` (a float, ``-inf`` allowed; NaN raises) or ``(log L, aux)``, where
            ``aux`` is a pytree of arrays (e.g. a reconstructed field) carried along with its particle. ``theta``
            is ``{name: np.ndarray}`` with the inferred parameters of ``params`` (fixed ones are not passed).
            With ``warm_start=True`` it is called as ``log_likelihood(theta, start)`` and returns
            ``(result, start')``: ``start`` is the warm start carried by the particle the chain is at (``None``
            for the prior draws), ``start'`` the one to carry on if the proposal is accepted (e.g.
            ``ModeApproximation.warm_log_likelihood``).
        params: ``bodil.Params``; its numpyro distributions are the priors.
        n: number of particles.
        seed: seeds the ``numpy`` PCG64 generator. The same seed gives the same result with any executor and
            dispatch as long as ``log_likelihood`` returns the same values there (``jit``/``vmap`` may change
            the last bits of a JAX function's value against eager calls; then the samples differ by rounding).
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
        progress: show a tqdm bar per stage.

    Returns:
        ``arviz.InferenceData``: ``posterior`` (chain 1, draw ``n``; parameters and aux leaves),
        ``sample_stats`` (``log_likelihood``, ``log_prior``), ``smc_stages`` (per stage: ``q``, ``cv``,
        ``acceptance_rate``, ``unique_selections``, ``log_evidence``, ``evaluations``, ``wall_time``; a table:
        ``idata.smc_stages.to_dataframe()``). ``idata.attrs``: ``log_evidence`` (also in the groups' attrs),
        ``algorithm``, ``stages``, ``evaluations`` and the settings (``max_chain_length = 0``: no limit).
        All of it survives ``idata.to_netcdf(path)``.
    """
    if not callable(log_likelihood):
        raise TypeError(f"log_likelihood must be callable, got {type(log_likelihood).__name__}.")
    checks = [(n >= 2, f"n must be at least 2, got {n}"), (beta > 0, f"beta must be positive, got {beta}"),
              (gamma > 0, f"gamma must be positive, got {gamma}"), (lmax >= 1, f"lmax must be >= 1, got {lmax}"),
              (burn_in >= 0, f"burn_in must be >= 0, got {burn_in}"),
              (max_chain_length is None or max_chain_length >= 1,
               f"max_chain_length must be >= 1 or None, got {max_chain_length}"),
              (max_rho_update > 0, f"max_rho_update must be positive, got {max_rho_update}"),
              (max_stages >= 1, f"max_stages must be >= 1, got {max_stages}"),
              (dispatch in ("auto", "sync", "async"), f"dispatch must be 'auto', 'sync' or 'async', got {dispatch!r}"),
              (not resume or checkpoint is not None, "resume=True needs checkpoint=path")]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"{_algorithm}: {message}.")
    space, executor = _Space(params), as_executor(executor)
    can_dispatch = callable(getattr(executor, "dispatch", None))
    if dispatch == "async" and not can_dispatch:
        raise ValueError(f"{_algorithm}: dispatch='async' needs an executor with a dispatch method (PoolExecutor, "
                         f"DaskExecutor); {executor!r} has none: use dispatch='sync'.")
    if warm_start and isinstance(executor, BatchExecutor):
        raise ValueError(f"{_algorithm}: warm_start=True needs an executor that evaluates one theta at a time "
                         f"(SerialExecutor, PoolExecutor, DaskExecutor), not {executor!r}.")
    cfg = Settings(int(n), int(seed), float(beta), float(gamma), int(max_chain_length or 0), int(lmax), int(burn_in),
                   float(max_rho_update), space.names, space.shapes)
    path = os.fspath(checkpoint) if checkpoint is not None else None
    journal = _Journal(path)
    journal.prepare(keep=resume)
    run = _Run(log_likelihood, space, cfg, executor, "async" if dispatch == "auto" and can_dispatch else
               dispatch.replace("auto", "sync"), warm_start, journal)
    try:
        if resume and os.path.exists(path):
            state = _load(path, cfg)
        else:
            state = init(log_likelihood, space, cfg, executor, run=run)
            if path:
                _save(path, cfg, state)
                journal.clear(state.stage)
        with tqdm(desc=_algorithm, unit="stage", disable=not progress, initial=state.stage) as bar:
            while state.q < 1.0:
                if state.stage >= max_stages:
                    raise RuntimeError(f"{_algorithm}: the exponent is only q = {state.q:.4g} after {state.stage} "
                                       f"stages (max_stages); raise max_stages"
                                       + (" and resume=True to continue." if path else "."))
                state = step(log_likelihood, space, cfg, executor, state, run=run)
                if path:
                    _save(path, cfg, state)
                    journal.clear(state.stage)
                h = state.history[-1]
                bar.update(1)
                bar.set_postfix(q=f"{h['q']:.3g}", acc=f"{h['acceptance_rate']:.2f}", logZ=f"{h['log_evidence']:.3f}")
    finally:
        journal.close()  # only an empty folder: a complete run, or an error between stages
    return _inference_data(state, space, cfg, _algorithm)


def basis(log_likelihood: Callable, params: Params, n: int = 512, *, lmax: int = 1, **options: Any) -> az.InferenceData:
    """BASIS (Wu et al. 2018): ``smc`` with ``max_chain_length = 1``: every selection starts its own chain of
    ``lmax`` Metropolis steps. Other options as in ``smc`` (defaults ``beta = 0.2``, ``gamma = 1``)."""
    if "max_chain_length" in options:
        raise TypeError("basis() fixes max_chain_length=1; use tmcmc() or smc() for longer chains.")
    return smc(log_likelihood, params, n, lmax=lmax, max_chain_length=1, _algorithm="basis", **options)


def tmcmc(log_likelihood: Callable, params: Params, n: int = 512, *, max_chain_length: int | None = None,
          **options: Any) -> az.InferenceData:
    """TMCMC (Ching & Chen 2007): ``smc`` where a particle selected ``k`` times grows one chain of length ``k``
    (split at ``max_chain_length`` as Korali does). Other options as in ``smc``."""
    return smc(log_likelihood, params, n, max_chain_length=max_chain_length, _algorithm="tmcmc", **options)
