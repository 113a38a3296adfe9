"""Cost and quality of the inner ODIL solve of the tumour posterior at tumour scale.

In the mode approximation of B-ODIL (Amoudruz et al. 2025, eq. 12 and 32) every evaluation of
``log p(theta | D)`` is a field-only ODIL solve ``u*(theta) = argmax_u log p(u, theta | D)`` over the whole
space-time box. This benchmark measures that solve on a synthetic patient (``bodil.tumor.synthetic_patient``
on MNI152 at 2 mm, its default tumour), on the box the pipeline builds (``bodil.tumor.pipeline.fit_map``:
``box_scale`` times the tumour, ``n^3`` points x ``nt`` time nodes), with the model and inner-solve settings of
``CTVSettings`` (likelihood, ``lambda_PDE``, ``lambda_IC``, ``sigma``, ``inner_damping``, ``inner_iterations``,
``inner_cg_iterations``, ``inner_ftol``) through ``bodil.inference.ModeApproximation`` as the pipeline uses it.

For each box size it draws ``--thetas`` parameter values from the prior (fixed seed; by default the MAP's
parameters ``Dw, rho, x0, y0, z0``, the rest at their fixed values) and measures, per theta:

* forward run: the explicit Fisher-Kolmogorov solve of the box at theta (``TumorModel.forward``, median of
  ``--repeats`` runs after compilation), the unit of cost;
* cold inner solve from the explicit forward solution ("cold fk"); its time includes the forward run;
* cold inner solve from the Crank-Nicolson march of the model's own residual ("cold cn",
  ``TumorModel.discrete_forward``, the pipeline's ``initial=``: zero PDE and IC terms); its time includes
  the march;
* warm inner solve: at a nearby theta (theta moved by ``--step`` in every unconstrained coordinate, a random
  sign each, as a BASIS chain's next point), started from the "cold cn" solution;

each with wall time, Gauss-Newton iterations, Krylov (CG) iterations (``Report.extra["cg_iterations"]``),
whether it reached a stopping rule, and ``min(u)``, ``max(u)`` and the fraction of ``u < 0`` of the solution.
At one theta (the synthetic truth) it also runs the recipe of GliODIL (Balcerak et al. 2025) and of Amoudruz
et al. (2025): 5000 Adam epochs from a zero field with theta fixed (``bodil.optimize.adam``), and compares the
objective reached and the operator evaluations with those of the ODIL solve (from the forward solution and
from the zero field) on the same objective.

Times depend on the machine and on what else runs on it; the ratios (inner solve / forward run, Adam / ODIL)
much less so.

    .venv/bin/python benchmarks/tumor_inner.py                          # 24^3 x 12, 50 thetas
    .venv/bin/python benchmarks/tumor_inner.py --thetas 10              # a quick look
    .venv/bin/python benchmarks/tumor_inner.py --sizes 24:12 48:48 64:128 --json inner.json
    .venv/bin/python benchmarks/tumor_inner.py --infer x0,y0,z0         # origin only, as BASIS in bodil ctv
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)  # as the pipeline (run_ctv works in float64)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from bodil.inference import ModeApproximation  # noqa: E402
from bodil.optimize import Objective, adam  # noqa: E402
from bodil.tumor import (CTVSettings, classes_from_labels, crop_around, label_convention, mni152,  # noqa: E402
                         synthetic_patient, tumor_model)
from bodil.tumor.model import ORIGIN  # noqa: E402
from bodil.tumor.segmentation import Segmentation  # noqa: E402


# ---------------------------------------------------------------------------------------------- set-up
def parse_size(text: str) -> tuple[int, int]:
    """``"24:12"`` -> ``(24, 12)``: space points per axis and time nodes."""
    try:
        n, nt = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a box size is N:NT (space points per axis : time nodes), got {text!r}")
    if n < 8 or nt < 4:
        raise argparse.ArgumentTypeError(f"a box needs N >= 8 and NT >= 4, got {text!r}")
    return n, nt


def make_patient(anatomy):
    """The default synthetic patient and its segmentation (BraTS 2021 labels)."""
    patient = synthetic_patient(anatomy)
    conv = label_convention("brats2021")
    seg = Segmentation(classes_from_labels(patient.labels, conv), patient.labels, anatomy.affine, conv, None)
    return patient, seg


def build_model(seg, anatomy, settings: CTVSettings, n: int, nt: int, infer, fixed: dict):
    """The box and the GliODIL model on it, as ``bodil.tumor.pipeline.fit_map`` builds them."""
    crop = crop_around(seg.tumor, seg.affine, scale=settings.box_scale, n=n)
    box = anatomy.crop(crop)
    classes = np.rint(crop.to_box(seg.classes.astype(float), order=0)).astype(np.int8)
    model = tumor_model(box.wm, box.gm, classes, crop.side_mm, nt=nt, t_final=settings.t_final, infer=infer,
                        fixed=fixed, likelihood=settings.likelihood, lambda_pde=settings.lambda_pde,
                        lambda_ic=settings.lambda_ic, sigma=settings.sigma)
    return crop, model


def truth_theta(patient, crop, model) -> dict:
    """The synthetic truth as the model's inferred parameters (origin in the box frame, mm); the prior's
    mean for a coordinate the prior does not contain."""
    t = patient.truth
    origin = crop.world_to_box(np.asarray(t["origin_world"]))
    values = {"Dw": t["dw"], "rho": t["rho"], "ratio": t["dw"] / t["dg"], **dict(zip(ORIGIN, origin))}
    params = model.posterior.params
    out = {}
    for name, prior in params.priors.items():
        v = float(values.get(name, float(prior.mean)))
        inside = bool(np.isfinite(float(prior.log_prob(jnp.asarray(v)))))
        out[name] = jnp.asarray(v if inside else float(prior.mean))
    return out


def field_problem_at_truth(n: int, nt: int):
    """The inner problem (theta fixed at the default synthetic patient's truth) on an ``n^3 x nt`` box:
    ``(settings, objective, flat start)``, the start being the Crank-Nicolson march of the model's residual."""
    settings = CTVSettings()
    anatomy = mni152(2.0)
    patient, seg = make_patient(anatomy)
    crop, model = build_model(seg, anatomy, settings, n, nt, ("Dw", "rho", "x0", "y0", "z0"), {})
    theta = truth_theta(patient, crop, model)
    fixed = model.with_fixed(model.posterior.params.merge(theta), infer=())
    u_cn = jnp.asarray(model.discrete_forward(theta, dtype=jnp.float64))
    return settings, Objective(fixed.posterior, u_cn, {}), ravel_pytree(fixed.posterior.unconstrain(u_cn, {}))[0]


def draw_thetas(params, count: int, seed: int) -> list[dict]:
    """``count`` draws from the prior of the inferred parameters."""
    keys = jax.random.split(jax.random.PRNGKey(seed), count)
    out = []
    for key in keys:
        sub = jax.random.split(key, len(params.priors))
        out.append({name: prior.sample(k) for k, (name, prior) in zip(sub, params.priors.items())})
    return out


def nearby(params, theta: dict, step: float, rng: np.random.Generator) -> dict:
    """theta moved by ``step`` in every unconstrained coordinate, each with a random sign."""
    z = params.unconstrain(theta)
    return params.constrain({k: v + step * rng.choice([-1.0, 1.0]) for k, v in z.items()})


# ---------------------------------------------------------------------------------------------- measurements
def timed_forward(model, theta: dict, repeats: int, march: bool = False) -> tuple[jax.Array, float]:
    """The forward solution at theta (with ``march``: the Crank-Nicolson march of the model's residual) and
    the median wall time of ``repeats`` runs (compiled beforehand)."""
    solve = model.discrete_forward if march else model.forward
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        u = jax.block_until_ready(solve(theta, dtype=jnp.float64))
        times.append(time.perf_counter() - start)
    return u, float(np.median(times))


def make_mode(model, settings: CTVSettings, start_theta: dict):
    """The pipeline's ``ModeApproximation`` (``sample_posterior``), without ``initial=`` so that each solve
    starts where this benchmark says; returns it with the list its solver's reports are appended to
    (``Evaluation`` records carry no Krylov counts)."""
    u0 = model.forward(start_theta, dtype=jnp.float64)
    mode = ModeApproximation(model.posterior, (u0, start_theta), ftol=settings.inner_ftol,
                             max_iter=settings.inner_iterations, cg_maxiter=settings.inner_cg_iterations,
                             damping=settings.inner_damping, adaptive_damping=True, on_failure="lower-bound")
    reports = []
    run = mode.solver.run

    def recording_run(*args, **kwargs):
        x, rep = run(*args, **kwargs)
        reports.append(rep)
        return x, rep

    mode.solver.run = recording_run
    return mode, reports


def flat_start(posterior, u, theta: dict) -> np.ndarray:
    """The flat unconstrained position ``(u, z(theta))`` that ``warm_log_likelihood`` starts from."""
    return np.asarray(ravel_pytree(posterior.unconstrain(u, theta))[0])


def inner_solve(mode, reports, theta: dict, start: np.ndarray) -> tuple[dict, np.ndarray]:
    """One inner ODIL solve at theta from ``start``: its measurements and the flat solution."""
    _, x = mode.warm_log_likelihood(theta, start)
    ev, rep = mode.records[-1], reports[-1]
    u = np.asarray(mode.objective.position(jnp.asarray(x))[0])
    cg = [int(k) for k in rep.extra.get("cg_iterations", [])]
    return dict(time_s=ev.wall_time, iterations=int(ev.iterations), cg_total=int(sum(cg)),
                cg_max=max(cg, default=0), converged=bool(ev.converged), message=ev.message,
                objective=float(rep.loss), grad_inf=float(rep.grad_norm),
                evaluations=int(sum(rep.evaluations.values())), jvp=int(rep.evaluations.get("jvp", 0)),
                u_min=float(u.min()), u_max=float(u.max()), negative=float(np.mean(u < -1e-6))), x


def compile_solver(mode, reports, theta: dict, start: np.ndarray) -> None:
    """Compile the Gauss-Newton step with a one-iteration solve (not recorded)."""
    saved = dict(mode.run_options)
    mode.run_options["max_iter"] = 1
    try:
        mode.warm_log_likelihood(theta, start)
    finally:
        mode.run_options.update(saved)
        mode.records.pop()
        reports.pop()


def measure_thetas(model, mode, reports, thetas, step: float, repeats: int, seed: int) -> list[dict]:
    """Per theta: the forward run, the cold solves from it and from the Crank-Nicolson march, and the warm
    solve at a nearby theta."""
    params = model.posterior.params
    rng = np.random.default_rng(seed)
    rows = []
    for i, theta in enumerate(thetas):
        u_fwd, fwd_s = timed_forward(model, theta, repeats)
        cold, _ = inner_solve(mode, reports, theta, flat_start(model.posterior, u_fwd, theta))
        cold["time_s"] += fwd_s  # the forward run is part of a cold solve's cost
        u_cn, cn_s = timed_forward(model, theta, repeats, march=True)
        cold_cn, x = inner_solve(mode, reports, theta, flat_start(model.posterior, u_cn, theta))
        cold_cn["time_s"] += cn_s
        warm, _ = inner_solve(mode, reports, nearby(params, theta, step, rng), x)
        rows.append(dict(theta={k: float(v) for k, v in theta.items()}, forward_s=fwd_s, march_s=cn_s, cold=cold,
                         cold_cn=cold_cn, warm=warm))
        print(f"  theta {i + 1}/{len(thetas)} " + " ".join(f"{k}={float(v):.3g}" for k, v in theta.items())
              + f": forward {fwd_s:.3f} s, march {cn_s:.3f} s; "
              + "; ".join(f"{kind} {r['time_s']:.1f} s {r['iterations']} its {r['cg_total']} CG "
                          f"{'ok' if r['converged'] else 'NOT converged'}"
                          for kind, r in (("cold fk", cold), ("cold cn", cold_cn), ("warm", warm))),
              file=sys.stderr, flush=True)
    return rows


def adam_comparison(model, mode, reports, theta: dict, epochs: int, repeats: int) -> dict:
    """At theta: Adam (the papers' recipe) from a zero field against the ODIL solve from the forward solution
    and from the zero field, all on the objective ``-log p(u, theta | D)`` with theta fixed."""
    fixed = model.with_fixed(model.posterior.params.merge(theta), infer=())
    zero = jnp.zeros(model.grid.shape)
    obj = Objective(fixed.posterior, zero, {})
    on_fixed = jax.jit(lambda u: obj.value(ravel_pytree(fixed.posterior.unconstrain(u, {}))[0]))
    u_fwd, fwd_s = timed_forward(model, theta, repeats)
    out = {"theta": {k: float(v) for k, v in theta.items()}, "forward_s": fwd_s}
    u_cn, cn_s = timed_forward(model, theta, repeats, march=True)
    for label, start in (("odil_forward", u_fwd), ("odil_march", u_cn), ("odil_zero", zero)):
        row, x = inner_solve(mode, reports, theta, flat_start(model.posterior, start, theta))
        row["objective"] = float(on_fixed(mode.objective.position(jnp.asarray(x))[0]))
        row["time_s"] += {"odil_forward": fwd_s, "odil_march": cn_s}.get(label, 0.0)
        out[label] = row
    if epochs:
        adam(obj, epochs=100, chunk=100)  # compile
        start = time.perf_counter()
        x, rep = adam(obj, epochs=epochs, chunk=100)
        u = np.asarray(obj.position(x)[0])
        out["adam"] = dict(epochs=epochs, time_s=time.perf_counter() - start, objective=float(rep.loss),
                           evaluations=int(rep.evaluations.get("grad", epochs)), u_min=float(u.min()),
                           u_max=float(u.max()), negative=float(np.mean(u < -1e-6)))
    return out


# ---------------------------------------------------------------------------------------------- reporting
def summarise(rows: list[dict], kind: str) -> dict:
    """Medians, spreads and fractions of one kind of solve (``"cold"`` or ``"warm"``) over the thetas."""
    solves = [r[kind] for r in rows]
    col = {k: np.array([s[k] for s in solves], float) for k in ("time_s", "iterations", "cg_total", "u_min",
                                                                 "u_max", "negative", "evaluations")}
    ratio = col["time_s"] / np.array([r["forward_s"] for r in rows])
    conv = np.array([s["converged"] for s in solves])
    messages = {}
    for s in solves:
        if not s["converged"]:
            reason = s["message"].split(";")[0]  # without the preconditioner's count, which varies
            messages[reason] = messages.get(reason, 0) + 1
    return dict(n=len(solves), time_median=float(np.median(col["time_s"])),
                time_p90=float(np.quantile(col["time_s"], 0.9)),
                forward_runs_median=float(np.median(ratio)), forward_runs_p90=float(np.quantile(ratio, 0.9)),
                forward_runs_converged_median=float(np.median(ratio[conv])) if conv.any() else math.nan,
                iterations_median=float(np.median(col["iterations"])), iterations_max=int(col["iterations"].max()),
                cg_median=float(np.median(col["cg_total"])), cg_max=int(col["cg_total"].max()),
                evaluations_median=float(np.median(col["evaluations"])),
                converged=float(conv.mean()), u_min=float(col["u_min"].min()),
                u_min_median=float(np.median(col["u_min"])), u_max=float(col["u_max"].max()),
                negative_median=float(np.median(col["negative"])), unconverged_messages=messages)


def print_table(title: str, forward: np.ndarray, march: np.ndarray, stats: dict[str, dict],
                adam_row: dict | None) -> None:
    """One fixed-width table for one box size."""
    print(title)
    print(f"forward FK run: median {np.median(forward):.3f} s (min {forward.min():.3f}, max {forward.max():.3f}); "
          f"Crank-Nicolson march: median {np.median(march):.3f} s")
    head = (f"{'solve':<8}{'n':>4}{'time s':>9}{'p90 s':>9}{'fwd runs':>10}{'p90':>8}{'GN its':>8}{'max':>5}"
            f"{'CG its':>8}{'max':>6}{'conv.':>7}{'min u':>10}{'med min u':>11}{'max u':>8}{'u<0':>7}")
    print(head)
    print("-" * len(head))
    for kind, s in stats.items():
        print(f"{kind:<8}{s['n']:>4}{s['time_median']:>9.2f}{s['time_p90']:>9.2f}{s['forward_runs_median']:>10.0f}"
              f"{s['forward_runs_p90']:>8.0f}{s['iterations_median']:>8.0f}{s['iterations_max']:>5}"
              f"{s['cg_median']:>8.0f}{s['cg_max']:>6}{s['converged']:>7.2f}{s['u_min']:>10.3g}"
              f"{s['u_min_median']:>11.3g}{s['u_max']:>8.3f}{s['negative_median']:>7.2f}")
    print("(medians over theta; time of a cold solve includes its forward run; fwd runs = solve time / forward "
          "time at the same theta; CG its = total over the solve; u<0 = median fraction of the box below -1e-6)")
    for kind, s in stats.items():
        for msg, count in s["unconverged_messages"].items():
            print(f"  {kind} not converged ({count}): {msg}")
    if adam_row is None:
        return
    print()
    theta = ", ".join(f"{k} = {v:.4g}" for k, v in adam_row["theta"].items())
    print(f"At the synthetic truth ({theta}), objective -log p(u, theta | D) with theta fixed:")
    print(f"{'solver':<24}{'objective':>14}{'evaluations':>13}{'time s':>9}{'GN its':>8}{'conv.':>7}{'min u':>10}")
    odil = adam_row["odil_forward"]
    for label, name in (("odil_forward", "ODIL from forward run"), ("odil_march", "ODIL from CN march"),
                        ("odil_zero", "ODIL from zero field")):
        r = adam_row[label]
        print(f"{name:<24}{r['objective']:>14.6g}{r['evaluations']:>13}{r['time_s']:>9.2f}{r['iterations']:>8}"
              f"{'yes' if r['converged'] else 'no':>7}{r['u_min']:>10.3g}")
    if "adam" in adam_row:
        a = adam_row["adam"]
        print(f"{'Adam ' + str(a['epochs']) + ' from zero':<24}{a['objective']:>14.6g}{a['evaluations']:>13}"
              f"{a['time_s']:>9.2f}{'':>8}{'':>7}{a['u_min']:>10.3g}")
        print(f"Adam / ODIL (from forward): evaluations {a['evaluations'] / max(odil['evaluations'], 1):.0f}x, "
              f"time {a['time_s'] / odil['time_s']:.1f}x; objective Adam - ODIL = "
              f"{a['objective'] - odil['objective']:+.4g}")
    print("(evaluations: ODIL counts jvp + vjp + gradients + objective values (Report.evaluations), Adam one "
          "value-and-gradient per epoch)")


# ---------------------------------------------------------------------------------------------- driver
def run_size(patient, seg, anatomy, settings: CTVSettings, n: int, nt: int, args) -> dict:
    """All measurements on one box size; prints its table and returns its numbers."""
    infer = tuple(args.infer)
    fixed = {k: v for k, v in (("Dw", patient.truth["dw"]), ("rho", patient.truth["rho"])) if k not in infer}
    crop, model = build_model(seg, anatomy, settings, n, nt, infer, fixed)
    truth = truth_theta(patient, crop, model)
    thetas = draw_thetas(model.posterior.params, args.thetas, args.seed)
    print(f"# box {n}^3 x {nt}: side {crop.side_mm:.1f} mm, h = {crop.spacing_mm:.2f} mm, "
          f"{n ** 3 * nt} unknowns", file=sys.stderr, flush=True)
    started = time.perf_counter()
    model.forward(truth, dtype=jnp.float64)  # compile the forward run
    mode, reports = make_mode(model, settings, truth)
    start = flat_start(model.posterior, model.forward(truth, dtype=jnp.float64), truth)
    compile_solver(mode, reports, truth, start)
    rows = measure_thetas(model, mode, reports, thetas, args.step, args.repeats, args.seed)
    adam_row = adam_comparison(model, mode, reports, truth, args.adam_epochs, args.repeats) if args.adam else None
    stats = {kind: summarise(rows, kind) for kind in ("cold", "cold_cn", "warm")}
    forward = np.array([r["forward_s"] for r in rows])
    title = (f"Box {n}^3 x {nt} ({n ** 3 * nt} unknowns, h = {crop.spacing_mm:.2f} mm), {settings.likelihood} "
             f"likelihood, {len(thetas)} theta of ({', '.join(infer)}) from the prior (seed {args.seed}), warm step "
             f"{args.step} (unconstrained); inner: {settings.inner_iterations} GN its, {settings.inner_cg_iterations} "
             f"CG its, ftol {settings.inner_ftol:g}, damping {settings.inner_damping:g}")
    print()
    print_table(title, forward, np.array([r["march_s"] for r in rows]), stats, adam_row)
    print(f"(box done in {time.perf_counter() - started:.0f} s)")
    return dict(n=n, nt=nt, side_mm=crop.side_mm, spacing_mm=crop.spacing_mm, unknowns=n ** 3 * nt,
                infer=list(infer), fixed={k: float(v) for k, v in fixed.items()}, stats=stats, adam=adam_row,
                solves=rows, wall_s=time.perf_counter() - started)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", type=parse_size, default=[(24, 12)], metavar="N:NT",
                    help="box sizes, space points per axis : time nodes (default 24:12; 48:48 and 64:128 are long "
                         "on a CPU)")
    ap.add_argument("--thetas", type=int, default=50, help="parameter values drawn from the prior (default 50)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the draws and of the warm steps")
    ap.add_argument("--infer", type=lambda s: s.split(","), default=list(CTVSettings().map_parameters),
                    help="inferred parameters, comma separated (default: the MAP's, Dw,rho,x0,y0,z0); the others "
                         "at the synthetic truth or their fixed values")
    ap.add_argument("--step", type=float, default=0.05, help="warm start: theta moved by this in every "
                    "unconstrained coordinate (0.05: 5%% in Dw and rho, about 1/80 of the origin's range)")
    ap.add_argument("--repeats", type=int, default=3, help="forward runs timed per theta (median)")
    ap.add_argument("--adam-epochs", type=int, default=5000, help="Adam epochs of the baseline (0: skip Adam)")
    ap.add_argument("--no-adam", dest="adam", action="store_false", help="skip the comparison at the truth")
    ap.add_argument("--likelihood", choices=("sigmoid", "interval"), help="default: CTVSettings'")
    ap.add_argument("--inner-iterations", type=int, help="default: CTVSettings.inner_iterations")
    ap.add_argument("--cg-iterations", type=int, help="default: CTVSettings.inner_cg_iterations")
    ap.add_argument("--json", help="write the numbers (per solve too) to this file")
    args = ap.parse_args(argv)
    if args.thetas < 1:
        ap.error("--thetas must be at least 1")
    over = {k: v for k, v in (("likelihood", args.likelihood), ("inner_iterations", args.inner_iterations),
                              ("inner_cg_iterations", args.cg_iterations)) if v is not None}
    settings = dataclasses.replace(CTVSettings(), **over)
    anatomy = mni152(2)
    patient, seg = make_patient(anatomy)
    print(f"# tumor_inner: synthetic patient (Dw {patient.truth['dw']}, rho {patient.truth['rho']}, origin "
          f"{patient.truth['origin_world']} mm) on MNI152 2 mm; {jax.devices()[0].platform}, "
          f"{os.cpu_count()} CPUs visible; load average {os.getloadavg()[0]:.1f}")
    results = [run_size(patient, seg, anatomy, settings, n, nt, args) for n, nt in args.sizes]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": dataclasses.asdict(settings), "truth": patient.truth, "sizes": results}, f,
                      indent=1, default=float)
        print(f"# numbers written to {args.json}")


if __name__ == "__main__":
    main()
