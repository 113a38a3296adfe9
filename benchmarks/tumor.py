"""The tumour pipeline on synthetic patients with known truth (Amoudruz et al. 2025, sec. 3.4).

For each patient (a tumour grown by ``bodil.forward.fk`` on MNI152 at 2 mm with its own origin, ``Dw`` and
``rho``) ``bodil.tumor.run_ctv`` runs end to end and the table reports:

* MAP errors: origin (mm, world), ``Dw`` and ``rho`` (relative; the truth's ``Dg = Dw / 10`` is the model's);
* whether the true origin lies in the posterior's 90% credible region (the ellipsoid of the samples'
  mean and covariance with the chi^2_3 0.9 quantile) and in each 90% marginal interval;
* coverage of the invisible infiltration, the voxels with ``0.01 <= u_true < 0.25`` (tumour cells below
  the edema threshold), by the model CTV of the MAP and by the posterior ensemble (mean over samples of the
  covered fraction) against the standard CTV of the same volume, per margin;
* cost of one evaluation of ``log p(theta | D)`` inside BASIS, three ways, on the same box at
  ``--inner-samples`` origins drawn from the patient's posterior (the first as the parameters of the MAP
  field, the others in turn, each warm-started from the nearest previous solution, as in BASIS):
  the default ``inner="forward"`` (one explicit Fisher-Kolmogorov run, the ``lambda_PDE -> infinity`` limit),
  ``inner="odil"`` (bodil's inner ODIL solve: Levenberg-Marquardt Gauss-Newton, ``CTVSettings.inner_iterations``
  iterations), and the paper's recipe (a cold-start Adam solve of 5000 epochs from a zero field, lr 1e-3
  halved on 50-epoch plateaus; ``--adam-epochs`` below 5000 times that many and scales the time). With
  the cost, the objective ``-log p(u, theta | D)`` each inner solve reaches (lower is better: it is a
  maximisation over ``u``).

    .venv/bin/python benchmarks/tumor.py                 # 5 patients, default CTVSettings
    .venv/bin/python benchmarks/tumor.py --quick         # 2 patients, small grid
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402

from bodil.optimize import Objective, adam  # noqa: E402
from bodil.tumor import (CTVSettings, classes_from_labels, crop_around, label_convention, mni152,  # noqa: E402
                         run_ctv, synthetic_patient)
from bodil.tumor.model import tumor_model  # noqa: E402
from bodil.tumor.segmentation import Segmentation  # noqa: E402

# (origin in world mm, Dw mm^2/day, rho 1/day): different lobes, slow/fast and diffuse/compact tumours
PATIENTS = [
    ((-28.0, -20.0, 16.0), 0.5, 0.045),
    ((30.0, -10.0, 20.0), 0.3, 0.06),
    ((-30.0, 20.0, 10.0), 0.8, 0.035),
    ((26.0, -30.0, 14.0), 0.4, 0.05),
    ((-24.0, 0.0, 30.0), 0.6, 0.04),
]


def inner_solve_costs(seg, anatomy, settings, theta_map, origins, adam_epochs: int) -> dict:
    """Seconds per evaluation and the objective reached, for the three inner solves (module docstring)."""
    from bodil.inference import ModeApproximation
    from bodil.tumor.model import ORIGIN
    from bodil.tumor.model import ForwardLikelihood

    crop = crop_around(seg.tumor, seg.affine, scale=settings.box_scale, n=settings.grid)
    box = anatomy.crop(crop)
    classes = np.rint(crop.to_box(seg.classes.astype(float), order=0)).astype(np.int8)
    model = tumor_model(box.wm, box.gm, classes, crop.side_mm, nt=settings.time_points, t_final=settings.t_final,
                        infer=ORIGIN, fixed=theta_map, likelihood=settings.likelihood, lambda_pde=settings.lambda_pde,
                        lambda_ic=settings.lambda_ic, sigma=settings.sigma)
    thetas = [{c: jnp.asarray(float(v)) for c, v in zip(ORIGIN, o)} for o in origins]
    forward = ForwardLikelihood(model)
    forward(thetas[0])  # compile
    fwd_start = time.perf_counter()
    for th in thetas[1:]:
        forward(th)
    fwd_s = (time.perf_counter() - fwd_start) / (len(thetas) - 1)
    u_start = model.forward(thetas[0], dtype=jnp.float64)
    mode = ModeApproximation(model.posterior, (u_start, thetas[0]), ftol=settings.inner_ftol,
                             max_iter=settings.inner_iterations, cg_maxiter=settings.inner_cg_iterations,
                             damping=settings.inner_damping, adaptive_damping=True, on_failure="lower-bound",
                             initial=lambda th: model.forward(th))
    mode.solve(thetas[0])  # compile, and the first warm start
    evs = [mode.solve(th)[1] for th in thetas[1:]]
    odil_s = float(np.mean([e.wall_time for e in evs]))
    odil_loss = float(np.mean([-e.log_density for e in evs]))
    adam_s = adam_loss = float("nan")
    if adam_epochs:
        losses = []
        times = []
        for th in thetas[1:3]:
            obj = Objective(model.posterior, jnp.zeros(model.grid.shape), th)
            if not times:
                adam(obj, epochs=100, chunk=100)  # compile
            start = time.perf_counter()
            _, rep = adam(obj, epochs=adam_epochs, chunk=100)
            times.append((time.perf_counter() - start) * 5000 / adam_epochs)
            losses.append(rep.loss)
        adam_s, adam_loss = float(np.mean(times)), float(np.mean(losses))
    return dict(forward_s=fwd_s, odil_s=odil_s, odil_loss=odil_loss,
                odil_converged=float(np.mean([e.converged for e in evs])),
                odil_iterations=float(np.mean([e.iterations for e in evs])), adam_s=adam_s, adam_loss=adam_loss,
                adam_loss_epochs=adam_epochs)


def evaluate(i, patient, dw, rho, anatomy, settings, adam_epochs, inner_samples, workdir):
    conv = label_convention("brats2021")
    seg = Segmentation(classes_from_labels(patient.labels, conv), patient.labels, anatomy.affine, conv, None)
    out = os.path.join(workdir, f"patient{i}")
    res = run_ctv(seg, anatomy, out, settings=settings, patient_id=f"synthetic-{i}", truth=patient.truth,
                  progress=False)
    s = res.summary
    truth = np.asarray(patient.truth["origin_world"])
    map_origin = np.asarray(s["map"]["origin_world_mm"])
    idata_path = res.files["posterior"]
    import arviz as az

    idata = az.from_netcdf(idata_path)
    samples = np.stack([idata.posterior[f"{c}_world"].values.ravel() for c in "xyz"], axis=1)
    mean, cov = samples.mean(axis=0), np.cov(samples.T) + 1e-9 * np.eye(3)
    d2 = float((truth - mean) @ np.linalg.solve(cov, truth - mean))
    in_region = d2 <= scipy.stats.chi2.ppf(0.9, 3)
    in_marginals = all(np.quantile(samples[:, k], 0.05) <= truth[k] <= np.quantile(samples[:, k], 0.95)
                       for k in range(3))
    region = (patient.concentration >= 0.01) & (patient.concentration < 0.25) & anatomy.brain
    cover = {}
    for m in settings.margins_mm:
        tag = f"{m:g}mm"
        std = np.asarray(nib.load(os.path.join(out, f"ctv_standard_{tag}.nii.gz")).dataobj) > 0
        mp = np.asarray(nib.load(os.path.join(out, f"ctv_model_map_{tag}.nii.gz")).dataobj) > 0
        prob = np.asarray(nib.load(os.path.join(out, f"ctv_probability_{tag}.nii.gz")).dataobj)
        cover[tag] = (float(std[region].mean()), float(mp[region].mean()), float(prob[region].mean()))
    inner = s["posterior"]["inner_solves"]
    theta = s["map"]["theta"]
    pick = np.random.default_rng(i).choice(samples.shape[0], size=inner_samples + 1, replace=False)
    box_origins = np.stack([idata.posterior[c].values.ravel()[pick] for c in ("x0", "y0", "z0")], axis=1)
    costs = inner_solve_costs(seg, anatomy, settings, theta, box_origins, adam_epochs)
    return dict(patient=i, origin_err=float(np.linalg.norm(map_origin - truth)),
                dw_err=theta["Dw"] / dw - 1, rho_err=theta["rho"] / rho - 1,
                spread=s["posterior"]["origin_spread_mm"], weight=s["posterior"]["likelihood_weight"],
                mahalanobis=np.sqrt(d2), in_region=in_region,
                in_marginals=in_marginals, cover=cover, evaluations=inner["inner_solves"],
                per_sample=inner["wall_time"] / settings.num_samples, wall=s["wall_time_s"], **costs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 patients on a 12^3 x 10 grid, 16 samples")
    ap.add_argument("--patients", type=int, default=len(PATIENTS))
    ap.add_argument("--grid", type=int)
    ap.add_argument("--time-points", type=int)
    ap.add_argument("--samples", type=int)
    ap.add_argument("--error-correlation", type=float, help="CTVSettings.error_correlation_mm (0: untempered)")
    ap.add_argument("--adam-epochs", type=int, default=5000,
                    help="Adam epochs per cold-start solve, 2 per patient (0: skip; below 5000 the time is scaled "
                         "and the loss is the one reached after these epochs)")
    ap.add_argument("--inner-samples", type=int, default=4, help="posterior origins per patient for the "
                    "inner-solve costs")
    args = ap.parse_args(argv)
    settings = CTVSettings(grid=12, time_points=10, num_samples=16) if args.quick else CTVSettings()
    over = {k: v for k, v in (("grid", args.grid), ("time_points", args.time_points), ("num_samples", args.samples))
            if v is not None}
    if args.error_correlation is not None:
        over["error_correlation_mm"] = args.error_correlation or None
    import dataclasses

    settings = dataclasses.replace(settings, **over)
    n = 2 if args.quick else min(args.patients, len(PATIENTS))
    anatomy = mni152(2)
    print(f"# {n} synthetic patients on MNI152 (2 mm); grid {settings.grid}^3 x {settings.time_points}, "
          f"{settings.num_samples} samples; errors correlated over {settings.error_correlation_mm} mm; "
          f"{jax.devices()[0].platform}")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        patients = [synthetic_patient(anatomy, origin=o, dw=dw, rho=rho) for o, dw, rho in PATIENTS[:n]]  # fail early
        for i, (patient, (_, dw, rho)) in enumerate(zip(patients, PATIENTS)):
            r = evaluate(i, patient, dw, rho, anatomy, settings, args.adam_epochs, args.inner_samples, work)
            rows.append(r)
            print(f"patient {i} done in {r['wall']:.0f} s", file=sys.stderr, flush=True)
    print()
    print("| patient | MAP origin error (mm) | Dw rel. error | rho rel. error | likelihood weight | "
          "origin spread (mm) | truth Mahalanobis | in 90% region | in 90% marginals | BASIS evaluations | "
          "BASIS s / sample |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['patient']} | {r['origin_err']:.2f} | {r['dw_err']:+.2f} | {r['rho_err']:+.2f} | "
              f"{r['weight']:.3g} | {r['spread']:.2f} | {r['mahalanobis']:.2f} | {'yes' if r['in_region'] else 'no'} | "
              f"{'yes' if r['in_marginals'] else 'no'} | {r['evaluations']} | {r['per_sample']:.2f} |")
    print()
    print(f"One evaluation of log p(theta | D): seconds and the objective -log p(u, theta | D) reached (Adam: "
          f"after {args.adam_epochs} epochs from a zero field; time scaled to 5000 epochs)")
    print()
    print("| patient | forward (s) | ODIL LM (s) | ODIL its | ODIL converged | ODIL objective | Adam 5000 (s) | "
          "Adam objective | Adam / ODIL time | Adam / forward time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['patient']} | {r['forward_s']:.3f} | {r['odil_s']:.2f} | {r['odil_iterations']:.1f} | "
              f"{r['odil_converged']:.2f} | {r['odil_loss']:.1f} | {r['adam_s']:.0f} | {r['adam_loss']:.1f} | "
              f"{r['adam_s'] / r['odil_s']:.0f}x | {r['adam_s'] / r['forward_s']:.0f}x |")
    print()
    print("Coverage of the invisible infiltration (0.01 <= u_true < 0.25) at equal volume: "
          "standard CTV / MAP model CTV / posterior ensemble (mean)")
    print()
    margins = list(rows[0]["cover"])
    print("| patient | " + " | ".join(margins) + " |")
    print("|---|" + "---|" * len(margins))
    for r in rows:
        print(f"| {r['patient']} | " + " | ".join(f"{a:.3f} / {b:.3f} / {c:.3f}" for a, b, c in r["cover"].values())
              + " |")


if __name__ == "__main__":
    main()
