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
All random numbers come from one ``numpy.random.Generator(PCG64(seed))`` whose state is checkpointed.

Checkpoints are pickle files (trusted input only) holding ``{"format", "settings", "state"}``; they are
written after every stage to a temporary file in the same folder and moved into place.
"""

from __future__ import annotations

import math
import os
import pickle
import tempfile
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

from ..prior import Params
from .executors import as_executor

__all__ = ["SMCState", "Settings", "basis", "chain_lengths", "next_exponent", "smc", "tmcmc"]
_FORMAT = "bodil.smc/1"


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


def _evaluate(fn: Callable, executor: Any, space: _Space, x: np.ndarray) -> tuple[np.ndarray, Any]:
    """Log-likelihoods ``(m,)`` and stacked aux (or None) of the rows ``x``."""
    thetas = space.thetas(x)
    results = executor.evaluate(fn, thetas)
    if len(results) != len(thetas):
        raise RuntimeError(f"executor {executor!r} returned {len(results)} results for {len(thetas)} inputs.")
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
            shown = {k: v.tolist() for k, v in theta.items()}
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


def init(fn: Callable, space: _Space, cfg: Settings, executor: Any) -> SMCState:
    """Stage 0: ``n`` prior draws and their log-likelihoods."""
    t0 = time.perf_counter()
    rng = np.random.Generator(np.random.PCG64(cfg.seed))
    x = space.sample(rng, cfg.n)
    loglik, aux = _evaluate(fn, executor, space, x)
    if not np.any(np.isfinite(loglik)):
        raise ValueError(f"log_likelihood is -inf at all {cfg.n} prior draws: check the likelihood and the priors.")
    info = dict(stage=0, q=0.0, cv=np.nan, acceptance_rate=np.nan, unique_selections=cfg.n, log_evidence=0.0,
                evaluations=cfg.n, wall_time=time.perf_counter() - t0)
    return SMCState(0, 0.0, x, loglik, space.log_prior(x), aux, 0.0, rng.bit_generator.state, (info,))


def step(fn: Callable, space: _Space, cfg: Settings, executor: Any, state: SMCState) -> SMCState:
    """One stage: next exponent, evidence increment, selection, Metropolis chains at the new exponent."""
    t0 = time.perf_counter()
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = state.rng
    q, cv = next_exponent(state.loglik, state.q, cfg.gamma, cfg.max_rho_update)
    log_w = (q - state.q) * state.loglik
    lse = logsumexp(log_w)
    log_evidence = state.log_evidence + lse - math.log(cfg.n)
    w = np.exp(log_w - lse)
    chol = _weighted_cholesky(state.x, w, cfg.beta)
    counts = rng.multinomial(cfg.n, w / w.sum())
    seeds, lengths = chain_lengths(counts, cfg.max_chain_length)
    x, ll, lp, aux = state.x[seeds], state.loglik[seeds], state.logprior[seeds], _take(state.aux, seeds)
    steps = cfg.burn_in + lengths * cfg.lmax
    offsets = np.cumsum(lengths) - lengths
    out_x, out_ll, out_lp = np.empty_like(state.x), np.empty(cfg.n), np.empty(cfg.n)
    out_aux = _take(state.aux, np.zeros(cfg.n, int))  # every slot is filled below
    accepted = proposed = evaluations = 0
    for t in range(1, int(steps.max()) + 1):
        idx = np.flatnonzero(steps >= t)
        z, u = rng.standard_normal((len(idx), space.d)), rng.random(len(idx))
        prop = x[idx] + z @ chol.T
        lp_prop = space.log_prior(prop)
        ok = np.isfinite(lp_prop)
        ll_prop, aux_prop = np.full(len(idx), -np.inf), None
        if ok.any():
            ll_prop[ok], aux_prop = _evaluate(fn, executor, space, prop[ok])
            evaluations += int(ok.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = ok & (np.log(u) < q * (ll_prop - ll[idx]) + lp_prop - lp[idx])
        a = idx[acc]
        x[a], ll[a], lp[a] = prop[acc], ll_prop[acc], lp_prop[acc]
        if aux is not None and len(a):
            _tree_set(aux, a, aux_prop, (np.cumsum(ok) - 1)[acc])
        accepted, proposed = accepted + len(a), proposed + len(idx)
        if t > cfg.burn_in and (t - cfg.burn_in) % cfg.lmax == 0:  # record every active chain's state
            slot = offsets[idx] + (t - cfg.burn_in) // cfg.lmax - 1
            out_x[slot], out_ll[slot], out_lp[slot] = x[idx], ll[idx], lp[idx]
            if aux is not None:
                _tree_set(out_aux, slot, aux, idx)
    info = dict(stage=state.stage + 1, q=q, cv=cv, acceptance_rate=accepted / max(proposed, 1),
                unique_selections=int(np.count_nonzero(counts)), log_evidence=log_evidence,
                evaluations=evaluations, wall_time=time.perf_counter() - t0)
    return SMCState(state.stage + 1, q, out_x, out_ll, out_lp, out_aux, log_evidence, rng.bit_generator.state,
                    state.history + (info,))


def _save(path: str, cfg: Settings, state: SMCState) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("wb", dir=folder, prefix=".smc-", suffix=".tmp", delete=False) as f:
        pickle.dump({"format": _FORMAT, "settings": cfg._asdict(), "state": state._asdict()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


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
        max_rho_update: float = 1.0, executor: Any = None, checkpoint: str | os.PathLike | None = None,
        resume: bool = False, max_stages: int = 100, progress: bool = False,
        _algorithm: str = "smc") -> az.InferenceData:
    """Sample ``p(theta | D) ~ L(theta) p(theta)`` by annealing ``L^q p`` from ``q = 0`` to 1; see the module doc.

    Args:
        log_likelihood: ``theta -> log L`` (a float, ``-inf`` allowed; NaN raises) or ``(log L, aux)``, where
            ``aux`` is a pytree of arrays (e.g. a reconstructed field) carried along with its particle. ``theta``
            is ``{name: np.ndarray}`` with the inferred parameters of ``params`` (fixed ones are not passed).
        params: ``bodil.Params``; its numpyro distributions are the priors.
        n: number of particles.
        seed: seeds the ``numpy`` PCG64 generator. The same seed gives the same result with any executor as
            long as ``log_likelihood`` returns the same values there (``jit``/``vmap`` may change the last bits
            of a JAX function's value against eager calls; then the samples differ by rounding only).
        beta: proposal scale: covariance ``beta^2 C`` (Korali's covariance scaling ``0.04 = 0.2^2``).
        gamma: target coefficient of variation of the incremental weights (``ESS/n = 1/(1 + gamma^2)``).
        max_chain_length: longest chain; 1 is BASIS, ``None`` no limit (classic TMCMC).
        lmax: Metropolis steps per recorded chain sample. burn_in: extra unrecorded steps per chain.
        max_rho_update: largest increase of ``q`` per stage.
        executor: ``None`` (serial), a ``concurrent.futures.Executor``, or an object with
            ``evaluate(fn, thetas)`` (``bodil.inference.executors``).
        checkpoint: file written after every stage (pickle, atomic). resume: continue from ``checkpoint`` if
            it exists (settings must match; ``max_stages``, executor and progress may differ); with
            ``resume=False`` the run starts afresh and overwrites it.
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
              (not resume or checkpoint is not None, "resume=True needs checkpoint=path")]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"{_algorithm}: {message}.")
    space, executor = _Space(params), as_executor(executor)
    cfg = Settings(int(n), int(seed), float(beta), float(gamma), int(max_chain_length or 0), int(lmax), int(burn_in),
                   float(max_rho_update), space.names, space.shapes)
    path = os.fspath(checkpoint) if checkpoint is not None else None
    if resume and os.path.exists(path):
        state = _load(path, cfg)
    else:
        state = init(log_likelihood, space, cfg, executor)
        if path:
            _save(path, cfg, state)
    with tqdm(desc=_algorithm, unit="stage", disable=not progress, initial=state.stage) as bar:
        while state.q < 1.0:
            if state.stage >= max_stages:
                raise RuntimeError(f"{_algorithm}: the exponent is only q = {state.q:.4g} after {state.stage} stages "
                                   f"(max_stages); raise max_stages" + (" and resume=True to continue." if path else "."))
            state = step(log_likelihood, space, cfg, executor, state)
            if path:
                _save(path, cfg, state)
            h = state.history[-1]
            bar.update(1)
            bar.set_postfix(q=f"{h['q']:.3g}", acc=f"{h['acceptance_rate']:.2f}", logZ=f"{h['log_evidence']:.3f}")
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
