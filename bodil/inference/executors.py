"""How a batch of parameter values is evaluated: in-process, vectorised, or on a pool of workers.

The samplers in ``bodil.inference.smc`` hand every batch of likelihood evaluations of a stage (the prior
draws, then all proposals of one MCMC step of all chains) to an *executor*: any object with one method

    evaluate(fn, thetas: list[dict[str, np.ndarray]]) -> list[result]

that returns ``[fn(theta) for theta in thetas]``, in order (how and where ``fn`` runs is the executor's
business). A result is whatever ``fn`` returns: a float, ``(float, extras)`` or ``(float, extras, stats)``
(``bodil.inference.smc.smc``). Executors hold no random state, so the same seed gives the same samples with
every executor when ``fn`` is deterministic.

* ``SerialExecutor``: a loop in this process (the default).
* ``PoolExecutor(pool)``: a ``concurrent.futures`` thread or process pool (``pool.map``).
* ``DaskExecutor(address)``: the workers of a ``dask.distributed`` cluster (an existing one, e.g. started by
  dask-jobqueue on SLURM/PBS, or a ``LocalCluster`` it starts); each worker keeps one copy of ``fn``, so
  JAX compilations and other caches survive from one task to the next.
* ``BatchExecutor``: ``fn`` takes the whole batch (a dict of stacked arrays, leading axis = batch) and
  returns stacked results; for likelihoods vectorised by hand (numpy, a GPU solver).
* ``VmapExecutor``: ``jit(vmap(fn))`` over the stacked batch, for a pure JAX ``fn``; batches are cut into
  chunks of at most ``batch_size`` and padded to a power of two so that few shapes are compiled.

Batch executors can order a batch by a ``cost(theta)`` before cutting it into chunks, so that the members of a
chunk cost about the same (a vmapped loop runs as long as its slowest member).

Executors that can run evaluations independently (``PoolExecutor``, ``DaskExecutor``) also have

    dispatch(fn, tasks: list[(key, theta)], on_done: list[(key, result)] -> list[(key, theta)]) -> None

which submits ``tasks``, hands every batch of finished results to ``on_done`` as soon as it is there and
submits the tasks ``on_done`` returns, until none is left: the samplers' asynchronous dispatch, where a
finished evaluation at once starts its chain's next step.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np

from .. import _checks

Theta = dict[str, np.ndarray]

__all__ = ["BatchExecutor", "DaskExecutor", "Executor", "PoolExecutor", "SerialExecutor", "VmapExecutor",
           "as_executor"]
Task = tuple[Any, Any]  # (key, theta)


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
        self.pool, self.chunksize = pool, _checks.integer("PoolExecutor", "chunksize", chunksize, 1)

    def evaluate(self, fn: Callable[[Theta], Any], thetas: Sequence[Theta]) -> list[Any]:
        return list(self.pool.map(fn, thetas, chunksize=self.chunksize))

    def dispatch(self, fn: Callable[[Theta], Any], tasks: Sequence[Task],
                 on_done: Callable[[list[tuple[Any, Any]]], Sequence[Task]]) -> None:
        """Run ``tasks`` and those ``on_done`` returns, passing each batch of finished results on at once."""
        running = {self.pool.submit(fn, theta): key for key, theta in tasks}
        while running:
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            finished = [(running.pop(f), f.result()) for f in done]
            running.update({self.pool.submit(fn, theta): key for key, theta in on_done(finished)})

    def __repr__(self) -> str:
        return f"PoolExecutor({type(self.pool).__name__})"


class DaskExecutor:
    """Evaluate on the workers of a ``dask.distributed`` cluster.

    Args:
        address: where the cluster is: a scheduler address (``"tcp://10.0.0.1:8786"``), a cluster object
            (``dask_jobqueue.SLURMCluster(...)``, ``LocalCluster(...)``) or a ``distributed.Client``. ``None``:
            start a ``LocalCluster`` on this machine, closed again by ``close()``.
        n_workers, threads_per_worker, processes, **cluster_options: for the ``LocalCluster`` (``address=None``).
            One thread per worker process suits JAX solvers, which use all cores of their process anyway.

    ``fn`` is sent to every worker once (a worker plugin, also installed on workers that join later, e.g. a
    replacement for one that died) and called there for each task, so a ``jax.jit`` inside it compiles once
    per worker. It must be picklable by cloudpickle and importable there: install the package that defines it
    on the workers. A worker that dies is replaced by its nanny (or the job queue) and the scheduler runs its
    tasks again elsewhere (up to ``distributed.scheduler.allowed-failures`` times, then ``KilledWorker``).
    The executor is a context manager; ``close()`` closes only what it started.
    """

    def __init__(self, address: Any = None, *, n_workers: int | None = None, threads_per_worker: int = 1,
                 processes: bool = True, **cluster_options: Any):
        from distributed import Client, LocalCluster

        self._owned: list = []
        if address is None:
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=processes,
                                   **cluster_options)
            self._owned.append(cluster)
            address = cluster
        elif n_workers is not None or cluster_options:
            raise TypeError("DaskExecutor: n_workers and cluster options are for a LocalCluster (address=None).")
        if isinstance(address, Client):
            self.client = address
        else:
            self.client = Client(address)
            self._owned.insert(0, self.client)
        self._plugins: dict[Any, tuple[Callable, str]] = {}

    def _installed(self, fn: Callable) -> str:
        """The name under which ``fn`` is installed on the workers (installing it the first time)."""
        try:
            key = (fn, hash(fn))  # equal functions (e.g. the same bound method) share one installation
        except TypeError:
            key = id(fn)
        if key not in self._plugins:
            from ._dask import FunctionPlugin

            plugin = FunctionPlugin(fn)
            self.client.register_plugin(plugin, name=plugin.name)
            self._plugins[key] = (fn, plugin.name)  # holding fn keeps its id unique
        return self._plugins[key][1]

    def evaluate(self, fn: Callable[[Theta], Any], thetas: Sequence[Theta]) -> list[Any]:
        from ._dask import call

        name = self._installed(fn)
        return self.client.gather(self.client.map(call, [name] * len(thetas), list(thetas), pure=False))

    def dispatch(self, fn: Callable[[Theta], Any], tasks: Sequence[Task],
                 on_done: Callable[[list[tuple[Any, Any]]], Sequence[Task]]) -> None:
        """Run ``tasks`` and those ``on_done`` returns, passing each batch of finished results on at once."""
        from distributed import as_completed

        from ._dask import call

        name, keys, running = self._installed(fn), {}, as_completed(with_results=True)

        def submit(tasks: Sequence[Task]) -> None:
            if tasks:
                futures = self.client.map(call, [name] * len(tasks), [theta for _, theta in tasks], pure=False)
                keys.update({f.key: key for f, (key, _) in zip(futures, tasks)})
                running.update(futures)

        submit(tasks)
        while not running.is_empty():
            submit(on_done([(keys.pop(f.key), result) for f, result in running.next_batch(block=True)]))

    def close(self) -> None:
        """Remove the installed functions from the workers; close the client and cluster started here."""
        if self._plugins and self.client.status == "running":
            for _, name in self._plugins.values():
                self.client.unregister_worker_plugin(name)
        self._plugins.clear()
        for thing in self._owned:
            thing.close()
        self._owned = []

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DaskExecutor({self.client.scheduler.address if self.client.scheduler else None!r})"


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
    """Call ``fn`` once per chunk of the stacked batch: ``fn({name: array (m, *shape)})`` returns ``(m,)``
    log-likelihoods (or ``((m,), extras)``, ``((m,), extras, stats)`` with leaves of leading axis ``m``).

    All chunks are submitted before any result is read back, so a ``fn`` that dispatches asynchronously (JAX)
    keeps its results on the device until the whole batch is done.

    Args:
        batch_size: evaluate at most this many at a time (``None``: the whole batch in one call): the bound
            on the memory of one call.
        cost: optional ``cost(theta) -> number``. The batch is then evaluated in order of increasing cost, so
            that each chunk holds evaluations of similar cost (a vmapped solver whose step count varies runs
            as long as the slowest member of its chunk); the results still come back in the order given.
        pad: pad every chunk (repeating its last theta) to the next power of two, at most ``batch_size``, so
            that a jitted ``fn`` is compiled for a handful of shapes; an integer ``p``: to the next power of two
            that is at least ``p`` (fewer shapes still, for a few wasted evaluations). ``None``: ``False``
            (``True`` for ``VmapExecutor``).
    """

    pad: bool | int = False

    def __init__(self, batch_size: int | None = None, *, cost: Callable[[Theta], float] | None = None,
                 pad: bool | int | None = None):
        where = type(self).__name__
        self.batch_size = None if batch_size is None else _checks.integer(where, "batch_size (or None)", batch_size, 1)
        if cost is not None and not callable(cost):
            raise TypeError(f"{where}: cost must be a function theta -> number or None, got {type(cost).__name__}.")
        self.cost = cost
        if pad is not None:
            self.pad = pad if isinstance(pad, bool) else _checks.integer(where, "pad (or a bool)", pad, 1)

    def _batched(self, fn: Callable) -> Callable:
        return fn

    def _padded_size(self, m: int) -> int:
        size = 1 << max(m - 1, int(self.pad) - 1, 0).bit_length()
        return size if self.batch_size is None else min(size, self.batch_size)

    def evaluate(self, fn: Callable, thetas: Sequence[Theta]) -> list[Any]:
        if len(thetas) == 0:
            return []
        m = len(thetas)
        order = np.arange(m) if self.cost is None else np.argsort([float(self.cost(t)) for t in thetas], kind="stable")
        f, stacked = self._batched(fn), _stack([thetas[i] for i in order])
        size = self.batch_size or m
        pending = []
        for start in range(0, m, size):
            chunk = {k: v[start:start + size] for k, v in stacked.items()}
            k = len(next(iter(chunk.values())))
            if self.pad and self._padded_size(k) > k:  # repeat the last row: same shapes, fewer compilations
                extra = self._padded_size(k) - k
                chunk = {name: np.concatenate([v, np.repeat(v[-1:], extra, axis=0)]) for name, v in chunk.items()}
            pending.append((f(chunk), k))
        ordered = [r for out, k in pending
                   for r in _unstack(jax.tree_util.tree_map(lambda a, k=k: np.asarray(a)[:k], out), k)]
        results: list[Any] = [None] * m
        for i, r in zip(order, ordered):
            results[i] = r
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch_size={self.batch_size})"


class VmapExecutor(BatchExecutor):
    """``jax.jit(jax.vmap(fn))`` over the stacked batch, for a pure JAX ``fn(theta)``.

    Batches are cut into chunks of at most ``batch_size`` and padded (by repeating the last theta) to the next
    power of two, at most ``batch_size``, so at most a handful of shapes are compiled. The compiled function is
    cached per ``fn`` object: pass the same function, not a new lambda per call. ``cost`` as for
    ``BatchExecutor``.
    """

    pad = True

    def __init__(self, batch_size: int | None = None, *, cost: Callable[[Theta], float] | None = None):
        super().__init__(batch_size, cost=cost)
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
