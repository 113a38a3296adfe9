"""NUTS through numpyro against NUTS through blackjax: effective samples per second on the oscillator.

The case is Amoudruz et al. 2025, sec. 3.1 with the frequency inferred (``bodil.cases.oscillator(infer_omega=True)``,
131 unknowns), started at the MAP from ``bodil.map_estimate``. Both backends run the same warmup (step size
and diagonal mass matrix adaptation) and the same number of draws, one chain, float64. ESS is arviz's bulk
ESS of every coordinate (``omega2``, ``x`` and ``v`` at each node); the table gives its minimum and median
divided by the run time without compilation.

Each backend runs three times with JAX's persistent compilation cache on and the same seed (so the same
draws): the faster of the second and third runs is timed ("run s"; it still traces the program, well under a
second here), the first minus that is printed as the compilation time. The load average is printed too:
on a shared machine other jobs slow the runs down.

    .venv/bin/python benchmarks/nuts_ess.py            # 1000 warmup + 2000 draws
    .venv/bin/python benchmarks/nuts_ess.py --quick    # 300 warmup + 500 draws
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="bodil-bench-cache-"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

import arviz as az  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import bodil  # noqa: E402
from bodil.cases import oscillator  # noqa: E402
from bodil.inference.hmc import hmc  # noqa: E402


def _measure(post, fit, backend, num_warmup, num_samples, seed):
    runs = [hmc(post, fit, backend=backend, num_warmup=num_warmup, num_samples=num_samples, seed=seed)
            for _ in range(3)]
    first = runs[0].attrs["wall_time"]
    idata = min(runs[1:], key=lambda r: r.attrs["wall_time"])
    run = idata.attrs["wall_time"]
    ess = np.concatenate([np.ravel(v.values) for v in az.ess(idata).data_vars.values()])
    ss = idata.sample_stats
    return dict(backend=backend, run=run, compile=first - run, ess_min=ess.min(), ess_median=np.median(ess),
                omega2=float(idata.posterior["omega2"].mean()), depth=float(ss["tree_depth"].mean()),
                steps=float(ss["n_steps"].mean()), step_size=float(ss["step_size"][0, 0]),
                accept=float(ss["acceptance_rate"].mean()), divergent=int(ss["diverging"].sum()))


def nuts_table(quick: bool = False, seed: int = 0) -> str:
    """Run both backends and return the comparison as a markdown table (also printed row by row)."""
    num_warmup, num_samples = (300, 500) if quick else (1000, 2000)
    problem = oscillator(infer_omega=True, dtype=jnp.float64)
    post = problem.posterior
    fit = bodil.map_estimate(post, problem.u0, problem.theta0)
    lines = [f"## NUTS on the oscillator with omega inferred: {problem.grid.size * 2 + 1} unknowns, "
             f"{num_warmup} warmup + {num_samples} draws, 1 chain, MAP omega2 = {float(fit.theta['omega2']):.4f}",
             "",
             "| backend | run s | compile s | ESS min | ESS median | ESS/s min | ESS/s median | mean tree depth "
             "| leapfrog steps/draw | step size | acceptance | divergent | omega2 mean |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    rows = {}
    for backend in ("numpyro", "blackjax"):
        r = rows[backend] = _measure(post, fit, backend, num_warmup, num_samples, seed)
        line = (f"| {backend} | {r['run']:.2f} | {r['compile']:.2f} | {r['ess_min']:.0f} | {r['ess_median']:.0f} | "
                f"{r['ess_min'] / r['run']:.1f} | {r['ess_median'] / r['run']:.1f} | {r['depth']:.2f} | "
                f"{r['steps']:.1f} | {r['step_size']:.3g} | {r['accept']:.3f} | {r['divergent']} | "
                f"{r['omega2']:.4f} |")
        lines.append(line)
        print(line, flush=True)
    n, b = rows["numpyro"], rows["blackjax"]
    lines.append(f"\nload average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(lines[-1], flush=True)
    ratio = (f"blackjax / numpyro ESS/s: min {(b['ess_min'] / b['run']) / (n['ess_min'] / n['run']):.2f}, "
             f"median {(b['ess_median'] / b['run']) / (n['ess_median'] / n['run']):.2f}; "
             f"run time {b['run'] / n['run']:.2f}, leapfrog steps per second "
             f"{(b['steps'] / b['run']) / (n['steps'] / n['run']):.2f}")
    lines.append(ratio)
    print(ratio, flush=True)
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 warmup + 500 draws")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    nuts_table(quick=args.quick, seed=args.seed)
