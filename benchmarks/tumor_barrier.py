"""A primal-dual interior-point Gauss-Newton solve of the tumour posterior's field (theta fixed).

The inner problem of the mode approximation (Amoudruz et al. 2025, eq. 12 and 32) is

    min_u f(u) = w_PDE |r(u)|^2 + w_IC |u^0 - u_IC|^2 - log p(D | u)     subject to 0 <= u <= 1,

and its constrained minimiser has ``u = 0`` on a set of voxels that the segmentation calls healthy. The
projected Gauss-Newton of ``bodil.optimize.gauss_newton`` has to guess that set and creeps (docs/tumor.md).
Here the bounds enter through a logarithmic barrier instead (Nocedal and Wright, *Numerical Optimization*,
ch. 19; Waechter and Biegler 2006, *On the implementation of an interior-point filter line-search algorithm
for large-scale nonlinear programming*), with ``s_l = u - 0``, ``s_u = 1 - u`` and duals ``z_l, z_u >= 0``:

    (H + Sigma) p = -(g - mu / s_l + mu / s_u),      Sigma = z_l / s_l + z_u / s_u,
    dz_l = mu / s_l - z_l - (z_l / s_l) p,            dz_u = mu / s_u - z_u + (z_u / s_u) p,

``H`` the Gauss-Newton matrix, solved by preconditioned CG: the time-marching preconditioner (exact inverse
of the PDE and IC curvature) on the values with ``Sigma`` below the PDE curvature's diagonal, ``1 / Sigma``
on the others (held near a bound by the barrier). Steps stop at 0.995 of the distance to a bound; an Armijo
backtracking on the barrier function ``f - mu sum(log s_l + log s_u)``; ``mu`` falls (``min(mu / 5,
mu^1.5)``) once the Newton decrement is below ``kappa 2 N mu``; the solve stops at ``mu <= mu_final`` with
the decrement below ``ftol |f|``. For a convex ``f`` the gap to the constrained minimum is then below
``2 N mu_final + decrement``.

    .venv/bin/python benchmarks/tumor_barrier.py --max-iter 70 --start-gap 1e-3 --held-factor 0.01
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
from bodil.optimize.cg import truncated_cg  # noqa: E402
from bodil.optimize.preconditioner import time_marching_preconditioner  # noqa: E402


def make_step(obj: Objective, held_above: float, cg_maxiter: int, eta_max: float = 0.1):
    """One compiled primal-dual step ``(x, z_l, z_u, mu, |g_0|) -> dict`` (module docstring)."""
    residual, scalar, value = obj.residual, obj.scalar, obj.value

    def barrier(x, mu):
        return value(x) - mu * jnp.sum(jnp.log(x) + jnp.log1p(-x))

    def step(x, zl, zu, mu, g0_norm):
        r, jvp = jax.linearize(residual, x)
        vjp = jax.linear_transpose(jvp, x)
        s_val, s_grad = jax.value_and_grad(scalar)(x)
        loss = 0.5 * sum(jnp.sum(jnp.square(v)) for v in jax.tree.leaves(r)) + s_val
        g = vjp(r)[0] + s_grad
        sl, su = x, 1.0 - x
        gb = g - mu / sl + mu / su
        sigma = zl / sl + zu / su

        def curvature(p):
            return vjp(jvp(p))[0] + jax.jvp(jax.grad(scalar), (x,), (p,))[1]

        def matvec(p):
            return curvature(p) + sigma * p

        free = (sigma <= held_above).astype(x.dtype)
        march = time_marching_preconditioner(obj, x, matvec, free=free)

        def precondition(v):
            return free * march(free * v) + (1.0 - free) * v / sigma

        gb_norm = jnp.linalg.norm(gb)
        eta = jnp.minimum(eta_max, jnp.sqrt(gb_norm / g0_norm))
        p, info = truncated_cg(matvec, -gb, eta * gb_norm, cg_maxiter, precondition)
        decrement = -jnp.vdot(gb, p)
        tau = jnp.maximum(0.99, 1.0 - mu)
        ratio = jnp.where(p < 0, -p / sl, jnp.where(p > 0, p / su, 0.0))
        alpha_max = jnp.minimum(1.0, tau / jnp.maximum(jnp.max(ratio), 1e-300))
        dzl = mu / sl - zl - zl / sl * p
        dzu = mu / su - zu + zu / su * p
        zr = jnp.maximum(jnp.max(jnp.where(dzl < 0, -dzl / zl, 0.0)), jnp.max(jnp.where(dzu < 0, -dzu / zu, 0.0)))
        alpha_z = jnp.minimum(1.0, tau / jnp.maximum(zr, 1e-300))
        phi0 = barrier(x, mu)
        slope = jnp.vdot(gb, p)

        def cond(state):
            t, phi, k = state
            return ~(jnp.isfinite(phi) & (phi <= phi0 + 1e-4 * t * slope)) & (k < 40)

        def body(state):
            t, _, k = state
            t = 0.5 * t
            return t, barrier(x + t * p, mu), k + 1

        t, phi, k = jax.lax.while_loop(cond, body, (alpha_max, barrier(x + alpha_max * p, mu), 0))
        ok = jnp.isfinite(phi) & (phi <= phi0 + 1e-4 * t * slope)
        x_new = jnp.where(ok, x + t * p, x)
        zl_new = zl + alpha_z * dzl
        zu_new = zu + alpha_z * dzu
        s_l, s_u = x_new, 1.0 - x_new  # keep z within a factor 1e10 of mu / s (Waechter and Biegler, eq. 16)
        zl_new = jnp.clip(zl_new, mu / (1e10 * s_l), 1e10 * mu / s_l)
        zu_new = jnp.clip(zu_new, mu / (1e10 * s_u), 1e10 * mu / s_u)
        dual_inf = jnp.max(jnp.abs(g - zl + zu))
        i = jnp.argmax(ratio)
        block = jnp.stack([x[i], p[i], sigma[i], free[i], zl[i], g[i], jnp.sum(ratio > 1.0), i.astype(x.dtype)])
        return dict(x=x_new, zl=zl_new, zu=zu_new, loss=loss, value=value(x_new), decrement=decrement,
                    cg=info.iterations, cg_ok=info.residual_norm <= eta * gb_norm, alpha_max=alpha_max, t=t,
                    backtracks=k, accepted=ok, held=jnp.sum(1.0 - free), dual_inf=dual_inf, gb_norm=gb_norm,
                    block=block)

    return jax.jit(step)


def interior_point(obj: Objective, x0, *, mu0: float, mu_final: float, ftol: float, held_above: float,
                   max_iter: int, cg_maxiter: int, kappa: float = 0.1, start_gap: float = 1e-6,
                   verbose: bool = False):
    """The barrier iterations from ``x0`` pushed ``start_gap`` inside the box; returns ``(x, history,
    converged)`` and prints a line per iteration (with ``verbose`` also the value that limits the step)."""
    n = x0.size
    x = jnp.clip(x0, start_gap, 1.0 - start_gap)
    mu = mu0
    zl, zu = mu / x, mu / (1.0 - x)
    step = make_step(obj, held_above, cg_maxiter)
    g0 = None
    history = []
    start = time.perf_counter()
    for it in range(max_iter):
        if g0 is None:
            g0 = jnp.linalg.norm(jax.grad(obj.value)(x) - mu / x + mu / (1 - x))
        out = step(x, zl, zu, jnp.asarray(mu), g0)
        block = np.asarray(out.pop("block"))
        out = {k: (v if k in ("x", "zl", "zu") else float(v)) for k, v in out.items()}
        x, zl, zu = out["x"], out["zl"], out["zu"]
        history.append(dict(it=it + 1, mu=mu, **{k: v for k, v in out.items() if k not in ("x", "zl", "zu")}))
        h = history[-1]
        print(f"  {it + 1:3d} mu {mu:.1e} f {h['value']:.4f} decr {h['decrement']:.2e} cg {int(h['cg'])}"
              f"{'' if h['cg_ok'] else '(cap)'} a_max {h['alpha_max']:.2e} t {h['t']:.2e} held {int(h['held'])}"
              f" dual_inf {h['dual_inf']:.2e} min u {float(x.min()):.2e} {time.perf_counter() - start:.1f}s",
              flush=True)
        if verbose:
            print("      block: u %.2e p %.2e Sigma %.2e free %d z_l %.2e g %.2e; %d values cross a bound at t=1; "
                  "index %d" % tuple(block), flush=True)
        if h["decrement"] <= max(kappa * 2 * n * mu, ftol * abs(h["loss"])):
            if mu <= mu_final and h["decrement"] <= ftol * abs(h["loss"]):
                return x, history, True
            mu = max(mu_final, min(mu / 5, mu ** 1.5))
            g0 = None
    return x, history, False


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--nt", type=int, default=12)
    ap.add_argument("--mu0", type=float, default=1e-3)
    ap.add_argument("--mu-final", type=float, default=None, help="default: ftol |f| / (20 N)")
    ap.add_argument("--ftol", type=float, default=1e-6)
    ap.add_argument("--max-iter", type=int, default=80)
    ap.add_argument("--cg", type=int, default=200)
    ap.add_argument("--verbose", action="store_true", help="print the value that limits each step")
    ap.add_argument("--start-gap", type=float, default=1e-6, help="the start is pushed this far inside [0, 1]")
    ap.add_argument("--held-factor", type=float, default=1.0,
                    help="values with Sigma above this times the PDE curvature's diagonal are preconditioned by "
                         "1 / Sigma")
    args = ap.parse_args(argv)

    _, obj, x0 = field_problem_at_truth(args.n, args.nt)
    n = x0.size
    f0 = float(obj.value(jnp.clip(x0, 0, 1)))
    # the PDE and IC curvature's diagonal at an interior point (the preconditioner's domain)
    e = jnp.zeros(n).at[n - n // (2 * args.nt)].set(1.0)
    r, jvp = jax.linearize(obj.residual, x0)
    diag = float(jax.linear_transpose(jvp, x0)(jvp(e))[0][n - n // (2 * args.nt)])
    mu_final = args.mu_final or args.ftol * abs(f0) / (20 * n)
    print(f"box {args.n}^3 x {args.nt}: {n} unknowns; start (march, clipped) f = {f0:.4f}; PDE curvature "
          f"diagonal {diag:.3g}; mu {args.mu0:g} -> {mu_final:.2e}", flush=True)
    start = time.perf_counter()
    x, hist, ok = interior_point(obj, x0, mu0=args.mu0, mu_final=mu_final, ftol=args.ftol,
                                 held_above=args.held_factor * diag, max_iter=args.max_iter, cg_maxiter=args.cg,
                                 start_gap=args.start_gap, verbose=args.verbose)
    wall = time.perf_counter() - start
    print(f"interior point: {'converged' if ok else 'NOT converged'} in {len(hist)} its, "
          f"{int(sum(h['cg'] for h in hist))} CG, {wall:.1f} s; f = {float(obj.value(x)):.4f}, "
          f"min u {float(x.min()):.2e}, max u {float(x.max()):.6f}")


if __name__ == "__main__":
    main()
