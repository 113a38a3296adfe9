"""The neural surrogate against the Fisher-Kolmogorov solver, and the inversion table of Weidner et al. (2025) (Tables 1-2).

Needs a dataset (``bodil dataset``) whose crops match the surrogate's (the shipped weights: 32^3 at 4 mm,
made by ``bodil dataset --out fk32 --size 32 --spacing 4 --train 2000 --val 100 --test 100``).

1. Forward accuracy on the whole test split: MSE (Weidner et al.'s (2025) goal: at most 1.8e-3), MAE, volume-normalised
   MSE / MAE, NCC and Toledo-Marín et al.'s (2021) residual statistics (``bodil.forward.metrics``).
2. Forward time per crop for a batch of 32 test crops: the surrogate (one jit-compiled batched call, after a
   warm-up) against 32 FK runs on the same crops (``bodil.forward.inversion.fk_on_crop``); the ratio. Then the
   same on finer grids of the same 128 mm (``--sizes``, smaller batches; Weidner et al.'s (2025) is 128^3 at 1 mm): the
   tissue upsampled, the network of the same architecture untrained (its cost does not depend on its
   weights). The network's cost grows like ``n^3 log n``; the explicit solver's like ``n^3`` times its step
   count, which grows like ``n^2`` only where diffusion (the CFL bound), not growth (``rho dt``), limits the
   step.
3. Inversion on the first ``--cases`` test cases (the observation is the true concentration, as in Weidner et al. (2025)):
   GB (L-BFGS-B through the surrogate from the box centre), direct (inverse encoder), hybrid (direct, then GB;
   the lower surrogate loss), CMA-ES on the surrogate and CMA-ES on the FK solver (classical). Every method
   ends with one FK run at its theta. Reported as mean +- standard error (and median): the errors of
   ``mu_rho`` and ``mu_D`` (relative to the truth: MSE and MAE of ``(est - true) / true``, in %), of the origin
   (mm: mean squared and mean absolute distance per axis), the final run against the truth (MSE, MAE,
   normalised by the true tumour volume ``#{u >= 0.01}``, NCC) and the wall time per case.

    .venv/bin/python benchmarks/surrogate.py --data fk32                # 25 cases
    .venv/bin/python benchmarks/surrogate.py --data fk32 --cases 5      # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from bodil.forward import metrics
from bodil.forward import surrogate as S
from bodil.forward.dataset import load_split
from bodil.forward.inversion import (FKSettings, fk_on_crop, invert_cmaes, invert_direct, invert_gradient,
                                     invert_hybrid)


def _mean_se(x) -> str:
    x = np.asarray(x, float)
    se = x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
    return f"{x.mean():.3g} +- {se:.2g} (median {np.median(x):.3g})"


def forward_accuracy(model, test) -> dict:
    preds = []
    predict = jax.jit(jax.vmap(model.apply))
    for i in range(0, len(test), 16):
        z = model.normalise(test.theta[i:i + 16])
        preds.append(np.asarray(predict(jnp.asarray(z, jnp.float32), jnp.asarray(test.tissue[i:i + 16], jnp.float32))))
    return metrics.field_metrics(np.concatenate(preds), np.asarray(test.u, np.float64))


def forward_time_per_crop(model, test, fk, size: int, batch: int) -> tuple[float, float]:
    """Seconds per crop of the surrogate (one jit-compiled batched call, after a warm-up) and of the FK solver
    (``batch`` runs, after a warm-up) on ``size^3`` crops of the same extent as ``model``'s. On a finer grid than
    the model's, the tissue is upsampled and the network is one of the same architecture, untrained: its cost
    does not depend on its weights."""
    from scipy import ndimage

    theta, tissue = test.theta[:batch], np.asarray(test.tissue[:batch], np.float32)
    if size != model.architecture.size:
        factor = size / model.architecture.size
        arch = dataclasses.replace(model.architecture, size=size)
        model = S.Surrogate(network=S.build(arch, jax.random.PRNGKey(0)), architecture=arch,
                            theta_lower=model.theta_lower, theta_upper=model.theta_upper,
                            spacing_mm=model.spacing_mm / factor, info={})
        tissue = np.clip(ndimage.zoom(tissue, (1, 1, factor, factor, factor), order=1), 0.0, 1.0)
    model.predict(theta, tissue).block_until_ready()
    t0 = time.perf_counter()
    model.predict(theta, tissue).block_until_ready()
    t_sur = (time.perf_counter() - t0) / batch
    fk_on_crop(theta[0], tissue[0], model.spacing_mm, fk)  # compile
    t0 = time.perf_counter()
    for th, ti in zip(theta, tissue):
        fk_on_crop(th, ti, model.spacing_mm, fk)
    return t_sur, (time.perf_counter() - t0) / batch


METHODS = {"GB neural surrogate": "gb", "direct inverse prediction": "direct", "hybrid (direct + GB)": "hybrid",
           "CMA-ES neural surrogate": "cmaes", "CMA-ES classical solver": "classical"}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset folder (its test split)")
    p.add_argument("--forward", help="forward weights (default: the shipped ones)")
    p.add_argument("--inverse", help="inverse-encoder weights (default: the shipped ones)")
    p.add_argument("--cases", type=int, default=25, help="test cases for the inversion table (default 25)")
    p.add_argument("--gb-iterations", type=int, default=100, help="L-BFGS-B iterations (default 100)")
    p.add_argument("--cmaes-evaluations", type=int, default=1000, help="CMA-ES budget on the surrogate")
    p.add_argument("--classical-evaluations", type=int, default=400, help="CMA-ES budget on the FK solver")
    p.add_argument("--methods", nargs="+", choices=list(METHODS.values()), default=list(METHODS.values()),
                   help="inversion methods to run (default: all five)")
    p.add_argument("--sizes", type=int, nargs="*", default=[64], help="finer grids for the forward timing "
                   "(default 64; 128 is Weidner et al.'s (2025) and takes minutes on a CPU)")
    args = p.parse_args()

    model = S.load(args.forward) if args.forward else S.pretrained("forward")
    encoder = S.load(args.inverse) if args.inverse else S.pretrained("inverse")
    test = load_split(args.data, "test")
    fk = FKSettings.from_manifest(test.manifest)
    n = model.architecture.size
    if test.u.shape[-1] != n or abs(float(test.manifest["settings"]["spacing_mm"]) - model.spacing_mm) > 1e-9:
        raise SystemExit(f"the dataset's crops ({test.u.shape[-1]}^3 at {test.manifest['settings']['spacing_mm']} mm) "
                         f"are not the surrogate's ({n}^3 at {model.spacing_mm} mm)")
    print(f"surrogate: {model.info.get('dataset')}, trained {model.info.get('wall_s', 0) / 60:.0f} min; "
          f"device {jax.devices()[0].platform}")

    acc = forward_accuracy(model, test)
    print(f"\n## Forward accuracy, {len(test)} test crops ({n}^3 at {model.spacing_mm:g} mm)\n")
    print("| metric | mean +- se (median) |\n|---|---|")
    for k, v in acc.items():
        print(f"| {k} | {_mean_se(v)} |")
    print(f"\nWeidner et al. (2025) goal: MSE <= 1.8e-3; here {np.mean(acc['mse']):.3g}")

    print(f"\n## Forward time per crop, {n * model.spacing_mm:g} mm crops\n")
    print("| grid | spacing (mm) | batch | surrogate (s) | FK solver (s) | ratio FK / surrogate |\n"
          "|---|---|---|---|---|---|")
    for size in [n] + [m for m in args.sizes if m != n]:
        batch = max(1, 32 // max(1, size // n) ** 3)
        t_sur, t_fk = forward_time_per_crop(model, test, fk, size, batch)
        note = "" if size == n else " (untrained, timing only)"
        print(f"| {size}^3{note} | {n * model.spacing_mm / size:g} | {batch} | {t_sur:.3g} | {t_fk:.3g} | "
              f"{t_fk / t_sur:.2g} |", flush=True)

    all_methods = {
        "GB neural surrogate": lambda ti, u: invert_gradient(model, ti, u, maxiter=args.gb_iterations, fk=fk),
        "direct inverse prediction": lambda ti, u: invert_direct(encoder, ti, u, model=model, fk=fk),
        "hybrid (direct + GB)": lambda ti, u: invert_hybrid(model, encoder, ti, u, maxiter=args.gb_iterations, fk=fk),
        "CMA-ES neural surrogate": lambda ti, u: invert_cmaes(model, ti, u, max_evaluations=args.cmaes_evaluations,
                                                              fk=fk),
        "CMA-ES classical solver": lambda ti, u: invert_cmaes(model, ti, u, classical=True,
                                                              max_evaluations=args.classical_evaluations, fk=fk),
    }
    methods = {name: run for name, run in all_methods.items() if METHODS[name] in args.methods}
    rows = {name: [] for name in methods}
    cases = min(args.cases, len(test))
    # warm up the compiled functions once, so that the first case's time is not compilation
    ti0, u0 = np.asarray(test.tissue[0], np.float32), np.asarray(test.u[0], np.float32)
    for name in ("GB neural surrogate", "direct inverse prediction", "CMA-ES neural surrogate"):
        all_methods[name](ti0, u0)
    for i in range(cases):
        tissue, u_true, truth = np.asarray(test.tissue[i], np.float32), np.asarray(test.u[i], np.float64), test.theta[i]
        for name, run in methods.items():
            res = run(tissue, u_true.astype(np.float32))
            m = metrics.field_metrics(res.u_final, u_true)
            rel = (res.theta[3:] - truth[3:]) / truth[3:]
            d = res.theta[:3] - truth[:3]
            rows[name].append({"rho_se": rel[1] ** 2, "rho_ae": abs(rel[1]), "d_se": rel[0] ** 2, "d_ae": abs(rel[0]),
                               "o_se": float(np.mean(d ** 2)), "o_ae": float(np.mean(np.abs(d))),
                               **{k: float(m[k]) for k in ("mse", "mae", "mse_norm", "mae_norm", "ncc")},
                               "wall_s": res.wall_s, "evaluations": res.evaluations})
        print(f"case {i + 1}/{cases}: " + ", ".join(f"{name.split()[0]} NCC {rows[name][-1]['ncc']:.3f} "
                                                     f"{rows[name][-1]['wall_s']:.1f} s" for name in methods), flush=True)

    def col(name, key, scale=1.0):
        return _mean_se(np.array([r[key] for r in rows[name]]) * scale)

    print(f"\n## Table 1: coefficient errors, {cases} test cases\n")
    print("| method | growth MSE (%^2) | growth MAE (%) | diffusion MSE (%^2) | diffusion MAE (%) | origin MSE (mm^2) "
          "| origin MAE (mm) |\n|---|---|---|---|---|---|---|")
    for name in methods:
        print(f"| {name} | {col(name, 'rho_se', 1e4)} | {col(name, 'rho_ae', 100)} | {col(name, 'd_se', 1e4)} | "
              f"{col(name, 'd_ae', 100)} | {col(name, 'o_se')} | {col(name, 'o_ae')} |")
    print(f"\n## Table 2: the final FK run at the found theta against the truth, {cases} test cases\n")
    print("| method | MSE (1e-3) | MAE (1e-3) | MSE norm. (1e-8) | MAE norm. (1e-8) | NCC | runtime (s) | "
          "forward evaluations |\n|---|---|---|---|---|---|---|---|")
    for name in methods:
        print(f"| {name} | {col(name, 'mse', 1e3)} | {col(name, 'mae', 1e3)} | {col(name, 'mse_norm', 1e8)} | "
              f"{col(name, 'mae_norm', 1e8)} | {col(name, 'ncc')} | {col(name, 'wall_s')} | {col(name, 'evaluations')} |")
    if not {"hybrid", "classical"} <= set(args.methods):
        return
    hybrid = np.array([r["wall_s"] for r in rows["hybrid (direct + GB)"]])
    classical = np.array([r["wall_s"] for r in rows["CMA-ES classical solver"]])
    ncc_h = np.array([r["ncc"] for r in rows["hybrid (direct + GB)"]])
    ncc_c = np.array([r["ncc"] for r in rows["CMA-ES classical solver"]])
    print(f"\nhybrid vs CMA-ES classical: {classical.mean() / hybrid.mean():.1f}x faster (mean time per case; "
          f"goal 100x), NCC {ncc_h.mean():.3f} vs {ncc_c.mean():.3f} (goal: at least as high); hybrid NCC higher "
          f"in {int(np.sum(ncc_h >= ncc_c))} of {cases} cases")


if __name__ == "__main__":
    main()
