"""The tumour posterior's field (theta fixed) with an exterior quadratic penalty instead of bounds.

The inner problem of the mode approximation (Amoudruz et al. 2025, eq. 12 and 32) is

    min_u f(u) = w_PDE |r(u)|^2 + w_IC |u^0 - u_IC|^2 - log p(D | u)     subject to 0 <= u <= 1,

whose minimiser has ``u = 0`` on a degenerate active set (healthy voxels where the likelihood's pull and the
multiplier are both nearly zero): every bounded method measured so far creeps there (docs/tumor.md). Here the
bounds are replaced by the exterior penalty

    f_kappa(u) = f(u) + kappa sum (min(u, 0)^2 + max(u - 1, 0)^2),

a least-squares block added to the residuals, so that the problem is unconstrained and C^1 with a piecewise
constant Gauss-Newton matrix (a semismooth Newton problem: no active set to guess, no strict complementarity
needed). A value below zero is at most its pull over ``2 kappa``. Solved by the Gauss-Newton of
``bodil.optimize.gauss_newton`` without bounds, its time-marching preconditioner and Levenberg-Marquardt
damping as the pipeline's inner solves; the objective ``f`` of the clipped solution is compared with the
projected (bounded) solve of the same length.

    .venv/bin/python benchmarks/tumor_penalty.py --kappa 1e4 --max-iter 30

Measured (docs/tumor.md, "an exterior penalty does not converge either"): at kappa = 1e4, 30 iterations at the
cap, every CG solve at its cap, a third of the values below zero; at 1e6 almost no progress in 12; not kept.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from tumor_inner import field_problem_at_truth  # noqa: E402

from bodil.optimize import Objective  # noqa: E402
from bodil.optimize.gauss_newton import GaussNewton  # noqa: E402
from bodil.tumor import CTVSettings  # noqa: E402


class PenalisedObjective(Objective):
    """``Objective`` plus the least-squares block ``sqrt(2 kappa) (min(u, 0), max(u - 1, 0))`` on the field."""

    def __init__(self, posterior, u0, theta0, kappa: float):
        super().__init__(posterior, u0, theta0)
        self.kappa = float(kappa)

    def _outside(self, x):
        return jnp.concatenate([jnp.minimum(x, 0.0), jnp.maximum(x - 1.0, 0.0)])

    def residual(self, x) -> dict:
        return {**super().residual(x), "box": jnp.sqrt(2.0 * self.kappa) * self._outside(x)}

    def value(self, x):
        return super().value(x) + self.kappa * jnp.sum(jnp.square(self._outside(x)))


def solve(obj, x0, settings: CTVSettings, max_iter: int, ftol: float, bounds):
    gn = GaussNewton(obj, damping=settings.inner_damping, adaptive_damping=True,
                     cg_maxiter=settings.inner_cg_iterations, bounds=bounds)
    start = time.perf_counter()
    x, rep = gn.run(jnp.asarray(x0), fix_theta=True, max_iter=max_iter, gtol=1e-8, ftol=ftol)
    return x, rep, time.perf_counter() - start


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--nt", type=int, default=12)
    ap.add_argument("--kappa", type=float, nargs="+", default=[1e4, 1e6])
    ap.add_argument("--max-iter", type=int, default=30)
    ap.add_argument("--ftol", type=float, default=1e-9)
    ap.add_argument("--bounded", action="store_true", help="also run the projected (bounded) solve")
    args = ap.parse_args(argv)

    settings, plain, x0 = field_problem_at_truth(args.n, args.nt)
    print(f"box {args.n}^3 x {args.nt}: {x0.size} unknowns; start (march) f = {float(plain.value(x0)):.4f}")
    print("| solve | its | CG (total) | stop | f_kappa | f(clip u) | min u | voxels < -1e-6 | wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    runs = [("bounded (projected)", plain, "auto")] if args.bounded else []
    u0 = plain.unravel(x0)[0]
    runs += [(f"penalty kappa={k:g}", PenalisedObjective(plain.posterior, u0, {}, k), None) for k in args.kappa]
    for name, obj, bounds in runs:
        x, rep, wall = solve(obj, x0, settings, args.max_iter, args.ftol, bounds)
        cg = rep.extra.get("cg_iterations", [])
        f_clip = float(plain.value(jnp.clip(x, 0.0, 1.0)))
        print(f"| {name} | {rep.iterations} | {int(sum(cg))} | {rep.message[:60]} | {float(rep.loss):.4f} | "
              f"{f_clip:.4f} | {float(x.min()):.2e} | {int(np.sum(np.asarray(x) < -1e-6))} | {wall:.1f} |")
        print("   history:", " ".join(f"{v:.3f}" for v in rep.history[:40]))
        print("   CG:", cg[:40], " damping:", [f"{d:.2g}" for d in rep.extra.get("damping", [])[:40]], flush=True)


if __name__ == "__main__":
    main()
