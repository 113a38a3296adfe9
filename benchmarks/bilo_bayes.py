"""Bayesian BiLO (HMC and MALA, ``bodil.bilo.bayes``) against a NUTS reference on Fisher-KPP with noise 1e-2.

Zhang et al., "BiLO: Bilevel Local Operator Learning for PDE inverse problems", sec. 3.1 (the case) and its
Part II (Bayesian BiLO). Same likelihood (Gaussian, sd = noise) and prior (log-normal on D and rho) for every
sampler; the reference is NUTS through the finite-difference solve (``bayes.reference_posterior``), checked
against quadrature on a grid in ``(log D, log rho)`` (no Monte Carlo error). For each lower-level tolerance:
posterior mean and sd of D and rho, ``|difference| / MC error`` against NUTS (MC errors of both, from ESS), ESS,
acceptance, Adam steps per draw, unconverged lower solves and wall time.

    nice -n 10 .venv/bin/python benchmarks/bilo_bayes.py             # the docs table
    nice -n 10 .venv/bin/python benchmarks/bilo_bayes.py --quick     # a smoke run
"""

from __future__ import annotations

import argparse
import time
import warnings

import jax

jax.config.update("jax_enable_x64", True)  # a script: the lower-level tolerances go below float32's reach

import arviz as az  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bodil.bilo import BiLOSettings, bayes, cases, fit, local_operator_net, losses, trainer  # noqa: E402
from bodil.prior import LogNormal, Params  # noqa: E402

NAMES = ("D", "rho")


def quadrature(forward, y, params, sigma, n=81):
    """Posterior mean and sd of D and rho on an ``n x n`` grid in ``(log D, log rho)`` (+-4 prior sd)."""
    axes = [float(params.priors[k].loc) + np.linspace(-4, 4, n) * float(params.priors[k].scale) for k in NAMES]
    zd, zr = (a.ravel() for a in np.meshgrid(*axes, indexing="ij"))

    def logp(a, b):
        th = {"D": jnp.exp(a), "rho": jnp.exp(b)}
        return -jnp.sum((forward(th) - y) ** 2) / (2 * sigma**2) + params.log_prob(th) + a + b

    lp = np.asarray(jax.lax.map(lambda ab: logp(*ab), (jnp.asarray(zd), jnp.asarray(zr)), batch_size=256))
    w = np.exp(lp - lp.max())
    w /= w.sum()
    out = {}
    for k, z in zip(NAMES, (zd, zr)):
        m = float(np.sum(w * np.exp(z)))
        out[k] = (m, float(np.sqrt(np.sum(w * (np.exp(z) - m) ** 2))))
    return out


def summary(idata):
    post = idata.posterior
    ess, mse, sse = az.ess(idata), az.mcse(idata), az.mcse(idata, method="sd")
    return {k: dict(mean=float(post[k].mean()), sd=float(post[k].std()), ess=float(ess[k]), se_mean=float(mse[k]),
                    se_sd=float(sse[k])) for k in NAMES}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tol-factors", type=float, nargs="+", default=[8.0, 4.0, 2.5],
                    help="lower-level tolerances as multiples of the pre-trained network's L_LO")
    ap.add_argument("--width", type=int, default=24)
    ap.add_argument("--n-res", type=int, default=11)
    ap.add_argument("--pre-steps", type=int, default=6000)
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--kernels", nargs="+", choices=["hmc", "mala"], default=["hmc", "mala"])
    ap.add_argument("--lower-start", nargs="+", choices=["warm", "anchor"], default=["warm"],
                    help="where each lower-level solve starts (BayesBiLOSettings.lower_start); one row set each")
    ap.add_argument("--solver", choices=["adam", "lbfgs"], default="adam",
                    help="the lower level's optimiser (bayesian_bilo(solver=...))")
    ap.add_argument("--lower-steps", type=int, nargs="+",
                    help="fixed numbers of lower-level steps per solve (lower_tol = 0), one row each, instead of "
                         "--tol-factors")
    args = ap.parse_args()
    if args.quick:
        args.samples, args.warmup, args.pre_steps, args.tol_factors = 60, 40, 500, args.tol_factors[:1]
    t_all = time.perf_counter()
    noise = 1e-2
    case = cases.fisher_kpp(noise=noise, seed=0, n_res=args.n_res, nx_ref=30, dt_ref=2e-3)
    params = Params(D=LogNormal(np.log(0.02), 0.5), rho=LogNormal(np.log(2.0), 0.5))
    forward = bayes.fisher_kpp_forward(case)
    y = jnp.asarray(case.problem.data_values)
    quad = quadrature(forward, y, params, noise)
    t = time.perf_counter()
    ref = bayes.reference_posterior(forward, y, params, noise, case.truth, num_samples=3 * args.samples,
                                    num_warmup=2 * args.warmup, seed=1)
    rows = [("NUTS (FD reference)", "-", summary(ref), time.perf_counter() - t, {})]

    # pre-training at the start (the prior median), with a reference solve there, as in bodil.bilo.fit
    start = case.truth
    net = local_operator_net(0, 2, 2, width=args.width, transform=cases.hard_conditions)
    tr = trainer(case.problem, net, BiLOSettings(lr_net=2e-3), reference=(cases.grid_points(case.grid),
                                                                         case.reference(start).ravel()))
    t = time.perf_counter()
    pre = fit(tr, tr.init(start, pretrain=True), args.pre_steps)
    pre_wall = time.perf_counter() - t
    floor = float(losses.local_operator_loss(pre.net, case.problem, pre.state.p, 0.1)[0])  # L_LO, no reference fit
    sampler = bayes.bayesian_bilo(case.problem, net, params, noise, lr=1e-3, solver=args.solver)
    lower = ([(f * floor, 100) for f in args.tol_factors] if args.lower_steps is None
             else [(0.0, k) for k in args.lower_steps])
    for kernel, start_mode, (tol, max_steps) in [(k, m, lw) for k in args.kernels for m in args.lower_start
                                                 for lw in lower]:
        draws = args.samples if kernel == "hmc" else 2 * args.samples
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # counted in the table
            idata = bayes.sample(sampler, (pre.state.params, start), kernel=kernel, num_samples=draws,
                                 num_warmup=args.warmup if kernel == "hmc" else 2 * args.warmup,
                                 num_steps=5, lower_tol=tol, lower_steps=max_steps,
                                 init_steps=2000 if args.solver == "lbfgs" else 5000, seed=2, lower_start=start_mode)
        ss = idata.sample_stats
        extra = dict(accept=float(ss.acceptance_rate.mean()), steps=float(ss.lower_steps.mean()),
                     missed=idata.attrs["lower_unconverged"], solves=idata.attrs["lower_solves"],
                     lower_loss=float(np.mean(ss.lower_loss)), start_loss=idata.attrs["start_lower_loss"])
        name = (f"B-BiLO {kernel.upper()}" + (", anchor" if start_mode == "anchor" else "")
                + (f", L-BFGS x {max_steps}" if args.solver == "lbfgs" else ""))
        rows.append((name, f"{tol:.2g}", summary(idata), time.perf_counter() - t, extra))
        print(rows[-1], flush=True)

    print(f"\nFisher-KPP, noise {noise:g}, 9 data points, prior log-normal (median truth, log-sd 0.5); network "
          f"2 x {args.width} tanh float64 on {args.n_res} x {args.n_res} residual points, pre-trained "
          f"{args.pre_steps} steps ({pre_wall:.0f} s, L_LO {floor:.2g}); quadrature: D {quad['D'][0]:.4f} +- "
          f"{quad['D'][1]:.4f}, rho {quad['rho'][0]:.3f} +- {quad['rho'][1]:.3f}\n")
    print("| sampler | lower tol | mean D (sd) | mean rho (sd) | z mean D, rho | z sd D, rho | ESS D, rho | "
          f"accept | {'L-BFGS iterations' if args.solver == 'lbfgs' else 'Adam steps'}/draw | mean L_LO | missed tol "
          "| wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    r0 = rows[0][2]
    for name, tol, s, wall, ex in rows:
        z = {k: [abs(s[k][m] - r0[k][m]) / np.hypot(s[k][f"se_{m}"], r0[k][f"se_{m}"]) for m in ("mean", "sd")]
             for k in NAMES}
        zs = ("-", "-") if name.startswith("NUTS") else (f"{z['D'][0]:.1f}, {z['rho'][0]:.1f}",
                                                          f"{z['D'][1]:.1f}, {z['rho'][1]:.1f}")
        print(f"| {name} | {tol} | {s['D']['mean']:.4f} ({s['D']['sd']:.4f}) | {s['rho']['mean']:.3f} "
              f"({s['rho']['sd']:.3f}) | {zs[0]} | {zs[1]} | {s['D']['ess']:.0f}, {s['rho']['ess']:.0f} | "
              f"{ex.get('accept', float('nan')):.2f} | {ex.get('steps', float('nan')):.1f} | "
              f"{ex.get('lower_loss', float('nan')):.2g} | {ex.get('missed', '-')}"
              f"{'/' + str(ex['solves']) if 'solves' in ex else ''} | {wall:.0f} |")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
