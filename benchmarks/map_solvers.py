"""MAP solvers against the papers' Adam recipe on reaction-diffusion problems.

For each case: run 5000 Adam epochs (lr 1e-3, halved on a 50-epoch plateau, min 1e-4), then run every other
solver until it reaches the loss Adam ended at, and print wall time, evaluations and the speed-up.
Each solver runs twice with JAX's persistent compilation cache on, and the second run is timed, so XLA
compilation is excluded for everyone (the first run's time, compilation included, is printed too).

    .venv/bin/python benchmarks/map_solvers.py            # 2-D 64^2 x 129 and 3-D 32^3 x 33
    .venv/bin/python benchmarks/map_solvers.py --quick    # 2-D 32^2 x 65 only
    .venv/bin/python benchmarks/map_solvers.py --converge # 2-D: every solver to its own stopping rule
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="bodil-bench-cache-"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

import jax.numpy as jnp  # noqa: E402

import bodil  # noqa: E402
from bodil.cases import reaction_diffusion_2d, reaction_diffusion_3d  # noqa: E402


def timed(problem, method, **options):
    options = {"throw": False, **options}  # Adam runs its epochs; the tables show who reached the target
    t0 = time.perf_counter()
    bodil.map_estimate(problem.posterior, problem.u0, problem.theta0, method=method, **options)
    first = time.perf_counter() - t0
    fit = bodil.map_estimate(problem.posterior, problem.u0, problem.theta0, method=method, **options)
    return fit, first


def run_case(name, problem, epochs):
    print(f"\n## {name}: grid {problem.grid.shape}, unknowns {problem.grid.size + len(problem.theta0)}, "
          f"truth {[round(float(problem.truth[k]), 4) for k in problem.theta0]}")
    adam, first = timed(problem, "adam", epochs=epochs)
    target = adam.report.loss
    print(f"target loss (Adam after {epochs} epochs): {target:.6f}\n")
    print("| solver | reached | loss | wall s | first run s | evaluations | speed-up vs Adam | theta |")
    print("|---|---|---|---|---|---|---|---|")
    rows = [("adam (papers' recipe)", lambda: (adam, first))]
    for label, method, opts in [
        ("gauss-newton (profile, time-marching)", "gauss-newton", dict(strategy="profile")),
        ("gauss-newton (joint, no preconditioner)", "gauss-newton", dict(strategy="joint", cg_maxiter=20,
                                                                          preconditioner=None, max_iter=20)),
        ("l-bfgs", "lbfgs", dict(max_iter=5000)),
    ]:
        rows.append((label, lambda method=method, opts=opts: timed(problem, method, target_loss=target, **opts)))
    for label, run in rows:
        fit, first = run()
        rep = fit.report
        reached = rep.loss <= target + 1e-12 * abs(target)
        ev = ", ".join(f"{k} {v}" for k, v in rep.evaluations.items())
        theta = ", ".join(f"{k}={float(v):.4f}" for k, v in fit.theta.items())
        print(f"| {label} | {'yes' if reached else 'NO'} | {rep.loss:.6f} | {rep.wall_time:.2f} | {first:.2f} | {ev} | "
              f"{adam.report.wall_time / rep.wall_time:.1f}x | {theta} |", flush=True)


def run_to_convergence(name, problem, epochs):
    """Second table: every solver to its own stopping rule; how close each gets to the MAP."""
    print(f"\n## {name}: each solver to its own stopping rule")
    truth = {k: float(problem.truth[k]) for k in problem.theta0}
    rows = []
    for label, method, opts in [
        ("adam (papers' recipe)", "adam", dict(epochs=epochs)),
        ("gauss-newton (profile, time-marching)", "gauss-newton", dict(strategy="profile")),
        ("gauss-newton (joint, no preconditioner)", "gauss-newton", dict(strategy="joint", cg_maxiter=50,
                                                                          preconditioner=None, max_iter=100)),
        ("l-bfgs", "lbfgs", dict(max_iter=5000)),
    ]:
        fit, _ = timed(problem, method, **opts)
        rows.append((label, fit))
    best = min(fit.report.loss for _, fit in rows)
    print("| solver | converged | loss | loss - best | wall s | evaluations | theta | |theta - truth| |")
    print("|---|---|---|---|---|---|---|---|")
    for label, fit in rows:
        rep = fit.report
        dist = sum((float(fit.theta[k]) - v) ** 2 for k, v in truth.items()) ** 0.5
        ev = ", ".join(f"{k} {v}" for k, v in rep.evaluations.items())
        theta = ", ".join(f"{k}={float(v):.4f}" for k, v in fit.theta.items())
        print(f"| {label} | {'yes' if rep.converged else 'no'} | {rep.loss:.6f} | {rep.loss - best:.3g} | "
              f"{rep.wall_time:.2f} | {ev} | {theta} | {dist:.4f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only a small 2-D case")
    parser.add_argument("--epochs", type=int, default=5000)
    parser.add_argument("--case", choices=("all", "2d", "3d"), default="all")
    parser.add_argument("--converge", action="store_true",
                        help="instead: run every solver to its own stopping rule on the 2-D case")
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, float64")
    if args.converge:
        run_to_convergence("2-D reaction-diffusion, Amoudruz et al. 2025, sec. 3.3 case 1 (sigma 0.05)",
                           reaction_diffusion_2d(n=64, nt=129, dtype=jnp.float64), args.epochs)
        return
    if args.quick:
        run_case("2-D reaction-diffusion, case 1, 32^2", reaction_diffusion_2d(n=32, nt=65, dtype=jnp.float64),
                 args.epochs)
        return
    if args.case in ("all", "2d"):
        run_case("2-D reaction-diffusion, Amoudruz et al. 2025, sec. 3.3 case 1 (sigma 0.05)",
                 reaction_diffusion_2d(n=64, nt=129, dtype=jnp.float64), args.epochs)
    if args.case in ("all", "3d"):
        run_case("3-D reaction-diffusion, 32^3, no-flux walls", reaction_diffusion_3d(n=32, nt=33, dtype=jnp.float64),
                 args.epochs)


if __name__ == "__main__":
    main()
