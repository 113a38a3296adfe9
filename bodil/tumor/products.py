"""The products of a tumour run from its MAP and posterior samples: the CTV ensemble on the input grid, the
NIfTI maps and ``posterior.nc``, the summary (``summary.json``) and the report's content.

Each function is one stage of ``bodil.tumor.run_ctv`` after sampling; they read the ``MapFit`` and the
``InferenceData`` of ``bodil.tumor.pipeline`` and write only into the run's temporary folder.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any

import numpy as np

from ..io import save_nifti
from ..progress import ProgressMeter, as_meter
from .discrepancy import growth_with_model_error, origin_with_model_error
from .ensemble import CTVEnsemble, ctv_ensemble
from .model import ORIGIN, UNITS, threshold_priors
from .report import ReportContent
from .report_content import run_assumptions
from .thresholds import THRESHOLDS, threshold_quadrature, threshold_summary


@dataclasses.dataclass
class PosteriorCTVs:
    """The posterior on the input grid: the CTV ensemble, the MAP, mean and standard deviation of the
    concentration (clipped to [0, 1]) and the initial positions in world mm (samples and MAP)."""

    ensemble: CTVEnsemble
    u_map: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    origin_world: np.ndarray
    map_origin_world: np.ndarray


def quantiles(x) -> dict:
    """Mean, standard deviation and the 5/50/95% quantiles of ``x``."""
    x = np.asarray(x, float)
    return {"mean": float(x.mean()), "sd": float(x.std()), "q05": float(np.quantile(x, 0.05)),
            "q50": float(np.quantile(x, 0.5)), "q95": float(np.quantile(x, 0.95))}


def versions() -> dict:
    """Installed versions of bodil and the packages its numbers depend on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("bodil", "jax", "numpyro", "nibabel", "numpy", "scipy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def final_particles_converged(idata) -> float:
    """Fraction of the final particles whose inner solve converged (each particle carries its flag; 1 where
    the evaluations have no inner solve)."""
    if "converged" not in idata.sample_stats:
        return 1.0
    return float(np.mean(idata.sample_stats["converged"].values))


def posterior_ctvs(seg, anatomy, s, mf, idata, progress: bool | ProgressMeter = False) -> PosteriorCTVs:
    """Every sample's concentration brought to the input grid (clipped to [0, 1]) and streamed through
    ``ctv_ensemble``, with the voxelwise mean and standard deviation accumulated on the way. Outside the box
    every sample is 0, so the samples travel as the box's window of the input grid (``ctv_ensemble(window=)``)."""
    crop, theta_map = mf.crop, mf.theta
    fields = np.asarray(idata.posterior["field"].values).reshape((-1,) + crop.shape)
    origin_box = np.stack([np.asarray(idata.posterior[c].values).ravel() if c in s.posterior_parameters
                           else np.full(fields.shape[0], theta_map[c]) for c in ORIGIN], axis=1)
    window = crop.input_window()
    mean = np.zeros(seg.shape)
    sq = np.zeros(seg.shape)

    def stream():
        for f in as_meter(progress).track(fields, "CTV ensemble"):
            block = np.clip(crop.to_input_window(f)[1], 0.0, 1.0)
            mean[window] += block
            sq[window] += block * block
            yield block

    u_map = np.clip(crop.to_input(np.asarray(mf.field[-1])), 0.0, 1.0)
    ens = ctv_ensemble(stream(), seg.core, anatomy.brain | seg.tumor, anatomy.spacing, margins_mm=s.margins_mm,
                       map_concentration=u_map, seed=s.seed, window=window)
    n = fields.shape[0]
    mean /= n
    std = np.sqrt(np.maximum(sq / n - mean**2, 0.0))
    return PosteriorCTVs(ens, u_map, mean, std, crop.box_to_world(origin_box),
                         crop.box_to_world(np.array([theta_map[c] for c in ORIGIN])))


def write_products(tmp: str, seg, s, mf, idata, ctvs: PosteriorCTVs) -> dict:
    """The NIfTI maps (on the segmentation's grid and affine) and ``posterior.nc`` in ``tmp``; their paths."""
    files = {}

    def nifti(name, data, dtype=np.float32):
        files[name] = save_nifti(os.path.join(tmp, f"{name}.nii.gz"), data, seg.affine, dtype=dtype)

    nifti("map_concentration", ctvs.u_map)
    nifti("posterior_mean", ctvs.mean)
    nifti("posterior_std", ctvs.std)
    for m in s.margins_mm:
        tag = f"{m:g}mm"
        nifti(f"ctv_probability_{tag}", ctvs.ensemble[m].probability)
        nifti(f"ctv_standard_{tag}", ctvs.ensemble[m].standard, np.uint8)
        nifti(f"ctv_ensemble_{tag}", ctvs.ensemble[m].ensemble, np.uint8)
        nifti(f"ctv_model_map_{tag}", ctvs.ensemble[m].map_mask, np.uint8)
    for axis, c in enumerate("xyz"):
        idata.posterior[f"{c}_world"] = (("chain", "draw"), ctvs.origin_world[:, axis].reshape(1, -1))
    idata.attrs["box_affine"] = np.asarray(mf.crop.affine).ravel().tolist()
    idata.attrs["note"] = ("field = concentration at the imaging time on the box grid (affine box_affine); "
                           "x0, y0, z0 in mm of the box frame, x/y/z_world in world (scanner) mm")
    files["posterior"] = os.path.join(tmp, "posterior.nc")
    idata.to_netcdf(files["posterior"])
    return files


def summarise(seg, anatomy, s, mf, idata, ctvs: PosteriorCTVs, inner: dict, patient_id: str, inputs: dict,
              truth) -> dict:
    """The content of ``summary.json``, its ``notes`` included (what the reader must know first)."""
    crop, status, theta_map, sbox = mf.crop, mf.status, mf.theta, mf.surrogate_box
    voxel_cm3 = float(np.prod(anatomy.spacing)) / 1e3
    origin_world = ctvs.origin_world
    summary = {
        "patient_id": patient_id,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "inputs": inputs,
        "label_convention": seg.convention.name,
        "settings": {**dataclasses.asdict(s), "seed_dt2": s.effective_seed_dt2},  # the value used
        "box": {"side_mm": crop.side_mm, "spacing_mm": crop.spacing_mm, "affine": np.asarray(crop.affine).tolist()},
        "volumes_cm3": {"core": float(seg.core.sum() * voxel_cm3), "edema": float(seg.edema.sum() * voxel_cm3)},
        "map": {"theta": theta_map, "origin_world_mm": ctvs.map_origin_world.tolist(), **status},
        "posterior": {
            "parameters": list(s.posterior_parameters),
            "intervals": sampled_intervals(idata, s.posterior_parameters),
            "origin_world_mm": {c: quantiles(origin_world[:, i]) for i, c in enumerate("xyz")},
            "origin_spread_mm": float(np.sqrt(np.trace(np.cov(origin_world.T)))),
            "origin_with_model_error": origin_with_model_error(s, origin_world, crop.spacing_mm),
            "likelihood_weight": float(idata.attrs["likelihood_weight"]),
            "log_evidence": float(idata.attrs.get("log_evidence", np.nan)),  # of the tempered likelihood
            "thresholds": threshold_posterior(s, idata),
            "growth_with_model_error": growth_with_model_error(
                s, theta_map, {n: idata.posterior[n].values.ravel() for n in ("Dw", "rho") if n in idata.posterior}),
            "inner_solves": inner,
        },
        "ctv": ctvs.ensemble.table(),
        "truth": truth or {},
    }
    notes = []
    if not status["converged"]:
        notes.append(f"The MAP solve ({status['method']}) did not reach its tolerance ({status['message']}); the "
                     f"MAP concentration and MAP model CTVs come from an unconverged fit.")
    thresholds = summary["posterior"]["thresholds"]
    if thresholds.get("quadrature_error_nats", 0.0) > 0.1:
        notes.append(f"The integral over the visibility thresholds is {thresholds['quadrature_error_nats']:.2g} nats "
                     f"from the rule with twice the nodes at the MAP; raise CTVSettings.threshold_nodes.")
    final = final_particles_converged(idata)
    summary["posterior"]["final_samples_converged"] = final
    if final < 1.0:
        notes.append(f"{100 * (1 - final):.0f}% of the final samples come from inner solves that stopped at the "
                     f"iteration cap ({s.inner_iterations}); raise CTVSettings.inner_iterations.")
    if sbox is not None:
        in_range = sbox.in_range(theta_map)
        summary["surrogate"] = {"crop_side_mm": sbox.crop.side_mm, "spacing_mm": sbox.surrogate.spacing_mm,
                                "theta_map": [float(v) for v in sbox.surrogate_theta(theta_map)],
                                "in_training_range": in_range, "weights": sbox.surrogate.info.get("dataset", {})}
        if not in_range:
            notes.append("The MAP lies outside the neural surrogate's training ranges; its predictions there are "
                         "extrapolations. Prefer inner='forward'.")
    summary["notes"] = notes
    return summary


def threshold_posterior(s, idata) -> dict:
    """How the posterior treated the visibility thresholds (``CTVSettings.threshold_treatment``) and, when it
    integrated them out, their posterior (mixture over the samples of the nodes' masses: mean, sd and
    5/50/95% quantiles on the nodes) and prior ranges."""
    treatment = s.threshold_treatment
    if treatment != "marginalised":
        return {"treatment": treatment}
    priors = threshold_priors()
    quad = threshold_quadrature(priors, int(idata.attrs["threshold_nodes"]))
    return {"treatment": treatment, "nodes": quad.size,
            "quadrature_error_nats": float(idata.attrs["threshold_quadrature_error"]),
            "prior": {n: [float(priors[n].low), float(priors[n].high)] for n in THRESHOLDS},
            **threshold_summary(np.asarray(idata.posterior["threshold_weights"].values), quad)}


def sampled_intervals(idata, names) -> dict:
    """Mean, sd and 5/50/95% quantiles of each sampled parameter other than the origin (model units)."""
    return {n: quantiles(idata.posterior[n].values.ravel()) for n in names if n not in ORIGIN}


def _parameter_rows(model, theta_map: dict, ctvs: PosteriorCTVs, intervals: dict) -> list[dict]:
    """The report's parameter table: MAP values, the posterior of the initial position in world mm and the 90%
    intervals of the other sampled parameters."""
    rows = []
    names = list(model.posterior.params.priors) + [n for n in intervals if n not in model.posterior.params.priors]
    for name in names:
        row = {"name": name, "unit": UNITS.get(name, ""), "map": theta_map[name]}
        if name in intervals:
            row.update({k: intervals[name][k] for k in ("mean", "q05", "q95")})
        if name in ORIGIN:
            axis = ORIGIN.index(name)
            q = quantiles(ctvs.origin_world[:, axis])
            row = {"name": f"{'xyz'[axis]} (world)", "unit": "mm", "map": float(ctvs.map_origin_world[axis]),
                   "mean": q["mean"], "q05": q["q05"], "q95": q["q95"]}
        rows.append(row)
    return rows


def report_content(seg, anatomy, s, mf, idata, ctvs: PosteriorCTVs, summary: dict, patient_id: str,
                   inputs: dict, truth) -> ReportContent:
    """What the clinician report shows: the run's settings, the CTVs, the parameters and the notes."""
    run: dict[str, Any] = {
        "grid": f"{mf.crop.n}^3 x {s.time_points} (box side {mf.crop.side_mm:.1f} mm, {mf.crop.spacing_mm:.2f} mm)",
        "samples": s.num_samples, "seed": s.seed, "labels": seg.convention.name, "T (days)": s.t_final,
        "tumour at t = 0": f"Gaussian seed, Dt^2 = {s.effective_seed_dt2:g} mm^2", "likelihood": s.likelihood,
        "MAP": (f"{mf.status['method']}, " + ("converged" if mf.status["converged"] else "NOT converged")
                + f" ({mf.status['message']})"),
        "likelihood weight": (f"{idata.attrs['likelihood_weight']:.3g} (errors correlated over "
                              f"{s.error_correlation_mm:g} mm)" if s.error_correlation_mm else "1 (untempered)"),
        **{f"input {k}": v for k, v in inputs.items()},
        "created": summary["created"], "bodil": summary["versions"]["bodil"], "jax": summary["versions"]["jax"]}
    origin_truth = None
    if truth and "origin_world" in truth:
        origin_truth = np.asarray(truth["origin_world"], float)
    growth, origin = summary["posterior"]["growth_with_model_error"], summary["posterior"]["origin_with_model_error"]
    parameters = (_parameter_rows(mf.model, mf.theta, ctvs, _report_intervals(summary)) + _origin_rows(origin, ctvs)
                  + _growth_rows(growth))
    return ReportContent.from_ensemble(
        ctvs.ensemble, patient_id=patient_id, run=run, tissue=anatomy.tissue, classes=seg.classes,
        affine=seg.affine, origin_samples=ctvs.origin_world, parameters=parameters,
        notes=summary["notes"], origin_truth=origin_truth, origin_map=ctvs.map_origin_world,
        assumptions=run_assumptions(mf.model.posterior.params.fixed, s.map_parameters, s.posterior_parameters,
                                    summary["posterior"]["thresholds"], growth, origin))


def _origin_rows(origin: dict, ctvs: PosteriorCTVs) -> list[dict]:
    """Report rows of the initial position with the model's error included (``origin_with_model_error``): MAP,
    mean and the 90% interval per axis, world mm."""
    if not origin["applied"]:
        return []
    return [{"name": f"{c} (world), model error incl.", "unit": "mm", "map": float(ctvs.map_origin_world[k]),
             "mean": origin["mean"][k], "q05": origin["axes"][c]["lower"], "q95": origin["axes"][c]["upper"]}
            for k, c in enumerate("xyz")]


def _growth_rows(growth: dict) -> list[dict]:
    """Report rows of ``Dw T`` and ``rho T`` with the model's error included (``growth_with_model_error``):
    MAP, mean and the 90% interval."""
    if not growth["applied"]:
        return []
    rows = []
    for name in ("Dw", "rho"):
        g = growth[f"{name}_T"]
        rows.append({"name": f"{name} T, model error incl.", "unit": g["unit"], "map": g["map"], "mean": g["mean"],
                     "q05": g["lower"], "q95": g["upper"]})
    return rows


def _report_intervals(summary: dict) -> dict:
    """The sampled parameters' intervals and, when marginalised, the thresholds' posterior."""
    thresholds = summary["posterior"]["thresholds"]
    extra = {n: thresholds[n] for n in THRESHOLDS if n in thresholds}
    return {**summary["posterior"]["intervals"], **extra}
