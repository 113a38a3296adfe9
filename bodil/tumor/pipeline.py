"""From a tumour segmentation and tissue maps to a posterior ensemble of clinical target volumes.

The stages (Amoudruz et al. 2025, sec. 3.4), each reported to the ``logging`` logger ``bodil.tumor.pipeline``
when it starts:

1. inputs: the segmentation's classes (0 healthy, 1 edema, 2 core) and the tissue maps, checked to share one
   grid and affine;
2. box: a cube ``box_scale`` (1.5) times the tumour's largest extent, resampled to ``grid^3`` points;
3. MAP: the mode of the forward limit, ``max_theta log p(D | u_FK(theta)(T), theta) + log p(theta)`` over
   ``(Dw, rho, x0, y0, z0)`` (Nelder-Mead on explicit Fisher-Kolmogorov runs, to its tolerance), whose field is
   the explicit solution (in ``[0, 1]``). Optionally (``CTVSettings.map_iterations``; by default with
   ``inner="odil"``) ODIL refines it: the GliODIL posterior (``bodil.tumor.model``) maximised jointly over the
   field and the parameters by Gauss-Newton from the forward fit, kept only when it converges;
4. posterior: BASIS (``beta = 0.7``, ``gamma = 1.5``, ``l_max = 3``; not Amoudruz et al.'s (2025) ``beta = 0.2``,
   ``l_max = 1``, see ``CTVSettings``) on the mode approximation of ``p(x0, y0, z0 | D)`` with the
   other parameters at their MAP values (by default its
   ``lambda_PDE -> infinity`` limit, a forward run per evaluation; ``CTVSettings.inner``), its likelihood
   counting one independent observation per ``(25 mm)^3`` rather than per voxel
   (``CTVSettings.error_correlation_mm``) and integrated over the visibility thresholds' prior
   (``CTVSettings.thresholds``, ``bodil.tumor.thresholds``); each sample keeps its concentration at the
   imaging time;
5. CTVs: for each margin (10, 15, 20 mm) the standard plan and every sample's model CTV of equal volume,
   on the input grid (``bodil.tumor.ctv``, ``bodil.tumor.ensemble``, streamed by ``bodil.tumor.products``);
6. files (``bodil.tumor.products``): NIfTI maps, ``posterior.nc`` (InferenceData), ``summary.json`` and the
   report (PDF, HTML), all written into a temporary folder that replaces ``out`` only when everything is complete.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..io import InputError, Volume, atomic_directory, check_same_grid, remove_stale_temporaries, write_json
from ..progress import ProgressMeter
from .anatomy import Anatomy, crop_around
from .box import side_to_contain
from .checkpoint import check_checkpoint, fingerprint
from .model import ForwardLikelihood, fit_forward, initial_guess, threshold_priors, tumor_model
from .products import posterior_ctvs, report_content, summarise, write_products
from .report import write_report
from .segmentation import Segmentation, load_segmentation
from .settings import CTVSettings
from .thresholds import threshold_quadrature

log = logging.getLogger(__name__)


@dataclasses.dataclass
class CTVRun:
    """What ``run_ctv`` produced: the output folder, its files and the summary written to ``summary.json``."""

    out: str
    files: dict
    summary: dict


def _x64():
    enable = getattr(jax, "enable_x64", None)
    if enable is None:  # older jax
        from jax.experimental import enable_x64 as enable
    return enable(True)


def run_ctv(segmentation: Segmentation | str, anatomy: Anatomy, out, *, labels="brats2021",
            settings: CTVSettings = CTVSettings(), patient_id: str | None = None, truth: dict | None = None,
            inputs: dict | None = None, overwrite: bool = False, resume: bool = False,
            progress: bool | ProgressMeter = True, registration=None) -> CTVRun:
    """Infer the tumour's growth with uncertainty and write the CTV ensemble and the report into ``out``.

    Args:
        segmentation: a ``Segmentation`` or the path of a segmentation NIfTI.
        anatomy: the tissue maps on the segmentation's grid (``load_tissue``, ``mni152``).
        out: output folder (must not exist or be empty unless ``overwrite``).
        labels: the label convention when ``segmentation`` is a path (``"brats2021"``, ``"brats2023"``, a
            mapping).
        settings: grid, samples, seed... (``CTVSettings``, checked when made).
        patient_id: printed on the report (default: the segmentation's file name).
        truth: optional known parameters (synthetic patients: ``origin_world`` in mm) shown in the report.
        inputs: optional ``{name: path}`` of the input files, recorded in the summary.
        overwrite: replace a non-empty ``out``.
        resume: continue an interrupted run from its checkpoint. While BASIS runs, its state after every stage
            and every finished evaluation are saved in ``<out>.checkpoint/`` (next to ``out``), which is
            deleted when the run completes. After a crash or a ``kill -9``, the same call with ``resume=True``
            (``bodil ctv ... --resume``) continues and writes the same result as an uninterrupted run; the
            inputs and settings must be the same (checked). Without ``resume`` an existing checkpoint is an
            error, so that hours of sampling are never thrown away by accident.
        progress: progress bars of the MAP, BASIS and the CTV ensemble: ``True`` (tqdm), ``False`` or a
            ``bodil.progress`` meter. The stages are reported to the ``logging`` logger
            ``bodil.tumor.pipeline`` (the ``bodil`` command shows them on stderr).
        registration: optional ``bodil.tumor.registration_qc.NativeTissue`` that made ``anatomy`` from the
            patient's T1: its maps and QC figure go into ``out``, its similarity into ``summary.json``
            (``registration``) and its warnings into the notes.

    Returns:
        ``CTVRun`` with the folder, the file paths and the summary.

    Raises:
        InputError: bad inputs (different grids, empty tumour, ...) or an existing ``out``; nothing is written.
    """
    if not isinstance(settings, CTVSettings):
        raise TypeError(f"run_ctv: settings must be a CTVSettings, got {type(settings).__name__}.")
    if not isinstance(segmentation, Segmentation):
        segmentation = load_segmentation(segmentation, labels)
    anatomy.validate()
    check_same_grid({"segmentation": Volume(segmentation.classes, segmentation.affine, segmentation.path),
                     "tissue maps": Volume(anatomy.wm, anatomy.affine, None)})
    if patient_id is None:
        patient_id = os.path.basename(segmentation.path or "patient").split(".nii")[0]
    final = os.path.abspath(os.fspath(out))
    checkpoint, stamp = final + ".checkpoint", fingerprint(segmentation, anatomy, settings)
    resuming = check_checkpoint(checkpoint, stamp, resume)
    if resuming:
        remove_stale_temporaries(final)  # the half-built output folder of the killed run
    with _x64(), atomic_directory(out, overwrite=overwrite) as tmp:
        started = time.perf_counter()
        if not resuming:
            os.makedirs(checkpoint, exist_ok=True)
            write_json(os.path.join(checkpoint, "run.json"), stamp)
        else:
            log.info(f"resuming from the checkpoint {checkpoint}")
        try:
            result = _run(segmentation, anatomy, tmp, settings, patient_id, truth, inputs or {}, progress,
                          os.path.join(checkpoint, "basis.pkl"), resuming, registration)
        except InputError:
            shutil.rmtree(checkpoint, ignore_errors=True)  # nothing worth keeping: the inputs were refused
            raise
        except BaseException:
            log.warning("the run stopped; continue it with resume=True (bodil ctv ... --resume) from the "
                        "checkpoint %s", checkpoint)
            raise
        result["summary"]["wall_time_s"] = round(time.perf_counter() - started, 1)
        write_json(os.path.join(tmp, "summary.json"), result["summary"])
    shutil.rmtree(checkpoint, ignore_errors=True)
    files = {k: os.path.join(final, os.path.basename(v)) for k, v in result["files"].items()}
    files["summary"] = os.path.join(final, "summary.json")
    return CTVRun(final, files, result["summary"])


@dataclasses.dataclass
class MapFit:
    """The box, the model and its MAP: what ``fit_map`` found and ``sample_posterior`` starts from.

    Attributes:
        crop: the box (``bodil.tumor.Crop``).
        model: the ``TumorModel`` on it.
        theta: the MAP parameters (all of them, the fixed ones included).
        field: the MAP concentration at every time node of the box, in ``[0, 1]``.
        status: how the MAP was found (``method``, ``converged``, ``message``, ``evaluations``, ``loss``) and
            ``odil``: the ODIL refinement's outcome (``None`` when it did not run).
        fit: the ODIL refinement's ``MAPResult`` (``None`` when it did not run).
        surrogate_box: the neural surrogate placed on the patient, when used.
    """

    crop: Any
    model: Any
    theta: dict
    field: Any = None
    status: dict = dataclasses.field(default_factory=dict)
    fit: Any = None
    surrogate_box: Any = None


def likelihood_weight(spacing_mm: float, error_correlation_mm: float | None) -> float:
    """``w = min(1, (h / l)^3)``: one independent observation per ``l^3`` of the box instead of one per voxel
    (``CTVSettings.error_correlation_mm``); 1 when ``l`` is ``None``."""
    if error_correlation_mm is None:
        return 1.0
    return float(min(1.0, (spacing_mm / error_correlation_mm) ** 3))


def box_model(seg: Segmentation, anatomy: Anatomy, s: CTVSettings):
    """Stage 2: the box around the tumour (``Crop``) and the GliODIL model on it (``TumorModel``)."""
    contain = side_to_contain(seg.tumor, seg.core, seg.affine, max(s.margins_mm)) + 2 * max(anatomy.spacing)
    crop = crop_around(seg.tumor, seg.affine, scale=s.box_scale, n=s.grid, min_side_mm=contain)
    n = s.box_points(crop.side_mm)
    if n != s.grid:  # the same box, finer: at most max_spacing_mm between points
        crop = crop_around(seg.tumor, seg.affine, scale=s.box_scale, n=n, min_side_mm=contain)
    log.info(f"box: {crop.side_mm:.0f} mm ({s.box_scale} x the tumour, at least the largest margin's CTV around the "
             f"core), {n}^3 points ({crop.side_mm / n:.2f} mm) x {s.time_points} time nodes")
    box = anatomy.crop(crop)
    classes_box = np.rint(crop.to_box(seg.classes.astype(float), order=0)).astype(np.int8)
    model = tumor_model(box.wm, box.gm, classes_box, crop.side_mm, nt=s.time_points, t_final=s.t_final,
                        infer=s.map_parameters, likelihood=s.likelihood, lambda_pde=s.lambda_pde,
                        lambda_ic=s.lambda_ic, sigma=s.sigma, dt2=s.effective_seed_dt2)
    return crop, model


def fit_map(seg: Segmentation, anatomy: Anatomy, s: CTVSettings, progress: bool | ProgressMeter = False) -> MapFit:
    """Stages 2-3: the box around the tumour, the GliODIL model on it (``box_model``), and its MAP."""
    from ..optimize import map_estimate

    crop, model = box_model(seg, anatomy, s)
    sbox = None
    if "surrogate" in (s.inner, s.initializer):
        from ..forward.surrogate import pretrained
        from .surrogate import surrogate_box

        sbox = surrogate_box(model, pretrained("forward"), anatomy, seg.tumor, crop)

    start = initial_guess(model)
    if s.initializer == "surrogate":
        from .surrogate import fit_surrogate

        log.info("MAP start: gradient-based fit through the neural surrogate (L-BFGS-B)")
        start = fit_surrogate(model, sbox, start)
    log.info("MAP: forward Fisher-Kolmogorov fit (Nelder-Mead on explicit runs)")
    forward = fit_forward(model, start)
    theta_map = {**model.posterior.params.fixed, **forward.theta}
    field = model.forward(theta_map, dtype=jnp.float64)
    status = {"method": "forward fit (Nelder-Mead on explicit Fisher-Kolmogorov runs)",
              "converged": forward.converged, "message": forward.message, "evaluations": forward.evaluations,
              "loss": forward.loss, "odil": None}
    log.info(f"MAP (forward fit): {forward.message} after {forward.evaluations} runs; "
             + ", ".join(f"{k} = {v:.4g}" for k, v in theta_map.items()))
    fit = None
    if s.odil_map_iterations:
        theta0 = {k: jnp.asarray(v) for k, v in forward.theta.items()}
        fit = map_estimate(model.posterior, model.discrete_forward(theta0), theta0, strategy="joint",
                           max_iter=s.odil_map_iterations, ftol=s.inner_ftol, progress=progress, throw=False)
        status["odil"] = {"converged": bool(fit.report.converged), "message": fit.report.message,
                          "loss": float(fit.report.loss), "iterations": int(fit.report.iterations)}
        if fit.report.converged:  # the mode of the finite-lambda_PDE posterior replaces the forward limit's
            theta_map = {**model.posterior.params.fixed, **{k: float(v) for k, v in fit.theta.items()}}
            field = jnp.clip(fit.u, 0.0, 1.0)
            status.update(method="ODIL (joint Gauss-Newton from the forward fit)", converged=True,
                          message=fit.report.message)
        log.info(f"ODIL refinement: {fit.report.message}"
                 + ("" if fit.report.converged else "; the MAP stays the forward fit"))
    return MapFit(crop, model, theta_map, field, status, fit, sbox)


def sample_posterior(mf: MapFit, s: CTVSettings, progress: bool | ProgressMeter = False, checkpoint: str | None = None,
                     resume: bool = False):
    """Stage 4: BASIS on ``p(theta) L(theta)^w`` over ``CTVSettings.posterior_parameters`` (the others at the
    MAP); returns ``(idata, evaluator)``, the evaluator's ``summary()`` counting the inner solves. With
    ``inner="forward"`` or ``"surrogate"`` the particles of each sweep are evaluated in vmapped runs (explicit
    solver or network) of ``s.batch_size``."""
    from ..inference import BatchExecutor, ModeApproximation, basis

    each = {"odil": "an inner ODIL solve",
            "forward": "a forward Fisher-Kolmogorov run (the mode approximation as lambda_PDE -> infinity)",
            "surrogate": "a neural-surrogate prediction (the forward limit, the network in place of the FK run)"
            }[s.inner]
    w = likelihood_weight(mf.model.spacing, s.error_correlation_mm)
    log.info(f"posterior of {', '.join(s.posterior_parameters)}: BASIS, {s.num_samples} samples, likelihood "
             f"weight w = {w:.3g}, each evaluation {each}")
    post_model = mf.model.with_fixed(mf.theta, infer=s.posterior_parameters)
    quad, quad_error = None, None
    if s.threshold_treatment == "marginalised":
        quad, quad_error = threshold_rule(post_model, mf.theta, w, s.threshold_nodes)
        nodes = int(round(np.sqrt(quad.size)))
        log.info(f"visibility thresholds integrated over their prior ({nodes} x {nodes} Gauss-Legendre nodes on "
                 f"each sample's field; at the MAP {quad_error:.1g} nats from the rule with twice the nodes)")
    theta_start = {k: jnp.asarray(mf.theta[k]) for k in s.posterior_parameters}
    if s.inner == "odil":
        mode = ModeApproximation(post_model.posterior, (mf.field, theta_start), ftol=s.inner_ftol,
                                 max_iter=s.inner_iterations, cg_maxiter=s.inner_cg_iterations,
                                 damping=s.inner_damping, adaptive_damping=True,
                                 on_failure="lower-bound", cache_size=max(32, 2 * s.num_samples),
                                 keep=lambda u, th: np.asarray(u[-1], np.float32),
                                 initial=lambda th: post_model.discrete_forward(th))
        log_likelihood = mode.log_likelihood
    else:
        mode = ForwardLikelihood(post_model, None if s.inner == "forward" else jax.jit(mf.surrogate_box.field),
                                 dtype=jnp.dtype(s.dtype), thresholds=quad)
        log_likelihood = mode

    def tempered(theta):  # the final field goes to idata.posterior["field"], inner-solve stats to sample_stats
        value, field, *stats = log_likelihood(theta)
        if quad is None:
            return (w * value, {"field": field}, *stats)
        return (float(quad.marginal(value, w)),
                {"field": field, "threshold_weights": np.asarray(quad.node_posterior(value, w), np.float32)}, *stats)

    def tempered_batch(thetas):  # the same for a stacked batch: one vmapped run per chunk of particles
        value, field = mode.batch(thetas)
        if quad is None:
            return w * value, {"field": field}
        return quad.marginal(value, w), {"field": field,
                                         "threshold_weights": quad.node_posterior(value, w).astype(jnp.float32)}

    batched = s.inner in ("forward", "surrogate") and s.batch_size > 1
    cost = mode.cost if s.inner == "forward" else None  # the surrogate's cost does not depend on theta
    executor = BatchExecutor(s.batch_size, cost=cost, pad=8) if batched else None  # shapes 8, 16, ...
    idata = basis(tempered_batch if batched else tempered, post_model.posterior.params, num_samples=s.num_samples,
                  seed=s.seed, beta=s.beta, gamma=s.gamma, lmax=s.lmax, checkpoint=checkpoint, resume=resume,
                  progress=progress, executor=executor)
    idata.attrs["likelihood_weight"] = w
    if quad is not None:
        idata.attrs["threshold_nodes"] = int(round(np.sqrt(quad.size)))
        idata.attrs["threshold_quadrature_error"] = quad_error
    return idata, mode


THRESHOLD_TOLERANCE = 0.01
"""Nats: the error of the threshold integral at the MAP that ``threshold_rule`` accepts."""


def threshold_rule(model, theta: dict, weight: float, nodes: int | None = None):
    """The Gauss-Legendre rule over the thresholds and its error at ``theta`` (the MAP; one forward run): the
    difference, in nats, of the tempered marginal likelihood from the rule with twice the nodes. With
    ``nodes=None`` the first of 8, 16 and 32 nodes per threshold whose error is below ``THRESHOLD_TOLERANCE``
    (the integrand sharpens with the weight and the number of observed voxels), else 32."""
    full = model.posterior.params.merge({k: jnp.asarray(theta[k]) for k in model.posterior.params.priors})
    field = jnp.asarray(model.forward(full)[-1], jnp.float64)

    def marginal(n):
        rule = threshold_quadrature(threshold_priors(), n)
        return rule, float(rule.marginal(ForwardLikelihood(model, thresholds=rule)._final_log_likelihood(field, full),
                                         weight))

    for n in ((nodes,) if nodes else (8, 16, 32)):
        (quad, value), (_, finer) = marginal(n), marginal(2 * n)
        if abs(value - finer) <= THRESHOLD_TOLERANCE:
            break
    return quad, abs(value - finer)


def _run(seg: Segmentation, anatomy: Anatomy, tmp: str, s: CTVSettings, patient_id: str, truth, inputs,
         progress: bool | ProgressMeter, checkpoint: str | None = None, resume: bool = False,
         registration=None) -> dict:
    """The stages after the inputs: MAP, posterior, CTVs, files; returns ``{"files", "summary"}``."""
    mf = fit_map(seg, anatomy, s, progress)
    idata, mode = sample_posterior(mf, s, progress, checkpoint, resume)
    log.info("CTVs: standard margins and equal-volume model CTVs of every sample")
    ctvs = posterior_ctvs(seg, anatomy, s, mf, idata, progress)
    log.info("writing NIfTI, posterior.nc, summary.json and the report")
    files = write_products(tmp, seg, s, mf, idata, ctvs)
    summary = summarise(seg, anatomy, s, mf, idata, ctvs, mode.summary(), patient_id, inputs, truth)
    if registration is not None:  # tissue maps made from the T1: the maps, the QC figure and its warnings
        files.update(registration.write(tmp))
        summary["registration"] = registration.summary
        summary["notes"] = list(registration.notes) + summary["notes"]
    content = report_content(seg, anatomy, s, mf, idata, ctvs, summary, patient_id, inputs, truth)
    if registration is not None:
        from .registration_qc import qc_plot

        qc = ("Atlas registration: quality control", qc_plot(registration))
        content = dataclasses.replace(content, figures=(qc,))
    files["report_pdf"], files["report_html"] = write_report(content, tmp)
    return {"files": files, "summary": summary}
