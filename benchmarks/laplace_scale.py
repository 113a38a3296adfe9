"""Wall time and peak memory of the low-rank Laplace's pointwise std on ``reaction_diffusion_3d``.

For each grid size ``n`` (space ``n^3``, ``nt`` time nodes) a fresh process builds
``bodil.cases.reaction_diffusion_3d(n=n, nt=nt)`` in float64, runs a Gauss-Newton MAP capped at ``--map-iters``
iterations (a scaling benchmark needs a point near the MAP, not a converged one; the table says whether it
converged), then ``bodil.laplace(..., method="low-rank")`` and ``lap.std()``. It reports the wall time of the
Laplace and of ``std()`` and the peak resident memory while they run (the kernel's high-water mark ``VmHWM``,
reset after the MAP through ``/proc/self/clear_refs``; a sampling thread where that is unavailable), and
extrapolates the memory linearly in the number of unknowns to ``--extrapolate`` unknowns.

    python benchmarks/laplace_scale.py                       # n = 16 (nt = 17) and n = 32 (nt = 33)
    python benchmarks/laplace_scale.py --sizes 16:17 --map-iters 2

The target (issue 16): the pointwise std of 10^6 unknowns within 5 minutes and 4 GB on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

GIB = 2.0**30


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakMemory:
    """Peak resident memory (bytes) of this process between ``reset()`` and ``peak()``."""

    def __init__(self):
        self._sampled = 0
        self._stop = threading.Event()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.kernel = True
        except OSError:
            self.kernel = False

    def reset(self):
        if self.kernel:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return
        import psutil
        proc = psutil.Process()
        self._sampled = proc.memory_info().rss

        def sample():
            while not self._stop.wait(0.05):
                self._sampled = max(self._sampled, proc.memory_info().rss)
        threading.Thread(target=sample, daemon=True).start()

    def current(self) -> int:
        return 1024 * _status_kib("VmRSS")

    def peak(self) -> int:
        if self.kernel:
            return 1024 * _status_kib("VmHWM")
        self._stop.set()
        return self._sampled


def run_one(n: int, nt: int, map_iters: int, rank: int) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import bodil
    from bodil.cases import reaction_diffusion_3d

    pb = reaction_diffusion_3d(n=n, nt=nt)
    start = time.perf_counter()
    fit = bodil.map_estimate(pb.posterior, pb.u0, pb.theta0, max_iter=map_iters, strategy="joint", throw=False)
    map_time = time.perf_counter() - start
    mem = PeakMemory()
    before = mem.current()
    mem.reset()
    start = time.perf_counter()
    lap = bodil.laplace(pb.posterior, fit, method="low-rank", rank=rank)
    lap_time = time.perf_counter() - start
    start = time.perf_counter()
    u_std, theta_std = lap.std()
    jax.block_until_ready(u_std)
    std_time = time.perf_counter() - start
    peak = mem.peak()
    spec = lap.spectrum
    return {"n": n, "nt": nt, "unknowns": lap.info["n_field"] + lap.info["n_theta"],
            "map_iters": fit.report.iterations, "map_converged": bool(fit.report.converged), "map_s": map_time,
            "laplace_s": lap_time, "std_s": std_time, "rss_before": before, "peak": peak,
            "variance_method": lap.variance_method, "rank": spec["rank"], "smallest_kept": spec["smallest_kept"],
            "captured": spec["captured"], "u_std_max": float(u_std.max()),
            "theta_std": {k: float(v) for k, v in theta_std.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["16:17", "32:33"], help="n:nt pairs")
    parser.add_argument("--map-iters", type=int, default=4, help="Gauss-Newton iterations of the MAP (cap)")
    parser.add_argument("--rank", type=int, default=50, help="eigenpairs kept by the low-rank Laplace")
    parser.add_argument("--extrapolate", type=float, default=1e7, help="unknowns for the memory estimate")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        n, nt = map(int, args.one.split(":"))
        print("RESULT " + json.dumps(run_one(n, nt, args.map_iters, args.rank)), flush=True)
        return

    rows = []
    for size in args.sizes:
        cmd = [sys.executable, os.path.abspath(__file__), "--one", size, "--map-iters", str(args.map_iters),
               "--rank", str(args.rank)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode or not lines:
            print(f"n:nt = {size} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
            continue
        rows.append(json.loads(lines[-1][len("RESULT "):]))
        r = rows[-1]
        print(f"n:nt = {size}: {r['unknowns']} unknowns, MAP {r['map_iters']} its ({r['map_s']:.0f} s, converged "
              f"{r['map_converged']}), laplace {r['laplace_s']:.1f} s, std {r['std_s']:.1f} s, peak "
              f"{r['peak'] / GIB:.2f} GiB (before {r['rss_before'] / GIB:.2f}), {r['variance_method']}, "
              f"smallest kept {r['smallest_kept']:.3g}, captured {r['captured']:.3f}", flush=True)
    if not rows:
        return
    print(f"\n{'unknowns':>10} {'MAP s':>7} {'conv':>5} {'laplace s':>10} {'std s':>7} {'total s':>8} "
          f"{'peak GiB':>9} {'B/unknown':>10}")
    for r in rows:
        print(f"{r['unknowns']:>10} {r['map_s']:>7.0f} {str(r['map_converged']):>5} {r['laplace_s']:>10.1f} "
              f"{r['std_s']:>7.1f} {r['laplace_s'] + r['std_s']:>8.1f} {r['peak'] / GIB:>9.2f} "
              f"{r['peak'] / r['unknowns']:>10.0f}")
    if len(rows) >= 2:
        (n0, m0), (n1, m1) = [(r["unknowns"], r["peak"]) for r in (rows[0], rows[-1])]
        slope = (m1 - m0) / (n1 - n0)
        estimate = m0 + slope * (args.extrapolate - n0)
        print(f"\nmemory ~ {m0 / GIB:.2f} GiB + {slope:.0f} B x (unknowns - {n0}): "
              f"{estimate / GIB:.1f} GiB at {args.extrapolate:.0e} unknowns")


if __name__ == "__main__":
    main()
