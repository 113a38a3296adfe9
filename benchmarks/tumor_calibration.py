"""Coverage of the tumour posterior's credible regions against the error-correlation length ``l``.

``CTVSettings.error_correlation_mm`` tempers the segmentation's likelihood to one independent observation per
``l^3`` (``w = min(1, (h / l)^3)``, ``h`` the box spacing). This script chooses its default: on synthetic
patients other than ``benchmarks/tumor.py``'s (drawn with a fixed seed: origin in white matter, ``Dw`` and
``rho`` log-uniform over a range of slow to fast tumours), it fits the MAP once per patient
(``bodil.tumor.pipeline.fit_map``), runs BASIS for every ``l`` (``sample_posterior``) and reports, per ``l``:

* how often the true initial position lies in the 90% credible region (the ellipsoid of the samples' mean and
  covariance with the chi^2_3 0.9 quantile) and in all three 90% marginal intervals;
* the median spread of the initial position (root of the trace of its covariance, mm) and the median error of
  the posterior mean.

The synthetic patients grow on MNI152 at 2 mm with their own solver settings; the model runs on a
``grid^3`` box around the tumour. With ``l = 0`` (untempered, one observation per voxel) the only error is
that difference of resolution, and the posterior ignores it.

    .venv/bin/python benchmarks/tumor_calibration.py                       # 8 patients, l = 0, 5, 7.5, 10, 15
    .venv/bin/python benchmarks/tumor_calibration.py --patients 4 --lengths 0 10
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402

from bodil.io import InputError  # noqa: E402
from bodil.tumor import CTVSettings, classes_from_labels, label_convention, mni152, synthetic_patient  # noqa: E402
from bodil.tumor.model import ORIGIN  # noqa: E402
from bodil.tumor.pipeline import fit_map, sample_posterior  # noqa: E402
from bodil.tumor.segmentation import Segmentation  # noqa: E402


def draw_patients(anatomy, count: int, seed: int = 2026):
    """``count`` synthetic patients: origin at a white-matter voxel (fraction > 0.9) at least 25 mm inside the
    brain's bounding box, ``Dw`` log-uniform in [0.2, 1] mm^2/day, ``rho`` log-uniform in [0.025, 0.07] /day;
    draws whose tumour has no core or reaches the volume's border are redrawn."""
    rng = np.random.default_rng(seed)
    brain = np.argwhere(anatomy.brain)
    lo, hi = brain.min(axis=0), brain.max(axis=0)
    margin = np.ceil(25.0 / np.asarray(anatomy.spacing)).astype(int)
    wm = np.argwhere(anatomy.wm > 0.9)
    wm = wm[np.all((wm >= lo + margin) & (wm <= hi - margin), axis=1)]
    patients = []
    while len(patients) < count:
        voxel = wm[rng.integers(len(wm))]
        origin = (anatomy.affine @ np.r_[voxel, 1.0])[:3]
        dw, rho = np.exp(rng.uniform(np.log(0.2), np.log(1.0))), np.exp(rng.uniform(np.log(0.025), np.log(0.07)))
        try:
            patients.append((synthetic_patient(anatomy, origin=tuple(origin), dw=float(dw), rho=float(rho)),
                             float(dw), float(rho)))
        except InputError:
            continue
    return patients


def covers(samples: np.ndarray, truth: np.ndarray) -> tuple[bool, bool, float]:
    """(truth in the 90% ellipsoid, truth in all 90% marginal intervals, its Mahalanobis distance)."""
    mean, cov = samples.mean(axis=0), np.cov(samples.T) + 1e-12 * np.eye(samples.shape[1])
    d2 = float((truth - mean) @ np.linalg.solve(cov, truth - mean))
    marginal = all(np.quantile(samples[:, k], 0.05) <= truth[k] <= np.quantile(samples[:, k], 0.95)
                   for k in range(samples.shape[1]))
    return d2 <= scipy.stats.chi2.ppf(0.9, samples.shape[1]), marginal, float(np.sqrt(d2))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=8)
    ap.add_argument("--lengths", type=float, nargs="+", default=[0.0, 5.0, 7.5, 10.0, 15.0],
                    help="error-correlation lengths in mm (0: untempered)")
    ap.add_argument("--grid", type=int)
    ap.add_argument("--samples", type=int)
    args = ap.parse_args(argv)
    over = {k: v for k, v in (("grid", args.grid), ("num_samples", args.samples)) if v is not None}
    base = dataclasses.replace(CTVSettings(), **over)
    anatomy = mni152(2)
    conv = label_convention("brats2021")
    patients = draw_patients(anatomy, args.patients)
    print(f"# {len(patients)} synthetic calibration patients on MNI152 (2 mm); grid {base.grid}^3 x "
          f"{base.time_points}, {base.num_samples} samples")
    rows = {ell: [] for ell in args.lengths}
    for i, (patient, dw, rho) in enumerate(patients):
        start = time.perf_counter()
        seg = Segmentation(classes_from_labels(patient.labels, conv), patient.labels, anatomy.affine, conv, None)
        mf = fit_map(seg, anatomy, base)
        truth = mf.crop.world_to_box(np.asarray(patient.truth["origin_world"]))
        for ell in args.lengths:
            s = dataclasses.replace(base, error_correlation_mm=ell or None)
            idata, _ = sample_posterior(mf, s)
            samples = np.stack([idata.posterior[c].values.ravel() for c in ORIGIN], axis=1)
            region, marginal, maha = covers(samples, truth)
            rows[ell].append(dict(region=region, marginal=marginal, maha=maha,
                                  spread=float(np.sqrt(np.trace(np.cov(samples.T)))),
                                  error=float(np.linalg.norm(samples.mean(axis=0) - truth)),
                                  w=float(idata.attrs["likelihood_weight"])))
        print(f"patient {i} (origin {np.round(patient.truth['origin_world'], 1).tolist()} mm, Dw {dw:.2f}, "
              f"rho {rho:.3f}, box spacing {mf.model.spacing:.2f} mm): "
              + "; ".join(f"l={ell:g}: Mahalanobis {rows[ell][-1]['maha']:.1f}, spread {rows[ell][-1]['spread']:.2f}"
                          for ell in args.lengths)
              + f" ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    print()
    print("| l (mm) | weight w (median) | truth in 90% region | in all 90% marginals | median spread (mm) | "
          "median error of the mean (mm) | median Mahalanobis |")
    print("|---|---|---|---|---|---|---|")
    for ell, r in rows.items():
        n = len(r)
        print(f"| {'untempered' if not ell else f'{ell:g}'} | {np.median([x['w'] for x in r]):.3g} | "
              f"{sum(x['region'] for x in r)}/{n} | {sum(x['marginal'] for x in r)}/{n} | "
              f"{np.median([x['spread'] for x in r]):.2f} | {np.median([x['error'] for x in r]):.2f} | "
              f"{np.median([x['maha'] for x in r]):.1f} |")


if __name__ == "__main__":
    main()
