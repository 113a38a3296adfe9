"""The MAP fit's objective: compiled (``bodil.tumor.model.forward_objective``) against the eager composition.

The forward-limit MAP (``fit_forward``) is Nelder-Mead over ``-log p(D | u_FK(theta)(T)) - log p(theta)``, about
900 evaluations on a large patient. ``forward_objective`` evaluates it in two compiled calls: the transforms and
the prior, then ``ForwardLikelihood.batch`` (the explicit run to the imaging time and the likelihood). The baseline
is the same sum from the model's public methods, one operation at a time: ``TumorModel.forward`` (every time
node), ``final_log_likelihood`` and ``Params.log_prob``. Both are timed at the points Nelder-Mead visits on the
patient, interleaved so that the machine's load falls on both alike; the table gives the time per evaluation,
their ratio and the largest difference of the values.

    .venv/bin/python benchmarks/tumor_map_speed.py                       # bodil's demo patient (2 mm MNI152)
    .venv/bin/python benchmarks/tumor_map_speed.py --cohort c2028 --patient 1   # a 1 mm cohort patient
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402

from bodil.tumor import CTVSettings, load_segmentation, mni152, synthetic_patient  # noqa: E402
from bodil.tumor.model import forward_objective, initial_guess  # noqa: E402
from bodil.tumor.pipeline import box_model  # noqa: E402
from bodil.tumor.segmentation import Segmentation, classes_from_labels, label_convention  # noqa: E402


def patient(cohort: str | None, index: int):
    """``(segmentation, anatomy)`` of the demo patient, or of cohort patient ``index``."""
    if cohort is None:
        anatomy = mni152(2)
        p = synthetic_patient(anatomy)
        conv = label_convention("brats2021")
        return Segmentation(classes_from_labels(p.labels, conv), p.labels, anatomy.affine, conv), anatomy
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from tumor_cohort import load_patient

    folder, truth, anatomy, _ = load_patient(cohort, index)
    return load_segmentation(os.path.join(folder, "seg.nii.gz"), truth["labels"]), anatomy


def eager_objective(model):
    """The baseline: ``w -> -log p(D | u(T)) - log p(theta)`` one operation at a time."""
    params = model.posterior.params
    names = list(params.priors)

    def objective(w):
        theta = params.constrain({k: jnp.asarray(v) for k, v in zip(names, w)})
        full = params.merge(theta)
        u_final = model.forward(full, dtype=jnp.float64)[-1]
        return -model.final_log_likelihood(u_final, full) - float(params.log_prob(theta))

    return objective


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohort", help="a cohort folder (benchmarks/tumor_cohort.py make); default: the demo patient")
    ap.add_argument("--patient", type=int, default=0)
    ap.add_argument("--points", type=int, default=100, help="Nelder-Mead points timed (every k-th of its path)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    seg, anatomy = patient(args.cohort, args.patient)
    settings = CTVSettings()
    crop, model = box_model(seg, anatomy, settings)
    params = model.posterior.params
    names = list(params.priors)
    start = initial_guess(model)
    z0 = params.unconstrain({k: jnp.asarray(start[k], jnp.float64) for k in names})
    w0 = np.array([float(z0[k]) for k in names])
    compiled, eager = forward_objective(model), eager_objective(model)
    path = []

    def recorded(w):
        path.append(np.array(w))
        return compiled(w)

    t = time.perf_counter()
    res = scipy.optimize.minimize(recorded, w0, method="Nelder-Mead", options={
        "maxfev": 400 * len(names), "xatol": 1e-3, "fatol": 1e-3,
        "initial_simplex": w0 + np.vstack([np.zeros(len(w0)), 0.3 * np.eye(len(w0))])})
    fit_s = time.perf_counter() - t
    points = path[::max(1, len(path) // args.points)]
    eager(points[0])  # compile what the eager path compiles
    wall = {"eager": 0.0, "compiled": 0.0}
    cpu = dict(wall)
    diff = max(abs(eager(w) - compiled(w)) for w in points[:10])
    for _ in range(args.repeats):
        for name, f in (("eager", eager), ("compiled", compiled)):
            t, c = time.perf_counter(), time.process_time()
            for w in points:
                f(w)
            wall[name] += time.perf_counter() - t
            cpu[name] += time.process_time() - c
    n = args.repeats * len(points)
    print(f"# {'demo patient' if args.cohort is None else f'{args.cohort} patient {args.patient}'}: box "
          f"{crop.n}^3 ({crop.spacing_mm:.2f} mm); Nelder-Mead {res.nfev} evaluations, {res.message} "
          f"({fit_s:.1f} s with the compiled objective); {len(points)} of its points timed {args.repeats} times\n")
    print("| objective | ms per evaluation (wall) | ms (CPU, all threads) |")
    print("|---|---|---|")
    for name in wall:
        print(f"| {name} | {1e3 * wall[name] / n:.1f} | {1e3 * cpu[name] / n:.1f} |")
    print(f"| ratio eager / compiled | {wall['eager'] / wall['compiled']:.2f} | {cpu['eager'] / cpu['compiled']:.2f} |")
    print(f"\nlargest |difference| of the objective over 10 points: {diff:.2e} nats")


if __name__ == "__main__":
    main()
