"""The inner ODIL solve of the tumour posterior in residual-forcing variables: an experiment for the ODIL issue.

With ``theta`` fixed, the inner solve minimises over the space-time field ``u``

    Phi(u) = w_PDE sum_n |r_n(u)|^2 + w_IC |u^0 - u_IC|^2 + L(u^N),

``r_n`` the Crank-Nicolson residual of step ``n`` (``bodil.residuals.reaction_diffusion``) and ``L`` the
segmentation's negative log-likelihood of the final field. In the forcing variables ``z = (e, f)`` the field
is the Crank-Nicolson march with forcing, ``r_n(u) = f_n`` and ``u^0 = u_IC + e``
(``bodil.forward.crank_nicolson``), so

    Phi(z) = w_PDE |f|^2 + w_IC |e|^2 + L(u^N(e, f)),

whose Gauss-Newton matrix ``D + G^T H_L G`` (``D`` the constant diagonal, ``G = d u^N / d z`` by the
tangent-linear march, ``G^T`` by its adjoint, ``H_L`` the positive part of the likelihood's voxelwise second
derivative) is well conditioned when ``w_PDE`` is large: conjugate gradients preconditioned by ``D`` need few
iterations. The unknowns live on the tissue points (outside them the logistic reaction of a forced ``u < 0``
diverges). Each Gauss-Newton step is followed by a backtracking (Armijo) line search on ``Phi``, one nonlinear
march per trial.

The script checks the pieces (the split of ``Phi`` against ``TumorPosterior``'s density, the tangent against
finite differences, the adjoint identity), then runs Gauss-Newton on the phantom of ``benchmarks/batching.py``
(sigmoid likelihood, origin moved by ``--shift`` mm from the truth, other parameters at the truth) with the
initial perturbation ``e`` free (the ODIL posterior) or fixed at zero (``--fixed-initial``, the
``lambda_IC -> infinity`` limit), and prints per iteration the objective, gradient norm, Newton decrement,
CG iterations, step length and ``min u``, then the cost in explicit forward runs.

    .venv/bin/python benchmarks/tumor_forcing.py                      # 24^3 x 12, e free
    .venv/bin/python benchmarks/tumor_forcing.py --fixed-initial
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from batching import phantom_model  # noqa: E402  (benchmarks/ is the script's folder)
from bodil import stencil  # noqa: E402
from bodil.optimize.preconditioner import implicit_solve  # noqa: E402
from bodil.tumor.model import ORIGIN  # noqa: E402


def forcing_problem(model, theta_in: dict):
    """The march with forcing, its tangent and adjoint, and ``Phi`` for the model at ``theta_in`` (origin)."""
    post = model.posterior
    theta = post.params.merge(theta_in)
    grid = post.grid
    dt, shape = grid.spacing[0], tuple(grid.shape[1:])
    faces, rho = post.prior.residual.space_operator(theta, grid)
    periodic = grid.periodic[1:]
    rho = jnp.broadcast_to(jnp.asarray(rho, jnp.float64), shape)
    u_ic = jnp.asarray(model.initial_condition(theta))

    def rate(v):
        return stencil.diffusion_operator(v, faces, periodic) + rho * v * (1.0 - v)

    def drate(v, x):  # rate'(v) x
        return stencil.diffusion_operator(x, faces, periodic) + rho * (1.0 - 2.0 * v) * x

    @jax.jit
    def march(e, f):
        def step(u, fn):
            known = u / dt + 0.5 * rate(u) + fn

            def g(y):
                return y / dt - 0.5 * rate(y) - known

            def body(c):
                y, k = c
                return y + implicit_solve(faces, periodic, dt, rho * (1.0 - 2.0 * y), -g(y), 1e-12, 500), k + 1

            def cond(c):
                return (c[1] < 20) & (jnp.linalg.norm(g(c[0])) > 1e-11 * jnp.linalg.norm(known))

            y, _ = jax.lax.while_loop(cond, body, (u, 0))
            return y, y

        u0 = u_ic + e
        _, rest = jax.lax.scan(step, u0, f)
        return jnp.concatenate([u0[None], rest])

    @jax.jit
    def tangent(u, de, df):
        """``d u^N`` for the direction ``(de, df)`` at the march ``u``."""
        def step(x, inp):
            un, un1, dfn = inp
            y = implicit_solve(faces, periodic, dt, rho * (1.0 - 2.0 * un1), x / dt + 0.5 * drate(un, x) + dfn,
                               1e-12, 500)
            return y, None

        return jax.lax.scan(step, de, (u[:-1], u[1:], df))[0]

    @jax.jit
    def adjoint(u, w):
        """``G^T w`` as ``(de, df)``."""
        def step(mu, inp):
            un, un1 = inp
            q = implicit_solve(faces, periodic, dt, rho * (1.0 - 2.0 * un1), mu, 1e-12, 500)
            return q / dt + 0.5 * drate(un, q), q

        return jax.lax.scan(step, w, (u[:-1], u[1:]), reverse=True)

    lik = post.likelihoods[0]

    def data_term(u_final, u):
        return -lik.log_prob(u.at[-1].set(u_final), theta)

    grad_data = jax.jit(jax.grad(data_term))

    @jax.jit
    def curvature(u_final, u):  # the likelihood is voxelwise: its Hessian is diagonal
        return jnp.maximum(jax.jvp(lambda v: grad_data(v, u), (u_final,), (jnp.ones_like(u_final),))[1], 0.0)

    blocks = post.prior.blocks(march(jnp.zeros(shape), jnp.zeros((grid.shape[0] - 1,) + shape)), theta)
    w_pde = next(b.weight for k, b in blocks.items() if k.startswith("pde"))
    w_ic = next(b.weight for k, b in blocks.items() if k.startswith("ic"))
    return dict(march=march, tangent=tangent, adjoint=adjoint, grad_data=grad_data, curvature=curvature,
                objective=jax.jit(lambda u: -post.log_density(u, theta_in)), data_term=data_term,
                w_pde=float(w_pde), w_ic=float(w_ic), shape=shape, nt=grid.shape[0],
                tissue=jnp.asarray((np.asarray(model.wm) + np.asarray(model.gm)) >= 0.1, jnp.float64))


def checks(p) -> None:
    """The split of ``Phi``, the tangent against central differences, the adjoint identity."""
    shape, zero = p["shape"], jnp.zeros((p["nt"] - 1,) + p["shape"])
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    e = 1e-4 * p["tissue"] * jax.random.normal(keys[0], shape)
    f = 1e-5 * p["tissue"] * jax.random.normal(keys[1], zero.shape)
    u0, u1 = p["march"](jnp.zeros(shape), zero), p["march"](e, f)
    full = float(p["objective"](u1) - p["objective"](u0))
    split = float(p["w_pde"] * jnp.sum(f**2) + p["w_ic"] * jnp.sum(e**2) + p["data_term"](u1[-1], u1)
                  - p["data_term"](u0[-1], u0))
    de, df = p["tissue"] * jax.random.normal(keys[2], shape), p["tissue"] * jax.random.normal(keys[3], zero.shape)
    eps = 1e-6
    fd = (p["march"](eps * de, eps * df)[-1] - p["march"](-eps * de, -eps * df)[-1]) / (2 * eps)
    tl = p["tangent"](u0, de, df)
    w = jax.random.normal(keys[4], shape)
    ge, gf = p["adjoint"](u0, w)
    print(f"checks: Phi change {full:.10g} (density) vs {split:.10g} (split); tangent vs central differences "
          f"{float(jnp.linalg.norm(tl - fd) / jnp.linalg.norm(fd)):.1e} (relative); adjoint identity "
          f"{float(jnp.vdot(w, tl)):.10g} vs {float(jnp.vdot(ge, de) + jnp.vdot(gf, df)):.10g}")


def gauss_newton(p, *, free_initial: bool, max_iter: int, cg_max: int, eta_max: float = 0.1):
    """Gauss-Newton-CG in ``(e, f)`` (``e`` held at 0 unless ``free_initial``) from the march at ``z = 0``."""
    shape, tissue = p["shape"], p["tissue"]
    mask_e = tissue if free_initial else jnp.zeros(shape)
    d_e, d_f = 2.0 * p["w_ic"], 2.0 * p["w_pde"]
    e, f = jnp.zeros(shape), jnp.zeros((p["nt"] - 1,) + shape)
    u = p["march"](e, f)
    value = float(p["objective"](u))
    counts = dict(nonlinear=1, linear=0)
    rows, g0 = [], None
    for it in range(max_iter):
        ge, gf = p["adjoint"](u, p["grad_data"](u[-1], u))
        counts["linear"] += 1
        ge, gf = mask_e * (ge + d_e * e), tissue * (gf + d_f * f)
        gnorm = float(jnp.sqrt(jnp.vdot(ge, ge) + jnp.vdot(gf, gf)))
        g0 = gnorm if g0 is None else g0
        h = p["curvature"](u[-1], u)

        def hess(ve, vf, u=u, h=h):
            ae, af = p["adjoint"](u, h * p["tangent"](u, ve, vf))
            counts["linear"] += 2
            return mask_e * (d_e * ve + ae), tissue * (d_f * vf + af)

        eta = min(eta_max, np.sqrt(gnorm / g0))  # Eisenstat-Walker-like forcing term
        xe, xf = jnp.zeros_like(e), jnp.zeros_like(f)
        re, rf = -ge, -gf
        ze, zf = mask_e * re / d_e, rf / d_f
        pe, pf = ze, zf
        rz = float(jnp.vdot(re, ze) + jnp.vdot(rf, zf))
        for k in range(1, cg_max + 1):
            he, hf = hess(pe, pf)
            a = rz / float(jnp.vdot(pe, he) + jnp.vdot(pf, hf))
            xe, xf, re, rf = xe + a * pe, xf + a * pf, re - a * he, rf - a * hf
            if float(jnp.sqrt(jnp.vdot(re, re) + jnp.vdot(rf, rf))) <= eta * gnorm:
                break
            ze, zf = mask_e * re / d_e, rf / d_f
            rz_new = float(jnp.vdot(re, ze) + jnp.vdot(rf, zf))
            pe, pf, rz = ze + rz_new / rz * pe, zf + rz_new / rz * pf, rz_new
        decrement = -float(jnp.vdot(ge, xe) + jnp.vdot(gf, xf))
        step = 1.0
        while True:
            u_new = p["march"](e + step * xe, f + step * xf)
            new = float(p["objective"](u_new))
            counts["nonlinear"] += 1
            if new <= value - 1e-4 * step * decrement or step < 1e-3:
                break
            step *= 0.5
        e, f, u, value = e + step * xe, f + step * xf, u_new, new
        rows.append(dict(it=it, objective=value, grad=gnorm, decrement=decrement, cg=k, step=step,
                         min_u=float(u.min()), max_f=float(jnp.abs(f).max())))
        r = rows[-1]
        print(f"{it:>4} {value:>14.6f} {gnorm:>10.2e} {decrement:>10.2e} {k:>4} {step:>9.4g} {r['min_u']:>10.2e} "
              f"{r['max_f']:>9.2e}", flush=True)
        if 0.0 <= decrement <= 1e-8:
            break
    return rows, counts


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=24, help="box points per axis")
    ap.add_argument("--nt", type=int, default=12, help="time nodes")
    ap.add_argument("--shift", type=float, default=1.5, help="origin moved from the truth (mm, every axis)")
    ap.add_argument("--fixed-initial", action="store_true", help="hold e = 0 (the lambda_IC -> infinity limit)")
    ap.add_argument("--max-iter", type=int, default=30)
    ap.add_argument("--cg", type=int, default=50, help="CG iterations per Gauss-Newton step at most")
    args = ap.parse_args(argv)
    model, truth = phantom_model(args.n, args.nt)
    model = model.with_fixed(truth, infer=ORIGIN)
    theta = {c: jnp.asarray(truth[c] + args.shift) for c in ORIGIN}
    p = forcing_problem(model, theta)
    print(f"{args.n}^3 x {args.nt}, sigmoid likelihood, origin {args.shift} mm from the truth; w_PDE = "
          f"{p['w_pde']:g}, w_IC = {p['w_ic']:g}; e {'fixed at 0' if args.fixed_initial else 'free'}")
    checks(p)
    gauss_newton(p, free_initial=not args.fixed_initial, max_iter=1, cg_max=2)  # compile
    t0 = time.perf_counter()
    model.forward({**truth, **theta})  # compile
    t_fk = time.perf_counter()
    for _ in range(5):
        jax.block_until_ready(model.forward({**truth, **theta}))
    t_fk = (time.perf_counter() - t_fk) / 5
    t_march = time.perf_counter()
    jax.block_until_ready(p["march"](jnp.zeros(p["shape"]), jnp.zeros((p["nt"] - 1,) + p["shape"])))
    t_march = time.perf_counter() - t_march
    print(f"{'it':>4} {'objective':>14} {'|grad|':>10} {'decrement':>10} {'cg':>4} {'step':>9} {'min u':>10} "
          f"{'max|f|':>9}")
    t0 = time.perf_counter()
    rows, counts = gauss_newton(p, free_initial=not args.fixed_initial, max_iter=args.max_iter, cg_max=args.cg)
    wall = time.perf_counter() - t0
    print(f"{'converged' if 0.0 <= rows[-1]['decrement'] <= 1e-8 else 'not converged'} after {len(rows)} iterations: "
          f"{wall:.1f} s = {wall / t_fk:.0f} explicit forward runs ({1e3 * t_fk:.1f} ms each); "
          f"{counts['nonlinear']} nonlinear marches ({t_march:.2f} s each), {counts['linear']} linear marches; "
          f"min u {rows[-1]['min_u']:.3g}")


if __name__ == "__main__":
    main()
