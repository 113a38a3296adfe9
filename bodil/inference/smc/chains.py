"""The evaluations of one stage: the prior draws (stage 0) or the Metropolis chains (every later stage).

Bookkeeping only: the random numbers come from the stage plan (``kernel.plan_stage``) and the likelihood
values from whoever runs the tasks. A stage object hands out tasks and takes back their results, in any
grouping and order::

    tasks = stage.start()                       # [(key, item)]: item = theta, or (theta, warm start)
    while tasks:
        tasks = stage.handle([(key, fn(item)) for key, item in tasks])
    particles = stage.particles()               # the num_samples particles at the end of the stage

``key`` names the evaluation within its stage (a prior draw ``(i,)``, a chain and its step ``(c, t)``). Each
chain's path depends only on its own draws and the values it gets, so the chains may advance in sweeps or
each as soon as its last evaluation is back, with bit-identical particles.

A log-likelihood returns ``log L``, ``(log L, extras)`` or ``(log L, extras, stats)`` (with warm starts:
``(that, start')``). ``extras`` and ``stats`` are pytrees of arrays carried with their particle: ``extras``
are values the posterior keeps (a reconstructed field), ``stats`` diagnostics of the evaluation (did an
inner solve converge); the driver stores them in ``posterior`` and ``sample_stats``, named by their keys.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = ["Chains", "Particles", "PriorDraws", "parse_results"]


class Particles(NamedTuple):
    """``num_samples`` particles: rows ``x (n, d)``, ``log L``, ``log p``, and what each one carries."""
    x: np.ndarray
    loglik: np.ndarray
    logprior: np.ndarray
    extras: Any  # pytree of (n, ...) arrays, or None
    stats: Any  # pytree of (n, ...) arrays, or None
    starts: list | None  # with warm starts: one per particle


def _parts(result: Any) -> tuple[Any, Any, Any]:
    if isinstance(result, tuple):
        if len(result) == 2:
            return result[0], result[1], None
        if len(result) == 3:
            return result
        raise TypeError(f"log_likelihood must return log L, (log L, extras) or (log L, extras, stats); got a "
                        f"tuple of {len(result)} items.")
    return result, None, None


def _stack(trees: list, what: str) -> Any:
    structures = {jax.tree_util.tree_structure(t) for t in trees}
    if len(structures) > 1:
        raise TypeError(f"log_likelihood returned {what} of different structures: {sorted(map(str, structures))}; "
                        f"return the same names and shapes every time.")
    if not trees or trees[0] is None:
        return None
    return jax.tree_util.tree_map(lambda *a: np.stack([np.asarray(v) for v in a]), *trees)


def parse_results(results: list, thetas: list[dict[str, np.ndarray]], warm: bool) -> tuple[np.ndarray, Any, Any, Any]:
    """``(log L (m,), stacked extras, stacked stats, warm starts)`` of the results of ``log_likelihood`` at
    ``thetas`` (``None`` for what it does not return; starts only with ``warm``)."""
    starts = None
    if warm:
        if not all(isinstance(r, tuple) and len(r) == 2 for r in results):
            raise TypeError("with warm_start=True, log_likelihood(theta, start) must return (result, start), "
                            "where result is log L, (log L, extras) or (log L, extras, stats).")
        results, starts = [r[0] for r in results], [r[1] for r in results]
    kinds = {len(r) if isinstance(r, tuple) else 1 for r in results}
    if len(kinds) > 1:
        raise TypeError("log_likelihood must return the same kind of result every time: always log L, always "
                        "(log L, extras) or always (log L, extras, stats).")
    parts = [_parts(r) for r in results]
    lls = np.empty(len(results))
    for i, ((value, _, _), theta) in enumerate(zip(parts, thetas)):
        value = np.asarray(value)
        if value.size != 1:
            raise TypeError(f"log_likelihood must return a scalar log L, got shape {value.shape}.")
        lls[i] = float(value.reshape(()))
        if np.isnan(lls[i]) or lls[i] == np.inf:
            shown = {k: np.asarray(v).tolist() for k, v in theta.items()}
            raise FloatingPointError(f"log_likelihood returned {lls[i]} at theta = {shown}; return a finite "
                                     f"value, or -inf where the parameters are impossible.")
    return lls, _stack([p[1] for p in parts], "extras"), _stack([p[2] for p in parts], "stats"), starts


def take(tree: Any, idx: np.ndarray) -> Any:
    """The rows ``idx`` of every leaf (copies)."""
    return jax.tree_util.tree_map(lambda a: np.array(a[idx]), tree)


def put(dst: Any, idx: np.ndarray, src: Any, sidx: np.ndarray) -> None:
    """``dst[idx] = src[sidx]`` leaf by leaf (``dst`` is changed in place)."""
    for d, s in zip(jax.tree_util.tree_leaves(dst), jax.tree_util.tree_leaves(src)):
        d[idx] = s[sidx]


class PriorDraws:
    """Stage 0: one evaluation per prior draw (rows ``x``), in any order."""

    def __init__(self, x: np.ndarray, space: Any, warm: bool):
        self.x, self.space, self.warm = x, space, warm
        self.thetas = space.thetas(x)
        self.results: list = [None] * len(x)
        self.accepted, self.evaluations = 0, len(x)

    def start(self) -> list:
        return [((i,), (th, None) if self.warm else th) for i, th in enumerate(self.thetas)]

    def handle(self, done: list) -> list:
        for (i,), r in done:
            self.results[i] = r
        return []

    def particles(self) -> Particles:
        loglik, extras, stats, starts = parse_results(self.results, self.thetas, self.warm)
        return Particles(self.x, loglik, self.space.log_prior(self.x), extras, stats, starts)


class Chains:
    """The Metropolis chains of one stage (``kernel.StagePlan``), started at the selected particles of ``state``.

    Chain ``c`` starts at particle ``plan.seeds[c]`` and makes ``plan.steps[c]`` steps; the proposal of its step
    ``t`` is the plan's; a proposal outside the prior's support is rejected without an evaluation. After the
    steps the plan records (``plan.recorded``) the chain's particle goes to its slot of the output.
    """

    def __init__(self, plan: Any, state: Any, space: Any, warm: bool):
        self.plan, self.space, self.warm = plan, space, warm
        seeds, n = plan.seeds, len(state.x)
        self.x, self.ll, self.lp = state.x[seeds], state.loglik[seeds], state.logprior[seeds]
        self.extras, self.stats = take(state.extras, seeds), take(state.stats, seeds)
        self.starts = None
        if warm:
            self.starts = [state.starts[s] for s in seeds] if state.starts is not None else [None] * len(seeds)
        every = np.zeros(n, int)  # every slot of the output is filled by the chains
        self.out = Particles(np.empty_like(state.x), np.empty(n), np.empty(n), take(state.extras, every),
                             take(state.stats, every), [None] * n if warm else None)
        self.t = np.zeros(len(seeds), int)  # the step each chain is at
        self.prop_x, self.prop_lp = np.empty_like(self.x), np.empty(len(seeds))
        self.accepted = self.evaluations = 0

    def start(self) -> list:
        return self._propose(np.arange(len(self.plan.seeds)))

    def handle(self, done: list) -> list:
        """Accept or reject the proposals whose values came back; the tasks of the chains' next steps."""
        chains = np.asarray([c for (c, _), _ in done], int)
        if np.any(self.t[chains] != np.asarray([t for (_, t), _ in done], int)):
            raise RuntimeError("an evaluation came back for a step its chain is not at (a duplicated task).")
        ll_new, extras_new, stats_new, starts_new = parse_results([r for _, r in done],
                                                                  self.space.thetas(self.prop_x[chains]), self.warm)
        for what, mine, new in (("extras", self.extras, extras_new), ("stats", self.stats, stats_new)):
            mine, new = jax.tree_util.tree_structure(mine), jax.tree_util.tree_structure(new)
            if mine != new:
                raise ValueError(f"log_likelihood returned {what} of another structure ({new}) than the particles "
                                 f"carry ({mine}): a checkpoint of another likelihood, or one whose outputs "
                                 f"changed? Start afresh (resume=False).")
        self.evaluations += len(done)
        accept = self.plan.accept(chains, self.t[chains], ll_new, self.ll[chains], self.prop_lp[chains],
                                  self.lp[chains])
        return self._propose(self._finish(chains, accept, ll_new, extras_new, stats_new, starts_new))

    def particles(self) -> Particles:
        return self.out

    def _finish(self, chains: np.ndarray, accept: np.ndarray, ll_new=None, extras_new=None, stats_new=None,
                starts_new=None) -> np.ndarray:
        """End the current step of ``chains`` (moving where ``accept``), record; the chains that go on."""
        a, j = chains[accept], np.flatnonzero(accept)
        if len(a):
            self.x[a], self.ll[a], self.lp[a] = self.prop_x[a], ll_new[j], self.prop_lp[a]
            put(self.extras, a, extras_new, j)
            put(self.stats, a, stats_new, j)
            if self.starts is not None:
                for c, k in zip(a, j):
                    self.starts[c] = starts_new[k]
        self.accepted += len(a)
        t = self.t[chains]
        rec, slot = self.plan.recorded(chains, t)
        c_rec, out = chains[rec], self.out
        out.x[slot], out.loglik[slot], out.logprior[slot] = self.x[c_rec], self.ll[c_rec], self.lp[c_rec]
        put(out.extras, slot, self.extras, c_rec)
        put(out.stats, slot, self.stats, c_rec)
        if self.starts is not None:
            for s, c in zip(slot, c_rec):
                out.starts[s] = self.starts[c]
        return chains[t < self.plan.steps[chains]]

    def _propose(self, chains: np.ndarray) -> list:
        """The next step of ``chains``: tasks for the proposals inside the prior's support; the others are
        rejected without evaluating the likelihood and their chains move on at once."""
        tasks = []
        while len(chains):
            self.t[chains] += 1
            self.prop_x[chains] = self.plan.proposal(self.x[chains], chains, self.t[chains])
            self.prop_lp[chains] = self.space.log_prior(self.prop_x[chains])
            ok = np.isfinite(self.prop_lp[chains])
            for c, theta in zip(chains[ok], self.space.thetas(self.prop_x[chains[ok]])):
                item = (theta, self.starts[c]) if self.starts is not None else theta
                tasks.append(((int(c), int(self.t[c])), item))
            chains = self._finish(chains[~ok], np.zeros(int(np.count_nonzero(~ok)), bool))
        return tasks
