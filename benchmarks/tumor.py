"""The tumour pipeline on synthetic patients with known truth (seed 003 sec. 3.4).

For each patient (a tumour grown by ``bodil.forward.fk`` on MNI152 at 2 mm with its own origin, ``Dw`` and
``rho``) ``bodil.tumor.run_ctv`` runs end to end and the table reports:

* MAP errors: origin (mm, world), ``Dw`` and ``rho`` (relative; the truth's ``Dg = Dw / 10`` is the model's);
* whether the true origin lies in the posterior's 90% credible region (the ellipsoid of the samples'
  mean and covariance with the chi^2_3 0.9 quantile) and in each 90% marginal interval;
* coverage of the invisible infiltration, the voxels with ``0.01 <= u_true < 0.25`` (tumour cells below
  the edema threshold), by the model CTV of the MAP and by the posterior ensemble (mean over samples of the
  covered fraction) against the standard CTV of the same volume, per margin;
* cost per posterior sample: BASIS's inner-solve wall time over the number of samples, against the paper's
  recipe for one sample (a cold-start Adam solve of 5000 epochs, lr 1e-3 halved on 50-epoch plateaus), timed
  here on the same box over ``--adam-epochs`` epochs and scaled to 5000 (an Adam epoch costs the same
  throughout).

    .venv/bin/python benchmarks/tumor.py                 # 5 patients, default Settings
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
from bodil.tumor import (Settings, classes_from_labels, crop_around, label_convention, mni152,  # noqa: E402
                         run_ctv, synthetic_patient)
from bodil.tumor.model import tumor_model  # noqa: E402
from bodil.tumor.segmentation import Segmentation  # noqa: E402

# (origin in world mm, Dw mm^2/day, rho 1/day): different lobes, slow/fast and diffuse/compact tumours
PATIENTS = [
    ((-28.0, -20.0, 16.0), 0.5, 0.045),
    ((30.0, -10.0, 20.0), 0.3, 0.06),
    ((-30.0, 20.0, 10.0), 0.8, 0.035),
    ((26.0, -40.0, 10.0), 0.4, 0.05),
    ((-24.0, 0.0, 30.0), 0.6, 0.04),
]


def adam_seconds_per_sample(seg, anatomy, settings, theta, epochs: int) -> float:
    """The paper's inner solve for one sample on the same box: Adam from a zero field, ``epochs`` timed."""
    crop = crop_around(seg.tumor, seg.affine, scale=settings.box_scale, n=settings.grid)
    box = anatomy.crop(crop)
    classes = np.rint(crop.to_box(seg.classes.astype(float), order=0)).astype(np.int8)
    model = tumor_model(box.wm, box.gm, classes, crop.side_mm, nt=settings.time_points, t_final=settings.t_final,
                        infer=(), fixed=theta, likelihood=settings.likelihood)
    obj = Objective(model.posterior, jnp.zeros(model.grid.shape), {})
    adam(obj, epochs=100, chunk=100)  # compile
    start = time.perf_counter()
    adam(obj, epochs=epochs, chunk=100)
    return (time.perf_counter() - start) * 5000 / epochs


def evaluate(i, origin, dw, rho, anatomy, settings, adam_epochs, workdir):
    patient = synthetic_patient(anatomy, origin=origin, dw=dw, rho=rho)
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
    per_sample = inner["wall_time"] / settings.samples
    theta = s["map"]["theta"]
    adam_s = adam_seconds_per_sample(seg, anatomy, settings, theta, adam_epochs) if adam_epochs else float("nan")
    return dict(patient=i, origin_err=float(np.linalg.norm(map_origin - truth)),
                dw_err=theta["Dw"] / dw - 1, rho_err=theta["rho"] / rho - 1,
                spread=s["posterior"]["origin_spread_mm"], mahalanobis=np.sqrt(d2), in_region=in_region,
                in_marginals=in_marginals, cover=cover, evaluations=inner["inner_solves"],
                unconverged=inner["unconverged"], per_sample=per_sample, adam=adam_s, wall=s["wall_time_s"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 patients on a 12^3 x 10 grid, 16 samples")
    ap.add_argument("--patients", type=int, default=len(PATIENTS))
    ap.add_argument("--grid", type=int)
    ap.add_argument("--time-points", type=int)
    ap.add_argument("--samples", type=int)
    ap.add_argument("--adam-epochs", type=int, default=300, help="Adam epochs timed per patient (0: skip)")
    args = ap.parse_args(argv)
    settings = Settings(grid=12, time_points=10, samples=16) if args.quick else Settings()
    over = {k: v for k, v in (("grid", args.grid), ("time_points", args.time_points), ("samples", args.samples))
            if v is not None}
    import dataclasses

    settings = dataclasses.replace(settings, **over)
    n = 2 if args.quick else min(args.patients, len(PATIENTS))
    anatomy = mni152(2)
    print(f"# {n} synthetic patients on MNI152 (2 mm); grid {settings.grid}^3 x {settings.time_points}, "
          f"{settings.samples} samples; {jax.devices()[0].platform}")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for i, (origin, dw, rho) in enumerate(PATIENTS[:n]):
            r = evaluate(i, origin, dw, rho, anatomy, settings, args.adam_epochs, work)
            rows.append(r)
            print(f"patient {i} done in {r['wall']:.0f} s", file=sys.stderr, flush=True)
    print()
    print("| patient | MAP origin error (mm) | Dw rel. error | rho rel. error | origin spread (mm) | "
          "truth Mahalanobis | in 90% region | in 90% marginals | evaluations (capped) | s / sample | "
          "Adam 5000 epochs (s) | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['patient']} | {r['origin_err']:.2f} | {r['dw_err']:+.2f} | {r['rho_err']:+.2f} | "
              f"{r['spread']:.2f} | {r['mahalanobis']:.2f} | {'yes' if r['in_region'] else 'no'} | "
              f"{'yes' if r['in_marginals'] else 'no'} | {r['evaluations']} ({r['unconverged']}) | "
              f"{r['per_sample']:.2f} | {r['adam']:.0f} | {r['adam'] / r['per_sample']:.0f}x |")
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
