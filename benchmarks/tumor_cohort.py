"""The tumour pipeline on a validation cohort that is not an inverse crime (``bodil.tumor.cohort``).

``make`` grows the cohort on MNI152 at 1 mm with ``bodil.forward.fk_split`` (Strang splitting, harmonic-mean
faces, an ellipsoidal initial tumour, ``Dw / Dg`` in [5, 100], thresholds drawn from broad priors, boundary
jitter and label flips, both BraTS conventions, some thick-slice images, visible tumours of 5-250 ml) and keeps
it on disk: one folder per patient (``seg.nii.gz``, ``concentration.nii.gz`` the truth on the patient's grid,
``truth.json``) and the tissue maps once per image grid (``anatomy/<grid>/``). Patient ``i`` depends only on
``(seed, i)``, so an interrupted ``make`` resumes where it stopped.

``evaluate`` runs ``bodil.tumor.run_ctv`` (default settings unless overridden) on the patients and prints
one row each and a summary block:

* origin: error of the MAP and of the posterior mean (mm), and whether the truth lies in the 90% credible
  ellipsoid (samples' mean and covariance, chi^2_3 quantile);
* ``Dw T`` and ``rho T`` (what one image identifies; the model fixes ``T``): relative error of the MAP, and
  whether the 90% interval contains the truth when the parameter is sampled;
* whether the MAP solve converged;
* coverage of the invisible infiltration (true ``0.01 <= u < tau_edema`` in the brain) by the standard CTV /
  the MAP model CTV / the posterior ensemble's CTV of equal volume (the Vorob'ev expectation, ``ctv_ensemble``),
  all of the standard plan's volume, per margin; and the same for all of the infiltration (true ``u >= 0.01``,
  visible or not), in the summary block;
* wall time.

Results are kept per patient (``<results>/patient_XXX/row.json``), so ``evaluate`` resumes too.
``evaluate --discrepancy-from <calibration runs>`` fits the growth parameters' and the origin's model discrepancy
(``bodil.tumor.discrepancy``) on those runs and prints its intervals' coverage and width there (in-sample and
leave-one-out) and on the runs in ``--results`` (of another cohort with ``--calibration-cohort``); its output gives
``GROWTH_DISCREPANCY`` and ``ORIGIN_DISCREPANCY``.
``evaluate --where-volume-goes`` counts, for finished runs, where the plan and the ensemble CTV spend the plan's
volume (visible tumour, invisible infiltration) and scores the CTV of the highest posterior mean concentration.

    .venv/bin/python benchmarks/tumor_cohort.py make --out benchmarks/cohort --patients 50
    .venv/bin/python benchmarks/tumor_cohort.py evaluate --cohort benchmarks/cohort --results /tmp/cohort-runs
    .venv/bin/python benchmarks/tumor_cohort.py evaluate --cohort benchmarks/cohort --results /tmp/report-runs \
        --patients 25 ... 44 --discrepancy-from /tmp/cohort-runs --calibration-patients 0 ... 19
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np
import scipy.special
import scipy.stats

from bodil.io import atomic_directory, load_nifti, save_nifti, write_json
from bodil.progress import as_meter
from bodil.tumor import Anatomy, CTVSettings, load_segmentation, mni152, run_ctv
from bodil.tumor.cohort import CohortPriors, cohort_patient
from bodil.tumor.ctv import core_distance, model_ctv
from bodil.tumor.discrepancy import in_origin_region

MAKE_SEED = 2027
"""Seed of the cohort that calibration uses (``evaluate --holdout`` uses a cohort made with another seed)."""


def grid_tag(spacing) -> str:
    return "mni152_1mm" if spacing is None else "x".join(f"{s:g}" for s in spacing) + "mm"


def make(out: str, patients: int, seed: int, progress=True) -> None:
    """Grow and write patients ``0 .. patients - 1`` of cohort ``seed`` that ``out`` does not hold yet."""
    anatomy = mni152(1)
    priors = CohortPriors()
    os.makedirs(out, exist_ok=True)
    meter = as_meter(progress)
    with meter.session("cohort", patients) as bar:
        for i in range(patients):
            folder = os.path.join(out, f"patient_{i:03d}")
            if not os.path.exists(os.path.join(folder, "truth.json")):
                start = time.perf_counter()
                p = cohort_patient(anatomy, seed, i, priors)
                tag = grid_tag(p.truth["spacing_mm"])
                maps = os.path.join(out, "anatomy", tag)
                if not os.path.exists(os.path.join(maps, "wm.nii.gz")):
                    with atomic_directory(maps, overwrite=True) as tmp:
                        for name in ("wm", "gm", "csf"):
                            save_nifti(os.path.join(tmp, f"{name}.nii.gz"), getattr(p.anatomy, name), p.anatomy.affine)
                with atomic_directory(folder, overwrite=True) as tmp:
                    save_nifti(os.path.join(tmp, "seg.nii.gz"), p.labels, p.anatomy.affine, dtype=np.uint8)
                    save_nifti(os.path.join(tmp, "concentration.nii.gz"), p.concentration, p.anatomy.affine)
                    write_json(os.path.join(tmp, "truth.json"),
                               {**p.truth, "anatomy": f"anatomy/{tag}", "grow_seconds": time.perf_counter() - start})
            bar.step()
    write_json(os.path.join(out, "manifest.json"), {
        "generator": "bodil.tumor.cohort.cohort_patient", "seed": seed, "patients": patients,
        "priors": dataclasses.asdict(priors), "anatomy": "MNI152 2009 (nilearn), 1 mm"})


def load_patient(cohort: str, i: int):
    folder = os.path.join(cohort, f"patient_{i:03d}")
    with open(os.path.join(folder, "truth.json"), encoding="utf-8") as f:
        truth = json.load(f)
    maps = {n: load_nifti(os.path.join(cohort, truth["anatomy"], f"{n}.nii.gz"), what=n) for n in ("wm", "gm", "csf")}
    anatomy = Anatomy(**{n: np.clip(v.data, 0, 1) for n, v in maps.items()}, affine=maps["wm"].affine)
    conc = load_nifti(os.path.join(folder, "concentration.nii.gz"), what="true concentration").data
    return folder, truth, anatomy, conc


def in_ellipsoid(samples: np.ndarray, truth: np.ndarray, level: float = 0.9,
                 weights: np.ndarray | None = None) -> tuple[bool, float]:
    """Whether ``truth`` lies in the ``level`` ellipsoid of the samples' (weighted) mean and covariance, and
    its Mahalanobis distance."""
    w = np.full(len(samples), 1.0 / len(samples)) if weights is None else weights / weights.sum()
    mean = w @ samples
    cov = np.cov(samples.T, aweights=w) + 1e-9 * np.eye(samples.shape[1])
    d2 = float((truth - mean) @ np.linalg.solve(cov, truth - mean))
    return d2 <= scipy.stats.chi2.ppf(level, samples.shape[1]), float(np.sqrt(d2))


def weighted_interval(x: np.ndarray, w: np.ndarray, level: float = 0.9) -> tuple[float, float]:
    """The central ``level`` interval of the weighted samples ``x``."""
    order = np.argsort(x)
    c = np.cumsum(w[order]) / w.sum()
    lo, hi = (1 - level) / 2, (1 + level) / 2
    return float(x[order][np.searchsorted(c, lo)]), float(x[order][min(np.searchsorted(c, hi), len(x) - 1)])


def rescaled_marginal(idata, ratio: float, rule) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, ``log sum_k pi_k L_k^(ratio w)`` and the nodes' masses at that weight, from a run that
    integrated the thresholds out at weight ``w`` with the quadrature ``rule`` (``threshold_rule``): its stored
    marginal ``m = log sum_k pi_k L_k^w`` and node masses ``p_k = pi_k L_k^w / e^m`` give
    ``w log L_k = log p_k + m - log pi_k`` (``bodil.tumor.thresholds``)."""
    stored = idata.sample_stats["log_likelihood"].values.reshape(-1, 1)
    p = idata.posterior["threshold_weights"].values.astype(float)
    p = p.reshape(-1, p.shape[-1])
    log_pi = rule.log_mass
    with np.errstate(divide="ignore"):
        w_log_l = np.log(p) + stored - log_pi
    scaled = log_pi + ratio * w_log_l
    marginal = scipy.special.logsumexp(scaled, axis=1)
    return marginal, np.exp(scaled - marginal[:, None])


def threshold_rule(idata):
    """The quadrature rule a run integrated the thresholds with."""
    from bodil.tumor.model import threshold_priors
    from bodil.tumor.thresholds import threshold_quadrature

    return threshold_quadrature(threshold_priors(), int(idata.attrs["threshold_nodes"]))


def reweighted_coverage(cohort: str, results: str, patients: list[int], lengths: list[float]) -> str:
    """Coverage of the origin, ``Dw T`` and ``rho T`` for other error-correlation lengths ``l'``, from runs made
    at a longer ``l`` (a wider posterior): BASIS's final samples reweighted by ``L^(w' - w)``,
    ``w = min(1, (h / l)^3)``, with the intervals' median width in decades. Valid while the weights' effective
    sample size stays large (printed)."""
    lines = ["| l' (mm) | origin in 90% | Dw T in 90% | rho T in 90% | tau_lo in 90% | tau_up in 90% | "
             "Dw T / rho T interval, median decades | median ESS |",
             "|---|---|---|---|---|---|---|---|"]
    runs = [(summary, idata, truth, threshold_rule(idata) if "threshold_weights" in idata.posterior else None)
            for _, summary, idata, truth in finished_runs(cohort, results, patients)]
    for length in lengths:
        hits, ess = {"origin": [], "Dw": [], "rho": [], "tau_lo": [], "tau_up": []}, []
        decades = {"Dw": [], "rho": []}
        for summary, idata, truth, rule in runs:
            w = float(idata.attrs["likelihood_weight"])
            w_new = min(1.0, (summary["box"]["spacing_mm"] / length) ** 3)
            stored = idata.sample_stats["log_likelihood"].values.ravel()  # w * log L
            log_r = (w_new / w - 1.0) * stored
            if rule is not None:  # thresholds integrated out: stored = log sum_k pi_k L_k^w
                marginal, nodes = rescaled_marginal(idata, w_new / w, rule)
                log_r = marginal - stored
            r = np.exp(log_r - log_r.max())
            ess.append(r.sum() ** 2 / (r**2).sum())
            post = idata.posterior
            xyz = np.stack([post[f"{c}_world"].values.ravel() for c in "xyz"], axis=1)
            hits["origin"].append(in_ellipsoid(xyz, np.asarray(truth["origin_world"]), weights=r)[0])
            t_model = summary["settings"]["t_final"]
            for name, true in (("Dw", truth["dw"] * truth["t_final"]), ("rho", truth["rho"] * truth["t_final"])):
                if name in post:
                    lo, hi = weighted_interval(post[name].values.ravel() * t_model, r)
                    hits[name].append(lo <= true <= hi)
                    decades[name].append(np.log10(hi / lo))
            if rule is not None:
                from bodil.tumor.thresholds import threshold_summary

                summary_w = threshold_summary(r[:, None] * nodes, rule)
                for name, true in (("tau_lo", truth["tau_edema"]), ("tau_up", truth["tau_core"])):
                    hits[name].append(summary_w[name]["q05"] <= true <= summary_w[name]["q95"])
        lines.append(f"| {length:g} | " + " | ".join(f"{sum(hits[k])}/{len(hits[k])}" if hits[k] else "-"
                                                     for k in hits)
                     + " | " + " / ".join(f"{np.median(decades[k]):.2f}" if decades[k] else "-" for k in decades)
                     + f" | {np.median(ess):.0f} |")
    return "\n".join(lines)


def finished_runs(cohort: str, results: str, patients: list[int]):
    """``(i, summary, idata, truth)`` of each patient whose run in ``results`` finished."""
    import arviz as az

    for i in patients:
        out = os.path.join(results, f"patient_{i:03d}", "ctv")
        if not os.path.exists(os.path.join(out, "summary.json")):
            continue
        with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
        with open(os.path.join(cohort, f"patient_{i:03d}", "truth.json"), encoding="utf-8") as f:
            truth = json.load(f)
        yield i, summary, az.from_netcdf(os.path.join(out, "posterior.nc")), truth


def growth_samples(cohort: str, results: str, patients: list[int]) -> dict:
    """Per growth parameter (``Dw``, ``rho``), per finished run: the model's samples of ``log(q T)`` (the MAP
    alone where the run did not sample it) and the truth's ``log(q T)``; and ``log(Dw / Dg)`` (no ``T``) over the
    runs that sampled the ratio."""
    out = {"Dw": ([], []), "rho": ([], []), "ratio": ([], [])}
    for _, summary, idata, truth in finished_runs(cohort, results, patients):
        post, t_model = idata.posterior, summary["settings"]["t_final"]
        for name, key in (("Dw", "dw"), ("rho", "rho")):
            q = post[name].values.ravel() if name in post else np.array([summary["map"]["theta"][name]])
            out[name][0].append(np.log(q * t_model))
            out[name][1].append(float(np.log(truth[key] * truth["t_final"])))
        if "ratio" in post:
            out["ratio"][0].append(np.log(post["ratio"].values.ravel()))
            out["ratio"][1].append(float(np.log(truth["ratio"])))
    return out


def discrepancy_table(cohort: str, calibration: str, cal_patients: list[int], results: str,
                      patients: list[int], cal_cohort: str | None = None) -> str:
    """The growth parameters' model discrepancy (``bodil.tumor.discrepancy``) fitted on the runs in
    ``calibration`` and its 90% intervals' coverage and width on those runs (in-sample and leave-one-out) and on
    the runs in ``results`` (the report set); the calibration runs are of ``cal_cohort`` (default ``cohort``)."""
    from bodil.tumor.discrepancy import fit_discrepancy, log_predictive, patient_quantiles

    cal_cohort = cal_cohort or cohort
    cal, rep = growth_samples(cal_cohort, calibration, cal_patients), growth_samples(cohort, results, patients)

    def cover(samples, truths, d):
        hits, widths = [], []
        for x, t in zip(samples, truths):
            lo, _, hi = patient_quantiles(x, d)
            hits.append(lo <= t <= hi)
            widths.append((hi - lo) / np.log(10))
        return f"{sum(hits)}/{len(hits)} ({np.median(widths):.2f})"

    def cover_and_score(samples, truths, d):
        logp = sum(log_predictive(t, x, d) for x, t in zip(samples, truths))
        return f"{cover(samples, truths, d)}, {logp:.1f}"

    lines = ["| parameter | mu (decades) | sigma (decades) | model alone, calibration | calibration | "
             "leave-one-out | report set | model alone, report set |", "|---|---|---|---|---|---|---|---|"]
    for name in ("Dw", "rho", "ratio"):
        xs, ts = cal[name]
        if len(xs) < 2:
            continue
        d = fit_discrepancy(xs, ts)
        loo = []
        for k in range(len(xs)):
            dk = fit_discrepancy(xs[:k] + xs[k + 1:], ts[:k] + ts[k + 1:])
            lo, _, hi = patient_quantiles(xs[k], dk)
            loo.append((lo <= ts[k] <= hi, (hi - lo) / np.log(10)))
        alone = type(d)(0.0, 1e-9)
        rx, rt = rep[name]
        label = "Dw / Dg" if name == "ratio" else f"{name} T"
        lines.append(f"| {label} | {d.mu / np.log(10):+.3f} | {d.sigma / np.log(10):.3f} | {cover(xs, ts, alone)} | "
                     f"{cover(xs, ts, d)} | {sum(h for h, _ in loo)}/{len(loo)} "
                     f"({np.median([w for _, w in loo]):.2f}) | "
                     + (f"{cover_and_score(rx, rt, d)} | {cover(rx, rt, alone)} |" if rx else "- | - |"))
    lines.append("\n(truths in the 90% interval, with the intervals' median width in decades; on the report set also "
                 "the summed log density of the truths' log q, a proper score; \"model alone\": the samples' own "
                 "quantiles, no discrepancy)")
    lines += ["", origin_discrepancy_table(cohort, calibration, cal_patients, results, patients, cal_cohort)]
    return "\n".join(lines)


def origin_samples(cohort: str, results: str, patients: list[int]) -> tuple[list, list, list]:
    """Per finished run: the posterior's origins in world mm ``(n, 3)``, the true origin and the box spacing."""
    xs, ts, hs = [], [], []
    for _, summary, idata, truth in finished_runs(cohort, results, patients):
        xs.append(np.stack([idata.posterior[f"{c}_world"].values.ravel() for c in "xyz"], axis=1))
        ts.append(np.asarray(truth["origin_world"], float))
        hs.append(float(summary["box"]["spacing_mm"]))
    return xs, ts, hs


def origin_discrepancy_table(cohort: str, calibration: str, cal_patients: list[int], results: str,
                             patients: list[int], cal_cohort: str | None = None) -> str:
    """The origin's model discrepancy (``bodil.tumor.discrepancy.fit_origin_discrepancy``) fitted on the runs in
    ``calibration``: the true origins in the 90% ellipsoids with and without it (in-sample, leave-one-out, report
    set), and the summed log predictive density of the truths (a proper score: higher is better)."""
    from bodil.tumor.discrepancy import (OriginDiscrepancy, fit_origin_discrepancy,
                                         origin_log_predictive, origin_region)

    cal = origin_samples(cal_cohort or cohort, calibration, cal_patients)
    rep = origin_samples(cohort, results, patients)
    if len(cal[0]) < 2:
        return "(origin: fewer than two calibration runs)"
    d, none = fit_origin_discrepancy(*cal), OriginDiscrepancy(0.0)

    def score(runs, dd):
        hits = [in_origin_region(t, origin_region(x, h, dd))[0] for x, t, h in zip(*runs)]
        logp = sum(origin_log_predictive(t, x, h, dd) for x, t, h in zip(*runs))
        return f"{sum(hits)}/{len(hits)} ({logp:.1f})"

    loo = []
    for k in range(len(cal[0])):
        dk = fit_origin_discrepancy(*[v[:k] + v[k + 1:] for v in cal])
        loo.append(in_origin_region(cal[1][k], origin_region(cal[0][k], cal[2][k], dk))[0])
    return "\n".join([
        "| parameter | a (sd per box spacing) | model alone, calibration | calibration | leave-one-out | report set | "
        "model alone, report set |", "|---|---|---|---|---|---|---|",
        f"| origin | {d.per_spacing:.4f} | {score(cal, none)} | {score(cal, d)} | {sum(loo)}/{len(loo)} | "
        + (f"{score(rep, d)} | {score(rep, none)} |" if rep[0] else "- | - |"),
        "\n(true origins in the 90% ellipsoid, with the summed log density of the truths in brackets)"])


def compare(results: str, against: str, patients: list[int], margins_mm) -> str:
    """Two ``evaluate`` runs of the same patients side by side (for example ``--inner surrogate`` against the
    forward limit): the distance of the posterior means of the origin in the reference run's posterior sd
    (``sqrt(d^T S^-1 d)``, ``S`` its covariance of the origin), the Dice of the ensemble CTVs per margin, the
    origin's coverage in each, the likelihood evaluations and their time per evaluation, and the wall times."""
    import arviz as az
    import nibabel as nib

    from bodil.tumor.ctv import dice

    head = (["patient", "mean distance (ref sd)"] + [f"Dice ensemble {m:g} mm" for m in margins_mm]
            + ["origin in 90% (run / ref)", "evaluations (run / ref)", "ms per evaluation (run / ref)",
               "wall s (run / ref)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i in patients:
        pair = [os.path.join(d, f"patient_{i:03d}") for d in (results, against)]
        if not all(os.path.exists(os.path.join(d, "row.json")) for d in pair):
            continue
        rows, origins, inner = [], [], []
        for d in pair:
            with open(os.path.join(d, "row.json"), encoding="utf-8") as f:
                rows.append(json.load(f))
            with open(os.path.join(d, "ctv", "summary.json"), encoding="utf-8") as f:
                inner.append(json.load(f)["posterior"]["inner_solves"])
            post = az.from_netcdf(os.path.join(d, "ctv", "posterior.nc")).posterior
            origins.append(np.stack([post[f"{c}_world"].values.ravel() for c in "xyz"], axis=1))
        diff = origins[0].mean(axis=0) - origins[1].mean(axis=0)
        distance = float(np.sqrt(diff @ np.linalg.solve(np.cov(origins[1].T), diff)))
        dices = []
        for m in margins_mm:
            masks = [np.asarray(nib.load(os.path.join(d, "ctv", f"ctv_ensemble_{m:g}mm.nii.gz")).dataobj) > 0
                     for d in pair]
            dices.append(f"{dice(*masks):.3f}")
        per_eval = [1e3 * s["wall_time"] / max(s["evaluations"], 1) for s in inner]
        lines.append(f"| {i} | {distance:.2f} | " + " | ".join(dices)
                     + f" | {'in' if rows[0]['origin_in_90'] else 'out'} / {'in' if rows[1]['origin_in_90'] else 'out'}"
                     + f" | {inner[0]['evaluations']} / {inner[1]['evaluations']}"
                     + f" | {per_eval[0]:.1f} / {per_eval[1]:.1f} | {rows[0]['wall_s']:.0f} / {rows[1]['wall_s']:.0f} |")
    return "\n".join(lines)


def evaluate_one(cohort: str, i: int, results: str, settings: CTVSettings) -> dict:
    """Run ``run_ctv`` on patient ``i`` and measure it against the truth (module docstring)."""
    import arviz as az

    folder, truth, anatomy, conc = load_patient(cohort, i)
    seg = load_segmentation(os.path.join(folder, "seg.nii.gz"), truth["labels"])
    out = os.path.join(results, f"patient_{i:03d}", "ctv")
    start = time.perf_counter()
    run = run_ctv(seg, anatomy, out, settings=settings, patient_id=f"cohort-{i:03d}", overwrite=True,
                  progress=False)
    wall = time.perf_counter() - start
    s = run.summary
    idata = az.from_netcdf(run.files["posterior"])
    post = idata.posterior
    x_true = np.asarray(truth["origin_world"])
    samples = np.stack([post[f"{c}_world"].values.ravel() for c in "xyz"], axis=1)
    inside, mahalanobis = in_ellipsoid(samples, x_true)
    theta = s["map"]["theta"]
    t_model = settings.t_final
    row = {"patient": i, "visible_ml": truth["visible_ml"], "labels": truth["labels"],
           "spacing": truth["spacing_mm"] or [1, 1, 1], "ratio_true": truth["ratio"],
           "map_origin_err": float(np.linalg.norm(np.asarray(s["map"]["origin_world_mm"]) - x_true)),
           "mean_origin_err": float(np.linalg.norm(samples.mean(axis=0) - x_true)),
           "origin_in_90": bool(inside), "mahalanobis": mahalanobis,
           "map_converged": bool(s["map"]["converged"]), "wall_s": wall, "box_spacing_mm": s["box"]["spacing_mm"]}
    region = s["posterior"]["origin_with_model_error"]
    if region["applied"]:
        row["origin_in_90_model_error"] = in_origin_region(x_true, region)[0]
    for name, true in (("Dw", truth["dw"] * truth["t_final"]), ("rho", truth["rho"] * truth["t_final"])):
        row[f"{name}T_err"] = theta[name] * t_model / true - 1.0
    row.update(growth_intervals(post, truth, t_model))
    integrated = s["posterior"].get("thresholds", {})
    for name, true in (("ratio", truth["ratio"]), ("tau_lo", truth["tau_edema"]), ("tau_up", truth["tau_core"])):
        if name in post:
            q = np.quantile(post[name].values.ravel(), [0.05, 0.95])
            row[f"{name}_in_90"] = bool(q[0] <= true <= q[1])
        elif name in integrated:  # marginalised: the posterior of the thresholds from the quadrature's nodes
            row[f"{name}_in_90"] = bool(integrated[name]["q05"] <= true <= integrated[name]["q95"])
            row[f"{name}_mean"] = integrated[name]["mean"]
        if name in theta:
            row[f"{name}_map"] = theta[name]
    row["cover"], row["cover_all"] = coverage(out, truth, anatomy, seg, conc, settings.margins_mm)
    row["min_map_concentration"] = float(load_nifti(os.path.join(out, "map_concentration.nii.gz"), what="u").data.min())
    return row


def growth_intervals(post, truth: dict, t_model: float) -> dict:
    """For ``Dw T`` and ``rho T`` where sampled: whether the 90% interval holds the truth (``*_in_90``) and its
    width in decades, ``log10(q95 / q05)`` (``*_decades``; the priors span 4 and 3 decades): coverage bought with
    an interval as wide as the prior says nothing."""
    out = {}
    for name, true in (("Dw", truth["dw"] * truth["t_final"]), ("rho", truth["rho"] * truth["t_final"])):
        if name in post:
            q = np.quantile(post[name].values.ravel() * t_model, [0.05, 0.95])
            out[f"{name}T_in_90"] = bool(q[0] <= true <= q[1])
            out[f"{name}T_decades"] = float(np.log10(q[1] / q[0]))
    return out


def invisible_infiltration(truth: dict, anatomy, conc) -> np.ndarray:
    """The brain voxels whose true concentration is infiltrated but below the visible edema: ``0.01 <= u <
    tau_edema``."""
    return (conc >= 0.01) & (conc < truth["tau_edema"]) & anatomy.brain


def coverage(out: str, truth: dict, anatomy, seg, conc, margins_mm) -> tuple[dict, dict]:
    """Per margin, the share of the invisible infiltration (true ``0.01 <= u < tau_edema`` in the brain) inside
    the standard CTV, the MAP model CTV and the ensemble CTV of the run in ``out``; and the same for all of the
    infiltration, visible or not (true ``u >= 0.01`` in the brain or the segmented tumour). At equal volume a
    model CTV that covers visible edema the plan leaves out has less volume left for the invisible part: the
    second measure counts both."""
    invisible = invisible_infiltration(truth, anatomy, conc)
    infiltrated = (conc >= 0.01) & (anatomy.brain | seg.tumor)
    cover, cover_all = {}, {}
    for m in margins_mm:
        tag = f"{m:g}mm"
        std = load_nifti(os.path.join(out, f"ctv_standard_{tag}.nii.gz"), what="ctv").data > 0
        mp = load_nifti(os.path.join(out, f"ctv_model_map_{tag}.nii.gz"), what="ctv").data > 0
        ens = ensemble_ctv(out, tag, seg, anatomy, int(std.sum()))
        cover[tag] = [float(x[invisible].mean()) for x in (std, mp, ens)]
        cover_all[tag] = [float(x[infiltrated].mean()) for x in (std, mp, ens)]
    return cover, cover_all


def rescore(cohort: str, results: str, patients: list[int], margins_mm) -> None:
    """Recompute the coverage and the growth parameters' intervals of finished rows from their output files
    (after a change of the measure)."""
    import arviz as az

    for i in patients:
        path = os.path.join(results, f"patient_{i:03d}", "row.json")
        if not os.path.exists(path):
            continue
        folder, truth, anatomy, conc = load_patient(cohort, i)
        seg = load_segmentation(os.path.join(folder, "seg.nii.gz"), truth["labels"])
        with open(path, encoding="utf-8") as f:
            row = json.load(f)
        out = os.path.join(results, f"patient_{i:03d}", "ctv")
        row["cover"], row["cover_all"] = coverage(out, truth, anatomy, seg, conc, margins_mm)
        with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
            t_model = json.load(f)["settings"]["t_final"]
        row.update(growth_intervals(az.from_netcdf(os.path.join(out, "posterior.nc")).posterior, truth, t_model))
        write_json(path, row)


def where_volume_goes(cohort: str, results: str, patients: list[int], margins_mm) -> str:
    """Per patient and margin, where the equal-volume CTVs spend the plan's volume: the plan's voxels, the visible
    tumour (segmented core and edema), the part of it outside the plan and inside the ensemble CTV, the invisible
    infiltration inside the plan and inside the ensemble CTV; and the share of the invisible infiltration covered by
    the plan, the ensemble CTV and the CTV of the ``N`` voxels of highest posterior mean concentration
    (``posterior_mean.nii.gz``, ties by distance to the core), with the count of patients where each covers at
    least the plan's share."""
    head = ("| patient | margin | plan | visible | visible outside plan | visible in ensemble | invisible in plan / "
            "ensemble | share plan / ensemble / top E[u] |")
    lines, passes = [head, "|" + "---|" * (head.count("|") - 1)], {f"{m:g}mm": [0, 0, 0] for m in margins_mm}
    for i in patients:
        out = os.path.join(results, f"patient_{i:03d}", "ctv")
        if not os.path.exists(os.path.join(out, "posterior_mean.nii.gz")):
            continue
        folder, truth, anatomy, conc = load_patient(cohort, i)
        seg = load_segmentation(os.path.join(folder, "seg.nii.gz"), truth["labels"])
        invisible = invisible_infiltration(truth, anatomy, conc)
        mean = load_nifti(os.path.join(out, "posterior_mean.nii.gz"), what="u").data
        tie = core_distance(seg.core, anatomy.spacing)
        for m in margins_mm:
            tag = f"{m:g}mm"
            std = load_nifti(os.path.join(out, f"ctv_standard_{tag}.nii.gz"), what="ctv").data > 0
            ens = ensemble_ctv(out, tag, seg, anatomy, int(std.sum()))
            top = model_ctv(mean, anatomy.brain | seg.core, int(std.sum()), tie_break=tie)
            share = [float(x[invisible].mean()) if invisible.any() else 1.0 for x in (std, ens, top)]
            passes[tag][0] += 1
            passes[tag][1] += share[1] >= share[0]
            passes[tag][2] += share[2] >= share[0]
            counts = [int(x.sum()) for x in (std, seg.tumor, seg.tumor & ~std, seg.tumor & ens, std & invisible,
                                             ens & invisible)]
            lines.append(f"| {i} | {tag} | " + " | ".join(map(str, counts[:4])) + f" | {counts[4]} / {counts[5]} | "
                         f"{share[0]:.3f} / {share[1]:.3f} / {share[2]:.3f} |")
    lines.append("")
    lines += [f"{tag}: covers at least the plan's share of the invisible infiltration: ensemble {e}/{n}, top E[u] "
              f"{t}/{n}" for tag, (n, e, t) in passes.items()]
    return "\n".join(lines)


def ensemble_ctv(out: str, tag: str, seg, anatomy, n_voxels: int) -> np.ndarray:
    """The run's equal-volume ensemble CTV; for runs made before bodil wrote ``ctv_ensemble_*``, the same
    top-``n`` of the CTV probability (ties by distance to the core) computed from ``ctv_probability_*``."""
    path = os.path.join(out, f"ctv_ensemble_{tag}.nii.gz")
    if os.path.exists(path):
        return load_nifti(path, what="ctv").data > 0
    prob = load_nifti(os.path.join(out, f"ctv_probability_{tag}.nii.gz"), what="ctv").data
    return model_ctv(prob, anatomy.brain | seg.core, n_voxels, tie_break=core_distance(seg.core, anatomy.spacing))


def evaluate(cohort: str, results: str, patients: list[int], settings: CTVSettings) -> list[dict]:
    rows = []
    for i in patients:
        path = os.path.join(results, f"patient_{i:03d}", "row.json")
        if not os.path.exists(path):
            row = evaluate_one(cohort, i, results, settings)
            write_json(path, row)
            print(f"patient {i}: {row['wall_s']:.0f} s", file=sys.stderr, flush=True)
        with open(path, encoding="utf-8") as f:
            rows.append(json.load(f))
    return rows


def table(rows: list[dict]) -> str:
    margins = list(rows[0]["cover"])
    head = ("| patient | ml | labels | spacing | Dw/Dg | origin err MAP / mean (mm) | in 90% | Mahalanobis | "
            "Dw T err | rho T err | MAP conv. | " + " | ".join(f"cover {m} std/MAP/ens" for m in margins)
            + " | min u | s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        def flag(key):
            return "" if key not in r else (" (in 90%)" if r[key] else " (out)")
        lines.append(
            f"| {r['patient']} | {r['visible_ml']:.0f} | {r['labels'][-4:]} | {'x'.join(f'{s:g}' for s in r['spacing'])} "
            f"| {r['ratio_true']:.0f} | {r['map_origin_err']:.1f} / {r['mean_origin_err']:.1f} | "
            f"{'yes' if r['origin_in_90'] else 'no'} | {r['mahalanobis']:.1f} | {r['DwT_err']:+.2f}{flag('DwT_in_90')} | "
            f"{r['rhoT_err']:+.2f}{flag('rhoT_in_90')} | {'yes' if r['map_converged'] else 'no'} | "
            + " | ".join("/".join(f"{c:.2f}" for c in r["cover"][m]) for m in margins)
            + f" | {r['min_map_concentration']:.3f} | {r['wall_s']:.0f} |")
    n = len(rows)
    lines += ["", f"{n} patients:",
              f"- origin in the 90% credible ellipsoid: {sum(r['origin_in_90'] for r in rows)}/{n}; MAP origin error "
              f"median {np.median([r['map_origin_err'] for r in rows]):.1f} mm, worst "
              f"{max(r['map_origin_err'] for r in rows):.1f} mm"
              + (f"; with the model's error: {sum(r['origin_in_90_model_error'] for r in rows)}/{n}"
                 if all("origin_in_90_model_error" in r for r in rows) else ""),
              f"- Dw T error median {np.median([r['DwT_err'] for r in rows]):+.2f} (range "
              f"{min(r['DwT_err'] for r in rows):+.2f} to {max(r['DwT_err'] for r in rows):+.2f}); rho T error median "
              f"{np.median([r['rhoT_err'] for r in rows]):+.2f}",
              f"- MAP converged: {sum(r['map_converged'] for r in rows)}/{n}; min MAP concentration "
              f"{min(r['min_map_concentration'] for r in rows):.3g}"]
    for key in ("DwT_in_90", "rhoT_in_90", "ratio_in_90", "tau_lo_in_90", "tau_up_in_90"):
        have = [r[key] for r in rows if key in r]
        if have:
            width = [r[key[:-6] + "_decades"] for r in rows if key[:-6] + "_decades" in r]
            wide = (f" (interval width median {np.median(width):.2f} decades, range {min(width):.2f}-{max(width):.2f})"
                    if width else "")
            lines.append(f"- truth of {key[:-6]} in its 90% interval: {sum(have)}/{len(have)}{wide}")
    for m in margins:
        ens = sum(r["cover"][m][2] >= r["cover"][m][0] for r in rows)
        mp = sum(r["cover"][m][1] >= r["cover"][m][0] for r in rows)
        lines.append(f"- {m}: ensemble CTV covers at least the standard plan's share in {ens}/{n}, MAP model CTV "
                     f"in {mp}/{n}")
        have = [r["cover_all"][m] for r in rows if "cover_all" in r]
        if have:
            ens = sum(c[2] >= c[0] for c in have)
            mp = sum(c[1] >= c[0] for c in have)
            lines.append(f"  - of all infiltration (u >= 0.01, visible or not): ensemble CTV {ens}/{len(have)}, MAP "
                         f"model CTV {mp}/{len(have)}")
    lines.append(f"- wall time median {np.median([r['wall_s'] for r in rows]):.0f} s, max "
                 f"{max(r['wall_s'] for r in rows):.0f} s")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make", help="grow the cohort (resumable)")
    mk.add_argument("--out", required=True)
    mk.add_argument("--patients", type=int, default=50)
    mk.add_argument("--seed", type=int, default=MAKE_SEED)
    ev = sub.add_parser("evaluate", help="run bodil's pipeline on the cohort and print the table (resumable)")
    ev.add_argument("--cohort", required=True)
    ev.add_argument("--against", metavar="RESULTS",
                    help="compare the runs in --results with those in this folder (same patients) and stop")
    ev.add_argument("--results", required=True)
    ev.add_argument("--patients", type=int, nargs="+", help="patient indices (default: all)")
    ev.add_argument("--grid", type=int)
    ev.add_argument("--inner", choices=["forward", "odil", "surrogate"],
                    help="CTVSettings.inner, how BASIS evaluates log p(theta | D) (default: forward)")
    ev.add_argument("--max-spacing", type=float, metavar="MM", help="CTVSettings.max_spacing_mm (default: none)")
    ev.add_argument("--samples", type=int)
    ev.add_argument("--sample", nargs="+", help="CTVSettings.posterior_parameters (default: CTVSettings')")
    ev.add_argument("--fit", nargs="+", help="CTVSettings.map_parameters (default: CTVSettings')")
    ev.add_argument("--error-correlation", type=float, help="CTVSettings.error_correlation_mm (default: CTVSettings')")
    ev.add_argument("--seed-dt2", type=float,
                    help="CTVSettings.seed_dt2, the seed's Dt^2 in mm^2 (default: CTVSettings')")
    ev.add_argument("--thresholds", choices=["marginalised", "fixed"], help="CTVSettings.thresholds (default: "
                    "marginalised where possible)")
    ev.add_argument("--reweight", type=float, nargs="+", metavar="L",
                    help="print the coverage at these error-correlation lengths (mm) by reweighting finished runs "
                         "made at a longer one, and stop")
    ev.add_argument("--discrepancy-from", metavar="RESULTS",
                    help="fit the growth parameters' and the origin's model discrepancy on the runs in this folder "
                         "(patients --calibration-patients), print its coverage there and on --results, and stop")
    ev.add_argument("--calibration-patients", type=int, nargs="+", default=list(range(20)),
                    help="patients of --discrepancy-from (default: 0-19)")
    ev.add_argument("--calibration-cohort", metavar="COHORT",
                    help="the cohort of --discrepancy-from's runs (default: --cohort)")
    ev.add_argument("--where-volume-goes", action="store_true",
                    help="for finished runs, count where the plan and the ensemble CTV spend their volume (visible "
                         "tumour, invisible infiltration) and score the CTV of the highest posterior mean "
                         "concentration, and stop")
    ev.add_argument("--rescore", action="store_true",
                    help="recompute the coverage of the finished rows from their files, then print the table")
    args = ap.parse_args(argv)
    if args.command == "make":
        make(args.out, args.patients, args.seed)
        return
    import jax

    jax.config.update("jax_enable_x64", True)
    patients = args.patients
    if patients is None:
        with open(os.path.join(args.cohort, "manifest.json"), encoding="utf-8") as f:
            patients = list(range(json.load(f)["patients"]))
    over = {k: v for k, v in (("grid", args.grid), ("num_samples", args.samples), ("max_spacing_mm", args.max_spacing),
                              ("error_correlation_mm", args.error_correlation), ("inner", args.inner),
                              ("thresholds", args.thresholds), ("seed_dt2", args.seed_dt2))
            if v is not None}
    if args.fit:
        over["map_parameters"] = tuple(args.fit)
    if args.sample:
        over["posterior_parameters"] = tuple(args.sample)
    settings = CTVSettings(**over)  # not replaced: the unset fitted and sampled parameters follow --inner, --fit
    if args.against:
        print(compare(args.results, args.against, patients, settings.margins_mm))
        return
    if args.reweight:
        print(reweighted_coverage(args.cohort, args.results, patients, args.reweight))
        return
    if args.discrepancy_from:
        print(discrepancy_table(args.cohort, args.discrepancy_from, args.calibration_patients, args.results,
                                patients, args.calibration_cohort))
        return
    if args.where_volume_goes:
        print(where_volume_goes(args.cohort, args.results, patients, settings.margins_mm))
        return
    if args.rescore:
        rescore(args.cohort, args.results, patients, settings.margins_mm)
    rows = evaluate(args.cohort, args.results, patients, settings)
    print(f"# cohort {args.cohort}: {len(rows)} patients; grid {settings.grid}^3 x {settings.time_points}, "
          f"{settings.num_samples} samples")
    print(table(rows))


if __name__ == "__main__":
    main()
