"""The two-source inverse problem (``bodil.cases.steady_sources``) with the steady diffusion surrogate and with
the exact sparse solver: BASIS for both, NUTS through the differentiable surrogate; posterior means, widths
and wall times side by side, the speed-up, and issue 22's acceptance (the exact-solver posterior mean inside
the surrogate posterior's 90 % region).

    nice -n 10 .venv/bin/python benchmarks/steady_inference.py [--samples 256] [--warmup 100] [--draws 200]
        [--sigma 0.05] [--seed 0] [--json FILE]

One data set (seed ``--seed``: 20 sensors, noise sd ``--sigma``, made on the twice finer lattice) serves all
runs. BASIS: ``beta = 0.2``, ``gamma = 1``, ``lmax = 1``, ``--samples`` particles, seed 1; the surrogate's
likelihood runs batched (``VmapExecutor``, batches of 64), the exact one a geometry at a time (a new sparse
factorisation per evaluation). NUTS (numpyro, one chain, ``max_tree_depth = 5``) starts at the surrogate BASIS
sample of highest likelihood. Wall times include compilation.

The 90 % region is checked two ways for each surrogate run: per unknown, the exact mean inside the central
90 % interval; jointly, the squared Mahalanobis distance of the exact mean under the surrogate draws' mean and
covariance below ``chi2_5(0.9) = 9.24`` (the Gaussian 90 % region).
"""

from __future__ import annotations

import argparse
import json
import time

import jax

jax.config.update("jax_enable_x64", True)

import arviz as az  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

import bodil  # noqa: E402
from bodil.cases import steady_sources as SS  # noqa: E402
from bodil.inference import VmapExecutor  # noqa: E402


def run_basis(problem, n: int, executor):
    t0 = time.perf_counter()
    idata = bodil.basis(SS.log_likelihood(problem), problem.posterior.params, num_samples=n, seed=1, beta=0.2,
                        gamma=1.0, lmax=1, executor=executor)
    return idata, time.perf_counter() - t0


def run_nuts(problem, start, warmup: int, draws: int):
    t0 = time.perf_counter()
    idata = bodil.hmc(problem.posterior, ({}, start), num_warmup=warmup, num_samples=draws, seed=2,
                      max_tree_depth=5)
    return idata, time.perf_counter() - t0


def best_sample(idata) -> dict:
    k = int(np.argmax(idata.sample_stats["log_likelihood"].values.ravel()))
    c = idata.posterior["centres"].values.reshape(-1, 2, 2)[k]
    return {"centres": np.asarray(c), "v2": np.asarray(idata.posterior["v2"].values.ravel()[k])}


def table(problem, runs: dict) -> str:
    truth = problem.truth
    true = dict(zip(SS.NAMES, [*np.ravel(truth["centres"]), truth["v2"]]))
    head = f"{'':4s} {'truth':>7s} " + " ".join(f"{name:>28s}" for name in runs)
    lines = [head, f"{'':4s} {'':>7s} " + " ".join(f"{'mean +- sd  [90% interval]':>28s}" for _ in runs)]
    for k in SS.NAMES:
        cells = [f"{r['summary'][k]['mean']:7.2f} +-{r['summary'][k]['sd']:5.2f} "
                 f"[{r['summary'][k]['lo']:5.1f},{r['summary'][k]['hi']:5.1f}]" if k != "v2" else
                 f"{r['summary'][k]['mean']:7.3f} +-{r['summary'][k]['sd']:5.3f} "
                 f"[{r['summary'][k]['lo']:.2f},{r['summary'][k]['hi']:.2f}]" for r in runs.values()]
        lines.append(f"{k:4s} {true[k]:7.2f} " + " ".join(f"{c:>28s}" for c in cells))
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=256, help="BASIS particles (default 256)")
    p.add_argument("--warmup", type=int, default=100, help="NUTS warmup draws (default 100)")
    p.add_argument("--draws", type=int, default=200, help="NUTS draws kept (default 200)")
    p.add_argument("--sigma", type=float, default=0.05, help="noise sd of the readings (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sensors and the noise (default 0)")
    p.add_argument("--json", help="write the numbers to this file")
    args = p.parse_args(argv)

    surrogate = SS.steady_sources("surrogate", sigma=args.sigma, seed=args.seed)
    exact = SS.steady_sources("exact", sigma=args.sigma, seed=args.seed)
    print(f"data: {len(surrogate.data['y'])} sensors, sigma {args.sigma}, seed {args.seed}; truth centres "
          f"{np.asarray(surrogate.truth['centres']).tolist()}, v2 {surrogate.truth['v2']}")
    runs = {}
    for name, problem, executor in (("BASIS surrogate", surrogate, VmapExecutor(batch_size=64)),
                                    ("BASIS exact", exact, None)):
        idata, wall = run_basis(problem, args.samples, executor)
        runs[name] = dict(idata=idata, wall=wall, evaluations=int(idata.attrs["evaluations"]),
                          stages=int(idata.attrs["stages"]))
        print(f"{name}: {wall:.0f} s, {idata.attrs['stages']} stages, {idata.attrs['evaluations']} evaluations")
    start = best_sample(runs["BASIS surrogate"]["idata"])
    idata, wall = run_nuts(surrogate, start, args.warmup, args.draws)
    steps = int(idata.sample_stats["n_steps"].sum())
    runs["NUTS surrogate"] = dict(idata=idata, wall=wall, evaluations=steps,
                                  divergences=int(idata.sample_stats["diverging"].sum()))
    ess = az.ess(idata, var_names=["centres", "v2"])
    runs["NUTS surrogate"]["min_ess"] = float(min(np.min(ess["centres"].values), float(ess["v2"])))
    print(f"NUTS surrogate: {wall:.0f} s, {steps} leapfrog steps in the kept draws, "
          f"{runs['NUTS surrogate']['divergences']} divergences, smallest ESS {runs['NUTS surrogate']['min_ess']:.0f}")

    for r in runs.values():
        r["draws"] = SS.named_draws(r["idata"])
        r["summary"] = SS.summarise(r["draws"])
    print()
    print(table(surrogate, runs))
    print()
    ref = {k: runs["BASIS exact"]["summary"][k]["mean"] for k in SS.NAMES}
    true = dict(zip(SS.NAMES, [*np.ravel(surrogate.truth["centres"]), surrogate.truth["v2"]]))
    bound = float(stats.chi2.ppf(0.9, len(SS.NAMES)))
    verdict = {}
    for name in ("BASIS surrogate", "NUTS surrogate"):
        s = runs[name]["summary"]
        inside = {k: bool(s[k]["lo"] <= ref[k] <= s[k]["hi"]) for k in SS.NAMES}
        d2 = SS.mahalanobis2(ref, runs[name]["draws"])
        verdict[name] = dict(marginal=inside, d2=d2, joint=d2 < bound,
                             truth_d2=SS.mahalanobis2(true, runs[name]["draws"]))
        print(f"{name}: exact mean inside the 90% intervals: "
              + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in inside.items())
              + f"; jointly: d^2 = {d2:.2f} {'<' if d2 < bound else '>='} {bound:.2f} "
              f"({'inside' if d2 < bound else 'OUTSIDE'}); truth d^2 = {verdict[name]['truth_d2']:.2f}")
    print(f"BASIS exact: truth d^2 = {SS.mahalanobis2(true, runs['BASIS exact']['draws']):.2f}")
    ws, we = runs["BASIS surrogate"], runs["BASIS exact"]
    print(f"\nwall time: BASIS surrogate {ws['wall']:.0f} s ({ws['wall'] / ws['evaluations'] * 1e3:.1f} ms per "
          f"evaluation), BASIS exact {we['wall']:.0f} s ({we['wall'] / we['evaluations'] * 1e3:.1f} ms), "
          f"NUTS surrogate {runs['NUTS surrogate']['wall']:.0f} s; speed-up of BASIS "
          f"{we['wall'] / ws['wall']:.1f}x (per evaluation "
          f"{(we['wall'] / we['evaluations']) / (ws['wall'] / ws['evaluations']):.1f}x)")
    if args.json:
        out = {"args": vars(args), "verdict": verdict,
               "runs": {k: {f: v for f, v in r.items() if f not in ("idata", "draws")} for k, r in runs.items()}}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
