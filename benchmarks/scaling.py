"""Wall time of one BASIS stage on a dask ``LocalCluster``: 1 against 2 workers, synchronous against
asynchronous dispatch, with equal and with varying inner-solve costs.

The log-likelihood stands in for an inner solve: it sleeps ``cost(theta)`` seconds (log-normal with mean
``--cost`` ms and log-standard deviation ``spread``, a fixed function of theta, so every run evaluates the
same costs) and returns 0. A constant likelihood anneals from ``q = 0`` to 1 in one stage: stage 0 draws
``n`` prior samples, stage 1 runs ``n`` BASIS chains of ``lmax`` Metropolis steps each, and its wall time
(``idata.smc_stages.wall_time[1]``) is the one reported. Sleeping costs no CPU, so the timings show the
dispatch, not the cores of the machine. ``sync`` advances all chains step by step (a barrier per step: each
sweep waits for its slowest solve); ``async`` starts a chain's next step as soon as its evaluation is back.
Each row checks that the samples are identical to the in-process run.

    python benchmarks/scaling.py                         # n = 32, lmax = 4, 20 ms, 1 and 2 workers
    python benchmarks/scaling.py --n 64 --threads 8      # also 2 workers x 8 threads (16 solves at once)
"""

from __future__ import annotations

import argparse
import math
import time
import zlib

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

import bodil  # noqa: E402
from bodil.inference.executors import DaskExecutor  # noqa: E402


class Solve:
    """Sleeps a cost drawn once per theta (log-normal, mean ``cost``), returns log L = 0."""

    def __init__(self, cost: float, spread: float):
        self.cost, self.spread = cost, spread

    def seconds(self, theta: dict) -> float:
        u = (zlib.crc32(np.asarray(theta["x"]).tobytes()) + 0.5) / 2**32
        return self.cost * math.exp(self.spread * stats.norm.ppf(u) - 0.5 * self.spread**2)

    def __call__(self, theta: dict) -> float:
        time.sleep(self.seconds(theta))
        return 0.0


PARAMS = bodil.Params(x=bodil.Uniform(-jnp.ones(2), jnp.ones(2)))


def stage(fn, args, executor=None, dispatch="auto"):
    idata = bodil.basis(fn, PARAMS, args.n, seed=0, lmax=args.lmax, executor=executor, dispatch=dispatch)
    assert idata.attrs["stages"] == 1
    return float(idata.smc_stages.wall_time.values[1]), idata.posterior.x.values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="particles (chains of the stage)")
    parser.add_argument("--lmax", type=int, default=4, help="Metropolis steps per chain")
    parser.add_argument("--cost", type=float, default=20.0, help="mean inner-solve cost in ms")
    parser.add_argument("--spread", type=float, default=1.0, help="log-standard deviation of the costs")
    parser.add_argument("--threads", type=int, default=0, help="also run 2 workers x this many threads")
    args = parser.parse_args()

    layouts = [(1, 1), (2, 1)] + ([(2, args.threads)] if args.threads > 1 else [])
    spreads = [0.0, args.spread]
    costs = {s: Solve(args.cost / 1e3, s) for s in spreads}
    serial = {s: stage(costs[s], args) for s in spreads}
    rows = []
    for workers, threads in layouts:
        with DaskExecutor(n_workers=workers, threads_per_worker=threads, dashboard_address=None) as ex:
            stage(Solve(0.0, 0.0), args, ex)  # workers import bodil and install the function: not timed
            for s in spreads:
                t = {}
                for dispatch in ("sync", "async"):
                    t[dispatch], x = stage(costs[s], args, ex, dispatch)
                    assert np.array_equal(x, serial[s][1]), "samples differ from the in-process run"
                rows.append((workers, threads, s, serial[s][0], t["sync"], t["async"]))

    print(f"one BASIS stage: n = {args.n} chains x lmax = {args.lmax} steps, mean solve {args.cost:g} ms "
          f"(ideal, one at a time: {args.n * args.lmax * args.cost / 1e3:.2f} s); samples identical in every row")
    header = (f"{'workers':>7} {'threads':>7} {'spread':>6} {'serial s':>9} {'sync s':>8} {'async s':>8} "
              f"{'async/sync':>10} {'serial/async':>12}")
    print(header)
    print("-" * len(header))
    for w, th, s, t_serial, t_sync, t_async in rows:
        print(f"{w:>7} {th:>7} {s:>6.2f} {t_serial:>9.2f} {t_sync:>8.2f} {t_async:>8.2f} {t_async / t_sync:>10.2f} "
              f"{t_serial / t_async:>12.2f}")
    one = {(s, d): v for w, th, s, _, *v2 in rows if (w, th) == (1, 1) for d, v in zip(("sync", "async"), v2)}
    two = {(s, d): v for w, th, s, _, *v2 in rows if (w, th) == (2, 1) for d, v in zip(("sync", "async"), v2)}
    print("speed-up of 2 workers over 1: " + ", ".join(
        f"spread {s:g} {d}: {one[s, d] / two[s, d]:.2f}x" for s in spreads for d in ("sync", "async")))


if __name__ == "__main__":
    main()
