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

Unknown functions through the auxiliary variable (sec. 2.2): ``--case poisson`` (the diffusion coefficient of
-(D u')' = pi^2 sin(pi x), sec. 3.3, noise 1e-2) and ``--case heat`` (the initial condition of u_t = D u_xx from
the final state, appendix D.4). Rows: relative L2 and largest error of the inferred function, relative L2 error
of the field against the reference solve from the inferred function, data-loss error, wall time; ODIL with
the same regulariser (``--odil-w-reg`` adds weights).

    .venv/bin/python benchmarks/bilo.py --case poisson --quick
    .venv/bin/python benchmarks/bilo.py --case poisson                 # docs/bilo.md
    .venv/bin/python benchmarks/bilo.py --case heat --odil-w-reg 0 1e-5

2-D cases: ``--case darcy`` (the permeability of -div(k grad u) = 1 from u at every node, sec. 3.5; rows: relative L2
error of k, classification accuracy of k thresholded at 7.5, error of u against the sparse reference solve at the
inferred k, data loss) and ``--case gbm`` (D and rho of tumour growth on a 2-D MNI152 slice from a two-threshold
segmentation, sec. 3.6; rows: relative errors of D and rho, error of the method's field against bodil's solver at
the inferred parameters, Dice of the whole tumour of the method's field and of the solver's at the inferred
parameters (and of its core), the segmentation data loss).

    .venv/bin/python benchmarks/bilo.py --case darcy
    .venv/bin/python benchmarks/bilo.py --case gbm
    .venv/bin/python benchmarks/bilo.py --case gbm --no-odil --transform logistic --seed-features --w-reference 100 \
        --pre-steps 4000 --polish 1000      # the logistic transform and the seed's distance as an input
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import bodil  # noqa: E402
from bodil.bilo import (BiLOSettings, cases, cases_darcy, cases_gbm, cases_heat, cases_poisson, fit,  # noqa: E402
                        local_operator_net, solve_lower, trainer)
from bodil.bilo import functions as F  # noqa: E402
from bodil.bilo.functions import function_trainer  # noqa: E402


def make_trainer(case, method, args, w=1.0):
    """One compiled trainer per method (and PINN weight) for every noise draw: data values are arguments."""
    net = local_operator_net(0, 2, 2, width=args.width, depth=args.depth, transform=cases.hard_conditions,
                             uses_params=method == "bilo", dtype=jnp.dtype(args.dtype))
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


# ------------------------------------------------------------------------- unknown functions (poisson, heat)
FUNCTION_CASES = {"poisson": (cases_poisson, cases_poisson.variable_poisson), "heat": (cases_heat,
                                                                                    cases_heat.heat_initial_condition),
                  "darcy": (cases_darcy, cases_darcy.darcy)}
F_TRANSFORMS = {"poisson": cases_poisson.d_transform, "heat": cases_heat.f_transform, "darcy": cases_darcy.k_transform}
METRIC_COLUMNS = {"darcy": (("err_f", "rel L2 err k"), ("acc", "accuracy k > 7.5"), ("err_u", "rel L2 err u"),
                            ("data", "data loss"))}
DEFAULT_COLUMNS = (("err_f", "rel L2 err f"), ("max_f", "max err f"), ("err_u", "rel L2 err u"),
                   ("err_data", "rel err data loss"))


def function_trainers(case, args):
    """BiLO and one PINN per data weight, each with its compiled trainer; u: 2 x width, f: 2 x f_width (tanh)."""
    mod = FUNCTION_CASES[args.case][0]
    n_coords = case.problem.collocation.shape[1]
    extra = dict(transform_params=True) if args.case == "heat" else {}
    f_transform, n_f = F_TRANSFORMS[args.case], len(case.problem.axes)
    out = {}
    for name, method, w in [("BiLO", "bilo", 1.0)] + [(f"PINN w={w:g}", "pinn", w) for w in args.pinn_w]:
        u_net = local_operator_net(0, n_coords, 1, width=args.width, depth=args.depth, transform=mod.u_transform,
                                   uses_params=method == "bilo", dtype=jnp.dtype(args.dtype), **extra)
        f_net = local_operator_net(1, n_f, 0, width=args.f_width, depth=args.depth, transform=f_transform,
                                   uses_params=False, dtype=jnp.dtype(args.dtype))
        settings = BiLOSettings(method=method, w_data=w, chunk=args.chunk, lr_theta=args.lr_theta)
        out[name] = function_trainer(case.problem, u_net, f_net, settings, function0=case.function0,
                                     reference=case.pretrain)
    return out


def function_row(tr, pre, case, args):
    res = fit(tr, tr.init(pre.state.p, pre.state.params), args.steps, values=case.problem.data_values)
    mod = FUNCTION_CASES[args.case][0]
    return mod.model_metrics(case, res.net, float(res.history["data"][-1])), res.wall_time, res


def polished_row(tr, res, case, args):
    """BiLO's lower level solved by L-BFGS at the inferred function (``solve_lower``); wall time of both phases."""
    out = solve_lower(tr, res, args.polish, chunk=args.chunk)
    mod = FUNCTION_CASES[args.case][0]
    dat = float(F.data_loss(out.net.u, out.net.f, case.problem))
    print(f"  lower level by L-BFGS: L_LO {float(tr.lower(res.state.params, res.state.p)):.2e} -> "
          f"{float(out.history['final']):.2e} in {out.wall_time:.0f} s", flush=True)
    return mod.model_metrics(case, out.net, dat), res.wall_time + out.wall_time


def function_odil_row(case, args, beta, w_reg):
    mod = FUNCTION_CASES[args.case][0]
    case = dataclasses.replace(case, problem=dataclasses.replace(case.problem, w_reg=w_reg))
    post, u0 = mod.odil_posterior(case, beta=beta)
    t0 = time.perf_counter()
    fitted = bodil.map_estimate(post, u0, {}, method="gauss-newton", throw=False, max_iter=200)
    wall = time.perf_counter() - t0
    if args.case == "darcy":  # data at every node
        pred = np.asarray(fitted.u["u"]).ravel()
    else:
        u = fitted.u["u"] if args.case == "poisson" else fitted.u[-1]
        pred = np.interp(case.problem.data_points[:, -1], case.problem.collocation[:, -1] if args.case == "poisson"
                         else case.grid.coordinates("x"), np.asarray(u))
    dat = float(np.mean((pred - case.problem.data_values) ** 2))
    return mod.odil_metrics(case, fitted.u, dat), wall


def function_main(args):
    build = FUNCTION_CASES[args.case][1]
    if args.quick:
        args.n_res, args.width, args.f_width, args.pre_steps, args.steps, args.seeds = 21, 16, 8, 300, 300, 1
        args.pinn_w = args.pinn_w[:1]
    kw = dict(n_res=args.n_res, w_reg=args.w_reg)
    by = {(nz, s): build(noise=nz, seed=s, **kw) for nz in args.noise for s in range(args.seeds)}
    first = by[(args.noise[0], 0)]
    print(f"{args.case}: residual points {first.problem.collocation.shape[0]}, "
          f"data {first.problem.data_points.shape[0]}, "
          f"w_reg {args.w_reg:g}; u: {args.depth} x {args.width}, f: {args.depth} x {args.f_width} tanh "
          f"({args.dtype}); "
          f"Adam lr_net 1e-3, lr_f {args.lr_theta:g}; pre-training {args.pre_steps}, inverse {args.steps} steps; "
          f"seeds {args.seeds}\n", flush=True)
    trainers = {} if args.only_odil else function_trainers(first, args)
    pre = {}
    for name, tr in trainers.items():
        pre[name] = fit(tr, tr.init(pretrain=True), args.pre_steps)
        print(f"pre-training {name}: {pre[name].wall_time:.1f} s (compilation included), final L_res "
              f"{pre[name].history['residual'][-1]:.2e}", flush=True)
    table, columns = [], METRIC_COLUMNS.get(args.case, DEFAULT_COLUMNS)
    odil_w = args.odil_w_reg or [args.w_reg]
    for nz in args.noise:
        runs = {f"ODIL beta={b:g} w_reg={w:g}": [] for b in args.odil_beta for w in odil_w}
        runs.update({name: [] for name in trainers})
        polished = f"BiLO + lower level by L-BFGS x {args.polish}"
        if args.polish and "BiLO" in trainers:
            runs[polished] = []
        for s in range(args.seeds if nz > 0 else 1):
            case = by[(nz, s)]
            for b in args.odil_beta:
                for w in odil_w:
                    runs[f"ODIL beta={b:g} w_reg={w:g}"].append(function_odil_row(case, args, b, w))
            for name, tr in trainers.items():
                *row, res = function_row(tr, pre[name], case, args)
                runs[name].append(row)
                if name == "BiLO" and args.polish:
                    runs[polished].append(polished_row(tr, res, case, args))
        for name, rows in runs.items():
            table.append((name, nz, {k: _mean_sd([r[0][k] for r in rows if k in r[0]]) for k, _ in columns}
                          | {"wall": f"{np.mean([r[1] for r in rows]):.1f}"}))
            print(f"  noise {nz:g} {name}: {table[-1][2]}", flush=True)
    print("\n| method | noise | " + " | ".join(label for _, label in columns) + " | wall s |")
    print("|---|---|" + "---|" * len(columns) + "---|")
    for name, nz, r in table:
        print(f"| {name} | {nz:g} | " + " | ".join(r[k] for k, _ in columns) + f" | {r['wall']} |")


# ------------------------------------------------------------------------------------ glioblastoma (gbm)
GBM_COLUMNS = (("theta", "(D, rho)"), ("err_D", "rel err D"), ("err_rho", "rel err rho"), ("err_u", "rel L2 err u"),
               ("dice", "Dice WT (own u)"), ("dice_fd", "Dice WT (solver)"), ("dice_core_fd", "Dice core (solver)"),
               ("data", "data loss"), ("wall", "wall s"))


def gbm_neural_row(case, method, args, w=1.0):
    """Pre-training at theta_0 (timed apart) and the inverse solve of one network; for BiLO with ``--polish``, a
    second row with its lower level then solved by L-BFGS at the inferred parameters."""
    features = cases_gbm.seed_features if args.seed_features else None
    net = local_operator_net(0, 3, 2, width=args.width, depth=args.depth, features=features,
                             transform=cases_gbm.make_transform(case.settings["seed_width"], args.transform),
                             uses_params=method == "bilo", dtype=jnp.dtype(args.dtype))
    settings = BiLOSettings(method=method, w_data=w, chunk=args.chunk, lr_theta=args.lr_theta,
                            log_params=args.log_params, w_reference=args.w_reference)
    tr = trainer(case.problem, net, settings, reference=case.pretrain)
    pre = fit(tr, tr.init(case.theta0, pretrain=True), args.pre_steps)
    ref0 = case.pretrain[1]  # the reference solve at theta_0, on the grid's nodes
    err0 = np.linalg.norm(cases_gbm.network_field(pre.net, case, pre.state.p).ravel() - ref0) / np.linalg.norm(ref0)
    print(f"pre-training {method} w={w:g}: {pre.wall_time:.1f} s (compilation included), final L_res "
          f"{pre.history['residual'][-1]:.2e}, network {err0:.2e} from the reference solve at theta_0", flush=True)
    res = fit(tr, tr.init(case.theta0, params=pre.state.params), args.steps)
    field = cases_gbm.network_field(res.net, case, res.state.p)
    rows = {"": (res.theta, cases_gbm.metrics(case, res.theta, field), res.wall_time)}
    if method == "bilo" and args.polish:
        out = solve_lower(tr, res, args.polish, chunk=args.chunk)
        print(f"  lower level by L-BFGS: L_LO {float(tr.lower(res.state.params, res.state.p)):.2e} -> "
              f"{float(out.history['final']):.2e} in {out.wall_time:.0f} s", flush=True)
        field = cases_gbm.network_field(out.net, case, out.state.p)
        rows[f", then L-BFGS x {args.polish}"] = (out.theta, cases_gbm.metrics(case, out.theta, field),
                                                  res.wall_time + out.wall_time)
    return rows


def gbm_odil_row(case, beta, args):
    post, u0, theta0 = cases_gbm.odil_posterior(case, beta=beta)
    t0 = time.perf_counter()
    fitted = bodil.map_estimate(post, u0, theta0, method="gauss-newton", strategy="joint", throw=False,
                                max_iter=args.odil_iter)
    wall = time.perf_counter() - t0
    theta = {k: float(v) for k, v in fitted.theta.items()}
    print(f"  ODIL beta={beta:g}: {fitted.report.iterations} iterations, converged {fitted.report.converged}",
          flush=True)
    return theta, cases_gbm.metrics(case, theta, np.asarray(fitted.u)), wall


def gbm_main(args):
    if args.quick:
        args.n_res, args.width, args.pre_steps, args.steps, args.pinn_w, args.n_t = 512, 16, 200, 200, [1.0], 11
    case = cases_gbm.glioblastoma(n=args.n_space, n_t=args.n_t, n_res=args.n_res, refine=args.refine)
    print(f"gbm: truth {case.truth}, theta_0 {case.theta0}, grid {case.grid.shape}, residual points "
          f"{case.problem.collocation.shape[0]}, data {case.problem.data_points.shape[0]} (tissue nodes x 2 "
          f"thresholds); network {args.depth} x {args.width} tanh ({args.dtype}), Adam lr_net 1e-3, lr_theta "
          f"{args.lr_theta:g}; output transform {args.transform}, seed features {args.seed_features}, reference "
          f"weight {args.w_reference:g}; pre-training {args.pre_steps}, inverse {args.steps} steps; reference solve on "
          f"the nodes refined {args.refine} times\n", flush=True)
    rows = {} if args.no_odil else {f"ODIL beta={b:g}": gbm_odil_row(case, b, args) for b in args.odil_beta}
    if not args.only_odil:
        rows.update({f"BiLO{tail}": row for tail, row in gbm_neural_row(case, "bilo", args).items()})
        for w in args.pinn_w:
            rows.update({f"PINN w={w:g}{tail}": row for tail, row in gbm_neural_row(case, "pinn", args, w).items()})
    print("\n| method | " + " | ".join(label for _, label in GBM_COLUMNS) + " |")
    print("|---|" + "---|" * len(GBM_COLUMNS))
    for name, (theta, m, wall) in rows.items():
        cells = {"theta": f"({theta['D']:.4f}, {theta['rho']:.3f})", "wall": f"{wall:.0f}",
                 **{k: f"{v:.2e}" if k.startswith("err") or k == "data" else f"{v:.3f}" for k, v in m.items()}}
        print(f"| {name} | " + " | ".join(cells[k] for k, _ in GBM_COLUMNS) + " |")


def _mean_sd(vals):
    vals = np.asarray(vals, float)
    if not vals.size:
        return "-"
    return f"{vals.mean():.2e}" + (f" ± {vals.std():.1e}" if vals.size > 1 else "")


CASE_DEFAULTS = {
    "fisher-kpp": dict(n_res=21, width=48, pre_steps=2000, steps=5000, noise=[0.0, 1e-3, 1e-2], seeds=2,
                       lr_theta=1e-2, pinn_w=[1.0, 10.0, 100.0], odil_beta=[1e4, 1e6]),
    "poisson": dict(n_res=101, width=64, f_width=32, pre_steps=5000, steps=10000, noise=[1e-2], seeds=2,
                    lr_theta=1e-3, pinn_w=[1.0, 10.0, 100.0], odil_beta=[1e6], w_reg=1e-3),
    "heat": dict(n_res=21, width=32, f_width=16, pre_steps=3000, steps=5000, noise=[0.0], seeds=1,
                 lr_theta=1e-3, pinn_w=[10.0, 1000.0], odil_beta=[1e6], w_reg=0.0),
    "darcy": dict(n_res=21, width=32, f_width=16, pre_steps=3000, steps=3000, noise=[0.0], seeds=1,
                  lr_theta=1e-3, pinn_w=[1e3, 1e5], odil_beta=[1e6], w_reg=1e-9),
    "gbm": dict(n_res=1024, width=32, pre_steps=2000, steps=2000, lr_theta=3e-3, pinn_w=[1.0],
                odil_beta=[1e8], n_space=32, n_t=21, odil_iter=100),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=tuple(CASE_DEFAULTS), default="fisher-kpp")
    ap.add_argument("--quick", action="store_true", help="small grid and few steps")
    ap.add_argument("--noise", type=float, nargs="+")
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--n-res", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--f-width", type=int, help="width of the unknown function's network (poisson, heat)")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--pre-steps", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--chunk", type=int, default=500)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="the networks' weights")
    ap.add_argument("--polish", type=int, default=0,
                    help="L-BFGS iterations of BiLO's lower level at the inferred parameters after the inverse "
                         "solve (bodil.bilo.solve_lower), reported as an extra row; 0: none")
    ap.add_argument("--lr-theta", type=float, help="Adam rate of the parameters (of the function's weights)")
    ap.add_argument("--w-reg", type=float, help="regulariser weight of the unknown function (poisson, heat)")
    ap.add_argument("--odil-w-reg", type=float, nargs="+", help="ODIL's regulariser weights (default: --w-reg)")
    ap.add_argument("--pinn-w", type=float, nargs="+")
    ap.add_argument("--odil-beta", type=float, nargs="+")
    ap.add_argument("--only-odil", action="store_true", help="skip BiLO and the PINNs")
    ap.add_argument("--no-odil", action="store_true", help="gbm: skip ODIL")
    ap.add_argument("--log-params", action="store_true",
                    help="gbm: the networks' parameters move in log space (BiLOSettings.log_params: stay positive)")
    ap.add_argument("--n-space", type=int, help="gbm: space nodes per axis of the slice")
    ap.add_argument("--n-t", type=int, help="gbm: time nodes (evaluation and ODIL grid)")
    ap.add_argument("--odil-iter", type=int, help="gbm: most Gauss-Newton iterations of ODIL")
    ap.add_argument("--transform", choices=cases_gbm.TRANSFORMS, default="additive",
                    help="gbm: the networks' output transform (cases_gbm.make_transform)")
    ap.add_argument("--seed-features", action="store_true",
                    help="gbm: the squared distance from the seed as an extra input (cases_gbm.seed_features)")
    ap.add_argument("--w-reference", type=float, default=1.0,
                    help="weight of the pre-training fit to the reference solve (BiLOSettings.w_reference)")
    ap.add_argument("--refine", type=int, default=2,
                    help="gbm: refinement of the reference solver's nodes (truth and err u)")
    args = ap.parse_args()
    for key, value in CASE_DEFAULTS[args.case].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.case == "gbm":
        return gbm_main(args)
    if args.case != "fisher-kpp":
        return function_main(args)
    if args.quick:
        args.n_res, args.width, args.pre_steps, args.steps, args.seeds = 11, 32, 500, 500, 1
        args.noise, args.pinn_w = [0.0, 1e-2], [10.0]
    cases_by = {(nz, s): cases.fisher_kpp(noise=nz, seed=s, n_res=args.n_res) for nz in args.noise
                for s in range(args.seeds)}
    first = cases_by[(args.noise[0], 0)]
    print(f"Fisher-KPP: truth {first.truth}, theta_0 {first.theta0}, residual grid {args.n_res}^2, network "
          f"{args.depth} x {args.width} tanh ({args.dtype}), Adam lr_net 1e-3, lr_theta {args.lr_theta}, "
          f"pre-training "
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
