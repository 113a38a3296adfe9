"""BiLO vs PINN (several data weights w) vs bodil's ODIL on the Fisher-KPP inverse problem of Zhang et al.,
"BiLO: Bilevel Local Operator Learning for PDE inverse problems" (sec. 3.1): infer (D, rho) from 9 points at
t = 1, noise sd 0, 1e-3, 1e-2.

Per method and noise level (mean and sd over the seeds; a seed draws the noise; noise-free data are run once):
relative errors of D and rho, relative L2 error of the method's solution on the --n-res x --n-res grid (the
paper: 51) against the reference solve at the inferred parameters, relative data-loss error
(L_dat - sigma^2) / sigma^2, and the wall time of the inverse solve (pre-training, which sees no data, is done
once per network and timed on its own line; the neural wall times include no compilation after the first run).
ODIL solves on the same grid with PDE weight beta (one row per --odil-beta).

    .venv/bin/python benchmarks/bilo.py --quick         # about a minute
    .venv/bin/python benchmarks/bilo.py                 # the size reported in docs/bilo.md (about 15 min)
    .venv/bin/python benchmarks/bilo.py --only-odil --odil-beta 1e4 1e6 1e8
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import bodil  # noqa: E402
from bodil.bilo import BiLOSettings, cases, fit, local_operator_net, trainer  # noqa: E402


def make_trainer(case, method, args, w=1.0):
    """One compiled trainer per method (and PINN weight) for every noise draw: data values are arguments."""
    net = local_operator_net(0, 2, 2, width=args.width, depth=args.depth, transform=cases.hard_conditions,
                             uses_params=method == "bilo", dtype=jnp.float32)
    settings = BiLOSettings(method=method, w_data=w, chunk=args.chunk, lr_theta=args.lr_theta)
    return trainer(case.problem, net, settings, reference=case.pretrain)


def pretrain(tr, case, args):
    """Pre-training at theta_0: residual (+ residual gradient for BiLO) + fit to the reference solution there."""
    res = fit(tr, tr.init(case.theta0, pretrain=True), args.pre_steps)
    return res.state.params, res.wall_time, float(res.history["residual"][-1])


def neural_row(tr, params, case, args):
    res = fit(tr, tr.init(case.theta0, params=params), args.steps, values=case.problem.data_values)
    field = cases.network_field(res.net, case, res.state.p)
    dat = float(res.history["data"][-1])
    return res.theta, cases.metrics(case, res.theta, field, dat), res.wall_time


def odil_row(case, beta):
    post, u0, theta0 = cases.odil_posterior(case, beta=beta)
    t0 = time.perf_counter()
    fitted = bodil.map_estimate(post, u0, theta0, method="gauss-newton", throw=False, max_iter=200)
    wall = time.perf_counter() - t0
    theta = {k: float(v) for k, v in fitted.theta.items()}
    x = case.problem.data_points[:, 1]
    pred = np.interp(x, case.grid.coordinates("x"), np.asarray(fitted.u[-1]))
    dat = float(np.mean((pred - case.problem.data_values) ** 2))
    return theta, cases.metrics(case, theta, np.asarray(fitted.u), dat), wall


def summarise(rows):
    keys = ["err_D", "err_rho", "err_u", "err_data"]
    out = {}
    for k in keys:
        vals = np.array([r[1][k] for r in rows if k in r[1]])
        out[k] = f"{vals.mean():.2e} ± {vals.std():.1e}" if vals.size else "-"
    mean = {k: np.mean([r[0][k] for r in rows]) for k in ("D", "rho")}
    out["theta"] = f"({mean['D']:.4f}, {mean['rho']:.3f})"
    out["wall"] = f"{np.mean([r[2] for r in rows]):.1f}"
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small grid and few steps")
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 1e-3, 1e-2])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--n-res", type=int, default=21)
    ap.add_argument("--width", type=int, default=48)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--pre-steps", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--chunk", type=int, default=500)
    ap.add_argument("--lr-theta", type=float, default=1e-2)
    ap.add_argument("--pinn-w", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    ap.add_argument("--odil-beta", type=float, nargs="+", default=[1e4, 1e6])
    ap.add_argument("--only-odil", action="store_true", help="skip BiLO and the PINNs")
    args = ap.parse_args()
    if args.quick:
        args.n_res, args.width, args.pre_steps, args.steps, args.seeds = 11, 32, 500, 500, 1
        args.noise, args.pinn_w = [0.0, 1e-2], [10.0]
    cases_by = {(nz, s): cases.fisher_kpp(noise=nz, seed=s, n_res=args.n_res) for nz in args.noise
                for s in range(args.seeds)}
    first = cases_by[(args.noise[0], 0)]
    print(f"Fisher-KPP: truth {first.truth}, theta_0 {first.theta0}, residual grid {args.n_res}^2, network "
          f"{args.depth} x {args.width} tanh (float32), Adam lr_net 1e-3, lr_theta {args.lr_theta}, pre-training "
          f"{args.pre_steps} steps, inverse {args.steps} steps; seeds {args.seeds}\n")
    trainers = {"bilo": make_trainer(first, "bilo", args)}
    trainers.update({f"pinn{w:g}": make_trainer(first, "pinn", args, w) for w in args.pinn_w})
    params = {}
    for name in () if args.only_odil else ("bilo", f"pinn{args.pinn_w[0]:g}"):
        params[name[:4]], wall, res = pretrain(trainers[name], first, args)
        print(f"pre-training {name[:4]}: {wall:.1f} s (compilation included), final L_res {res:.2e}", flush=True)
    table = []
    for nz in args.noise:
        runs = {f"ODIL beta={b:g}": [] for b in args.odil_beta}
        if not args.only_odil:
            runs.update({"BiLO": [], **{f"PINN w={w:g}": [] for w in args.pinn_w}})
        for s in range(args.seeds if nz > 0 else 1):  # noise-free data are the same for every seed
            case = cases_by[(nz, s)]
            for b in args.odil_beta:
                runs[f"ODIL beta={b:g}"].append(odil_row(case, b))
            if args.only_odil:
                continue
            runs["BiLO"].append(neural_row(trainers["bilo"], params["bilo"], case, args))
            for w in args.pinn_w:
                runs[f"PINN w={w:g}"].append(neural_row(trainers[f"pinn{w:g}"], params["pinn"], case, args))
        for name, rows in runs.items():
            table.append((name, nz, summarise(rows)))
            print(f"  noise {nz:g} {name}: {table[-1][2]}", flush=True)
    print("\n| method | noise | mean (D, rho) | rel err D | rel err rho | rel L2 err u | rel err data loss | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, nz, r in table:
        print(f"| {name} | {nz:g} | {r['theta']} | {r['err_D']} | {r['err_rho']} | {r['err_u']} | {r['err_data']} "
              f"| {r['wall']} |")


if __name__ == "__main__":
    main()
