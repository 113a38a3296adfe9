"""How a batch of parameter values is evaluated: in-process, vectorised, or on a pool of workers.

The samplers in ``bodil.inference.smc`` hand every batch of likelihood evaluations of a stage (the prior
draws, then all proposals of one MCMC step of all chains) to an *executor*: any object with one method

    evaluate(fn, thetas: list[dict[str, np.ndarray]]) -> list[result]

that returns ``[fn(theta) for theta in thetas]``, in order (how and where ``fn`` runs is the executor's
business). A result is whatever ``fn`` returns: a float, or ``(float, aux)``. Executors hold no random
state, so the same seed gives the same samples with every executor when ``fn`` is deterministic.

* ``SerialExecutor``: a loop in this process (the default).
* ``PoolExecutor(pool)``: a ``concurrent.futures`` thread or process pool (``pool.map``).
* ``BatchExecutor``: ``fn`` takes the whole batch (a dict of stacked arrays, leading axis = batch) and
  returns stacked results; for likelihoods vectorised by hand (numpy, a GPU solver).
* ``VmapExecutor``: ``jit(vmap(fn))`` over the stacked batch, for a pure JAX ``fn``; batches are padded
  to a power of two (or cut into chunks of ``batch_size``) so that few shapes are compiled.

A ``dask.distributed`` client fits the same interface:

    class DaskExecutor:
        def __init__(self, client): self.client = client
        def evaluate(self, fn, thetas): return self.client.gather(self.client.map(fn, thetas, pure=False))
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np

Theta = dict[str, np.ndarray]

__all__ = ["BatchExecutor", "Executor", "PoolExecutor", "SerialExecutor", "VmapExecutor", "as_executor"]


@runtime_checkable
class Executor(Protocol):
    """Anything with ``evaluate(fn, thetas) -> [fn(theta) for theta in thetas]`` (order preserved)."""

    def evaluate(self, fn: Callable[[Theta], Any], thetas: Sequence[Theta]) -> list[Any]: ...


class SerialExecutor:
    """Evaluate ``fn(theta)`` one after the other in this process."""

    def evaluate(self, fn: Callable[[Theta], Any], thetas: Sequence[Theta]) -> list[Any]:
        return [fn(theta) for theta in thetas]

    def __repr__(self) -> str:
        return "SerialExecutor()"


class PoolExecutor:
    """Evaluate on a ``concurrent.futures.Executor`` (``ThreadPoolExecutor``, ``ProcessPoolExecutor``).

    With a process pool ``fn`` and its results must be picklable (a module-level function, not a lambda).
    The pool is not shut down here: its owner does that (``with ThreadPoolExecutor(4) as pool: ...``).
    """

    def __init__(self, pool: concurrent.futures.Executor, chunksize: int = 1):
        if not isinstance(pool, concurrent.futures.Executor):
            raise TypeError(f"PoolExecutor needs a concurrent.futures.Executor, got {type(pool).__name__}.")
        self.pool, self.chunksize = pool, int(chunksize)

    def evaluate(self, fn: Callable[[Theta], Any], thetas: Sequence[Theta]) -> list[Any]:
        return list(self.pool.map(fn, thetas, chunksize=self.chunksize))

    def __repr__(self) -> str:
        return f"PoolExecutor({type(self.pool).__name__})"


def _stack(thetas: Sequence[Theta]) -> Theta:
    return {k: np.stack([np.asarray(t[k]) for t in thetas]) for k in thetas[0]}


def _unstack(out: Any, m: int) -> list[Any]:
    leaves, treedef = jax.tree_util.tree_flatten(out)
    leaves = [np.asarray(leaf) for leaf in leaves]
    for leaf in leaves:
        if leaf.ndim == 0 or leaf.shape[0] != m:
            raise ValueError(f"a batched log-likelihood must return arrays with leading axis {m} (the batch); "
                             f"got shape {leaf.shape}.")
    if treedef.num_leaves == 1 and treedef.num_nodes == 1:  # plain array of log-likelihoods
        return list(leaves[0])
    return [jax.tree_util.tree_unflatten(treedef, [leaf[i] for leaf in leaves]) for i in range(m)]


class BatchExecutor:
    """Call ``fn`` once on the stacked batch: ``fn({name: array (m, *shape)})`` returns ``(m,)`` log-likelihoods
    (or ``((m,), aux)`` with aux leaves of leading axis ``m``).

    Args:
        batch_size: evaluate at most this many at a time (``None``: the whole batch in one call).
    """

    pad = False

    def __init__(self, batch_size: int | None = None):
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size}.")
        self.batch_size = batch_size

    def _batched(self, fn: Callable) -> Callable:
        return fn

    def _padded_size(self, m: int) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return 1 << max(m - 1, 0).bit_length()

    def evaluate(self, fn: Callable, thetas: Sequence[Theta]) -> list[Any]:
        if len(thetas) == 0:
            return []
        f, stacked, m = self._batched(fn), _stack(thetas), len(thetas)
        size = self.batch_size or m
        results: list[Any] = []
        for start in range(0, m, size):
            chunk = {k: v[start:start + size] for k, v in stacked.items()}
            k = len(next(iter(chunk.values())))
            if self.pad and self._padded_size(k) > k:  # repeat the last row: same shapes, fewer compilations
                extra = self._padded_size(k) - k
                chunk = {name: np.concatenate([v, np.repeat(v[-1:], extra, axis=0)]) for name, v in chunk.items()}
            out = f(chunk)
            if self.pad:
                out = jax.tree_util.tree_map(lambda a, k=k: np.asarray(a)[:k], out)
            results += _unstack(out, k)
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch_size={self.batch_size})"


class VmapExecutor(BatchExecutor):
    """``jax.jit(jax.vmap(fn))`` over the stacked batch, for a pure JAX ``fn(theta)``.

    Batches are padded (by repeating the last theta) to the next power of two, or to ``batch_size`` when
    given (larger batches are then cut into chunks of ``batch_size``), so at most a handful of shapes are
    compiled. The compiled function is cached per ``fn`` object: pass the same function, not a new lambda
    per call.
    """

    pad = True

    def __init__(self, batch_size: int | None = None):
        super().__init__(batch_size)
        self._cache: dict[Callable, Callable] = {}

    def _batched(self, fn: Callable) -> Callable:
        if fn not in self._cache:
            self._cache[fn] = jax.jit(jax.vmap(fn))
        return self._cache[fn]


def as_executor(executor: Any) -> Any:
    """``None`` -> ``SerialExecutor()``; a ``concurrent.futures.Executor`` -> ``PoolExecutor``; an object
    with an ``evaluate`` method is returned as it is."""
    if executor is None:
        return SerialExecutor()
    if isinstance(executor, concurrent.futures.Executor):
        return PoolExecutor(executor)
    if callable(getattr(executor, "evaluate", None)):
        return executor
    raise TypeError(f"executor must be None, a concurrent.futures.Executor or an object with an "
                    f"evaluate(fn, thetas) method; got {type(executor).__name__}.")
