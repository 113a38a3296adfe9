"""From a tumour segmentation and tissue maps to a posterior ensemble of clinical target volumes.

The stages (Amoudruz et al. 2025, sec. 3.4; each with its own progress bar):

1. inputs: the segmentation's classes (0 healthy, 1 edema, 2 core) and the tissue maps, checked to share one
   grid and affine;
2. box: a cube ``box_scale`` (1.5) times the tumour's largest extent, resampled to ``grid^3`` points;
3. MAP: a forward fit of ``(Dw, rho, x0, y0, z0)`` (Nelder-Mead on explicit Fisher-Kolmogorov runs),
   then the GliODIL posterior (``bodil.tumor.model``) maximised jointly over the field and those parameters
   by Gauss-Newton (ODIL) from the forward solution;
4. posterior: BASIS (``beta = 0.7``, ``gamma = 1.5``, ``l_max = 3``; not Amoudruz et al.'s (2025) ``beta = 0.2``,
   ``l_max = 1``, see ``Settings``) on the mode approximation of ``p(x0, y0, z0 | D)`` with the other
   parameters at their MAP values (by default its
   ``lambda_PDE -> infinity`` limit, a forward run per evaluation; ``Settings.inner``), its likelihood
   counting one independent observation per ``(15 mm)^3`` rather than per voxel
   (``Settings.error_correlation_mm``); each sample keeps its concentration at the imaging time;
5. CTVs: for each margin (10, 15, 20 mm) the standard plan and every sample's model CTV of equal volume,
   on the input grid (``bodil.tumor.ctv``);
6. files: NIfTI maps, ``posterior.nc`` (InferenceData), ``summary.json`` and the report (PDF, HTML), all
   written into a temporary folder that replaces ``out`` only when everything is complete.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ..io import InputError, Volume, atomic_directory, check_same_grid, remove_stale_temporaries, save_nifti, write_json
from ..likelihood import CORE
from .anatomy import Anatomy, crop_around
from .ctv import ctv_ensemble
from .model import ORIGIN, UNITS, fit_forward, initial_guess, tumor_model
from .report import ReportContent, write_report
from .segmentation import Segmentation, load_segmentation


@dataclasses.dataclass(frozen=True)
class Settings:
    """Numbers that define one run. Defaults are sized for a 2-core laptop (a few minutes);
    ``Settings.paper()`` gives Amoudruz et al.'s (2025) (64^3 x 128 points, 512 samples: a GPU job).

    Attributes:
        grid: points per axis of the box (``n``).
        time_points: time nodes on ``[0, t_final]``.
        samples: BASIS particles (posterior samples).
        seed: seed of the sampler.
        t_final: time from tumour onset to imaging (days); only ``D T`` and ``rho T`` are identifiable.
        margins_mm: standard CTV margins.
        box_scale: box side over the tumour's largest extent.
        map_parameters: parameters fitted by the MAP; the others stay at their fixed values
            (``ratio = Dw / Dg = 10``, ``tau_lo = 0.25``, ``tau_up = 0.675``).
        posterior_parameters: parameters sampled by BASIS (the rest fixed at the MAP).
        likelihood: ``"sigmoid"`` (Amoudruz et al. 2025, eq. 36, smooth: the inner Newton solves converge) or
            ``"interval"`` (eq. 30, the paper's hinge).
        lambda_pde, lambda_ic, sigma: weights of eq. 32 and the likelihood width.
        error_correlation_mm: the distance ``l`` (mm) over which the errors of the segmentation and of the
            model are correlated. The likelihood of eq. 30/36 counts every voxel as an independent
            observation; the posterior counts one per ``l^3`` instead: BASIS samples ``p(theta) L(theta)^w``
            with ``w = min(1, (h / l)^3)``, ``h`` the box spacing (a tempered, or composite, likelihood).
            Then the posterior's width no longer depends on the box resolution (untempered, the same
            segmentation on a 64^3 box gives a posterior 19 times sharper in variance than on a 24^3 box),
            and it accounts for errors that the voxelwise likelihood cannot see: on synthetic patients, whose
            only error is that the model runs on a coarser box than the anatomy that grew them, the
            untempered posterior of the initial position was a few hundredths of a mm wide and missed the
            truth by tenths of a mm. ``benchmarks/tumor_calibration.py`` measures the coverage of the
            credible regions for several ``l`` on synthetic patients other than ``benchmarks/tumor.py``'s; the
            default is the smallest that covered them. ``None``: ``w = 1``, Amoudruz et al.'s (2025) likelihood as is.
        beta, gamma, lmax: BASIS settings: proposal covariance ``beta^2`` times the particles' weighted
            covariance, target coefficient of variation of the incremental weights, Metropolis steps per sample.
            Seed 003's ``beta = 0.2, lmax = 1`` (Korali's BASIS) are too noisy for the samples to be used: on
            3-D and 5-D Gaussian posteriors 10-40 times narrower than the prior box, one run's posterior mean
            spreads 0.7-0.9 posterior sd over seeds with 128 samples (0.35-0.4 with 512) and its variance
            65-90% (40%): an effective sample size of one or two (six to eight). ``beta = 0.7, lmax = 3`` brings
            that to 0.14-0.19 sd and 15-20% at 128 samples for 2.4 times the likelihood evaluations (about 1550
            in 3-D against 650), the cheapest of the settings measured that keeps both spreads under 0.25 with
            95% confidence in 3-D and 5-D (``benchmarks/inference.py --spread``; ``tests/test_smc.py`` tests them).
        inner: how ``log p(theta | D)`` is evaluated for BASIS. ``"forward"``: the limit
            ``lambda_PDE -> infinity`` of the mode approximation, where ``u*(theta)`` is the solution of the PDE
            (an explicit Fisher-Kolmogorov run, ``bodil.forward.fk``) and
            ``log p(theta | D) = log p(D | u_FK(theta)(T), theta) + log p(theta)``: cheap and robust.
            ``"odil"``: the mode approximation at finite ``lambda_PDE`` (eq. 12), an inner ODIL solve per
            evaluation (Gauss-Newton with adaptive Levenberg-Marquardt damping): a second or more per
            evaluation at the default size on a laptop CPU against hundredths for a forward run, and rarely
            converged within ``inner_iterations`` (see the ``inner_solves`` counts in the summary), so it is
            not the default. ``"surrogate"``: as ``"forward"`` with the neural surrogate
            (``bodil.forward.surrogate.pretrained()``, placed on the patient by ``bodil.tumor.surrogate``) in
            place of the FK run: one network call per evaluation.
        initializer: how the MAP is started. ``"forward"``: Nelder-Mead on explicit FK runs (a few hundred);
            ``"surrogate"``: L-BFGS-B through the neural surrogate with its exact gradient (Weidner et al.'s (2025)
            gradient-based inversion against the segmentation's likelihood). Either way ODIL (joint
            Gauss-Newton) then polishes the MAP from the FK solution at that start.
        inner_ftol: relative accuracy of each inner solve's log density (``1e-6`` of a loss of a few
            hundred: a few thousandths of a nat).
        inner_iterations: Gauss-Newton iterations of each inner solve. Near the mode the solves converge in
            a few; far from it (first BASIS stages) they stop at the cap and their value, a lower bound of the
            mode value (any field gives one), ranks them low, which is all the sampler needs there. The
            summary counts them.
        inner_cg_iterations: conjugate-gradient iterations per inner Gauss-Newton step.
        map_iterations: Gauss-Newton iterations of the joint MAP polish after the forward fit.
    """

    grid: int = 24
    time_points: int = 12
    samples: int = 128
    seed: int = 0
    t_final: float = 100.0
    margins_mm: tuple = (10.0, 15.0, 20.0)
    box_scale: float = 1.5
    map_parameters: tuple = ("Dw", "rho", "x0", "y0", "z0")
    posterior_parameters: tuple = ORIGIN
    likelihood: str = "sigmoid"
    lambda_pde: float = 1e3
    lambda_ic: float = 200.0
    sigma: float = 0.05
    error_correlation_mm: float | None = 15.0
    beta: float = 0.7
    gamma: float = 1.5
    lmax: int = 3
    inner: str = "forward"
    initializer: str = "forward"
    inner_ftol: float = 1e-6
    inner_iterations: int = 6
    inner_cg_iterations: int = 100
    map_iterations: int = 10

    @classmethod
    def paper(cls, **overrides) -> "Settings":
        """Seed 003's sizes: 64^3 x 128, 512 samples."""
        return cls(**{"grid": 64, "time_points": 128, "samples": 512, **overrides})

    def check(self) -> "Settings":
        if self.grid < 8 or self.time_points < 4 or self.samples < 4:
            raise InputError(f"settings: need grid >= 8, time points >= 4 and samples >= 4; got grid "
                             f"{self.grid}, time points {self.time_points}, samples {self.samples}.")
        if self.inner not in ("forward", "odil", "surrogate"):
            raise InputError(f"settings: inner must be 'forward', 'odil' or 'surrogate', got {self.inner!r}.")
        if self.initializer not in ("forward", "surrogate"):
            raise InputError(f"settings: initializer must be 'forward' or 'surrogate', got {self.initializer!r}.")
        if self.error_correlation_mm is not None and not self.error_correlation_mm > 0:
            raise InputError(f"settings: error_correlation_mm must be a positive length in mm or None (no "
                             f"tempering), got {self.error_correlation_mm!r}.")
        if not set(self.posterior_parameters) <= set(self.map_parameters) | set(ORIGIN):
            raise InputError("settings: posterior parameters must be among the MAP parameters.")
        return self


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


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(f"[bodil] {msg}", file=sys.stderr, flush=True)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("bodil", "jax", "numpyro", "nibabel", "numpy", "scipy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def _quantiles(x) -> dict:
    x = np.asarray(x, float)
    return {"mean": float(x.mean()), "sd": float(x.std()), "q05": float(np.quantile(x, 0.05)),
            "q50": float(np.quantile(x, 0.5)), "q95": float(np.quantile(x, 0.95))}


class _ForwardLikelihood:
    """``theta -> (log p(D | u_FK(theta)(T), theta), u_FK(theta)(T))``: the mode approximation in the limit
    ``lambda_PDE -> infinity``, with an explicit Fisher-Kolmogorov run as the field (or, given ``field``, the
    neural surrogate's); counts its evaluations."""

    def __init__(self, model, field=None):
        self.model = model
        self.field = field
        self.evaluations, self.wall_time = 0, 0.0

    def __call__(self, theta):
        start = time.perf_counter()
        full = self.model.posterior.params.merge({k: jnp.asarray(v) for k, v in theta.items()})
        if self.field is None:
            u_final = self.model.forward(full, dtype=jnp.float64)[-1]
        else:
            u_final = jnp.asarray(self.field(full), jnp.float64)
        value = self.model.final_log_likelihood(u_final, full)
        self.evaluations += 1
        self.wall_time += time.perf_counter() - start
        return value, np.asarray(u_final, np.float32)

    def summary(self) -> dict:
        method = "forward (lambda_PDE -> infinity)" if self.field is None else "neural surrogate (forward limit)"
        return {"method": method, "evaluations": self.evaluations,
                "inner_solves": self.evaluations, "unconverged": 0, "wall_time": self.wall_time}


def _final_particles_converged(mode, origin_box, names) -> float:
    """Fraction of the final particles whose inner solve converged (matched by their parameters)."""
    done = {tuple(np.round([float(r.theta[c]) for c in names], 9)): r.converged for r in mode.records}
    idx = [ORIGIN.index(c) for c in names]
    flags = [done.get(tuple(np.round(row[idx], 9)), True) for row in origin_box]
    return float(np.mean(flags))


def run_ctv(segmentation: Segmentation | str, anatomy: Anatomy, out, *, labels="brats2021",
            settings: Settings = Settings(), patient_id: str | None = None, truth: dict | None = None,
            inputs: dict | None = None, overwrite: bool = False, resume: bool = False,
            progress: bool = True) -> CTVRun:
    """Infer the tumour's growth with uncertainty and write the CTV ensemble and the report into ``out``.

    Args:
        segmentation: a ``Segmentation`` or the path of a segmentation NIfTI.
        anatomy: the tissue maps on the segmentation's grid (``load_tissue``, ``mni152``).
        out: output folder (must not exist or be empty unless ``overwrite``).
        labels: the label convention when ``segmentation`` is a path (``"brats2021"``, ``"brats2023"``, a
            mapping).
        settings: grid, samples, seed... (``Settings``).
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
        progress: print the stages and show progress bars.

    Returns:
        ``CTVRun`` with the folder, the file paths and the summary.

    Raises:
        InputError: bad inputs (different grids, empty tumour, ...) or an existing ``out``; nothing is written.
    """
    settings = settings.check()
    if not isinstance(segmentation, Segmentation):
        segmentation = load_segmentation(segmentation, labels)
    anatomy.validate()
    check_same_grid({"segmentation": Volume(segmentation.classes, segmentation.affine, segmentation.path),
                     "tissue maps": Volume(anatomy.wm, anatomy.affine, None)})
    if patient_id is None:
        patient_id = os.path.basename(segmentation.path or "patient").split(".nii")[0]
    final = os.path.abspath(os.fspath(out))
    checkpoint, fingerprint = final + ".checkpoint", _fingerprint(segmentation, anatomy, settings)
    resuming = _check_checkpoint(checkpoint, fingerprint, resume)
    if resuming:
        remove_stale_temporaries(final)  # the half-built output folder of the killed run
    with _x64(), atomic_directory(out, overwrite=overwrite) as tmp:
        started = time.perf_counter()
        if not resuming:
            os.makedirs(checkpoint, exist_ok=True)
            write_json(os.path.join(checkpoint, "run.json"), fingerprint)
        else:
            _log(f"resuming from the checkpoint {checkpoint}", progress)
        try:
            result = _run(segmentation, anatomy, tmp, settings, patient_id, truth, inputs or {}, progress,
                          os.path.join(checkpoint, "basis.pkl"), resuming)
        except InputError:
            shutil.rmtree(checkpoint, ignore_errors=True)  # nothing worth keeping: the inputs were refused
            raise
        except BaseException:
            print(f"bodil: the run stopped; continue it with resume=True (bodil ctv ... --resume) from the "
                  f"checkpoint {checkpoint}", file=sys.stderr)
            raise
        result["summary"]["wall_time_s"] = round(time.perf_counter() - started, 1)
        write_json(os.path.join(tmp, "summary.json"), result["summary"])
    shutil.rmtree(checkpoint, ignore_errors=True)
    files = {k: os.path.join(final, os.path.basename(v)) for k, v in result["files"].items()}
    files["summary"] = os.path.join(final, "summary.json")
    return CTVRun(final, files, result["summary"])


def _fingerprint(seg: Segmentation, anatomy: Anatomy, settings: Settings) -> dict:
    """What a checkpoint must match to be resumed: the settings and hashes of the input arrays."""
    digest = hashlib.sha256()
    for arr in (seg.classes, seg.affine, anatomy.wm, anatomy.gm, anatomy.csf, anatomy.affine):
        a = np.ascontiguousarray(arr)
        digest.update(str((a.dtype, a.shape)).encode())
        digest.update(a.tobytes())
    return {"format": "bodil.ctv-checkpoint/1", "inputs_sha256": digest.hexdigest(),
            "settings": json.loads(json.dumps(dataclasses.asdict(settings)))}


def _check_checkpoint(checkpoint: str, fingerprint: dict, resume: bool) -> bool:
    """Whether to resume; refuses a checkpoint left by another run, or one that ``resume`` was not asked for."""
    if not os.path.exists(checkpoint):
        return False
    if not resume:
        raise InputError(f"{checkpoint} holds the checkpoint of an interrupted run into this output folder; "
                         "continue it with --resume (resume=True), or delete that folder to start afresh.")
    try:
        with open(os.path.join(checkpoint, "run.json")) as f:
            stored = json.load(f)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read the checkpoint {checkpoint} ({err}); delete that folder to start "
                         "afresh.") from err
    if stored != fingerprint:
        what = [k for k in ("inputs_sha256", "settings") if stored.get(k) != fingerprint[k]]
        diff = [f"{k}: {stored.get('settings', {}).get(k)!r} -> {v!r}" for k, v in fingerprint["settings"].items()
                if stored.get("settings", {}).get(k) != v]
        raise InputError(f"the checkpoint {checkpoint} was written for other {' and '.join(what)}"
                         + (f" ({'; '.join(diff)})" if diff else "") + "; resume with the same inputs and "
                         "settings, or delete that folder to start afresh.")
    return True


def _damping(s: Settings) -> float:
    """Starting Levenberg-Marquardt damping of the ODIL solves: a tenth of the largest curvature per voxel of
    the data term, ``1 / (4 sigma^2)`` for both likelihoods' sigmoid (measured on the demo box: plain
    Gauss-Newton steps overshoot as voxels cross a threshold and the line search cuts them to slivers)."""
    return 0.1 / (4.0 * s.sigma**2)


@dataclasses.dataclass
class MapFit:
    """The box, the model and its MAP: what ``fit_map`` found and ``sample_posterior`` starts from."""

    crop: Any
    model: Any
    fit: Any
    theta: dict
    surrogate_box: Any = None


def likelihood_weight(spacing_mm: float, error_correlation_mm: float | None) -> float:
    """``w = min(1, (h / l)^3)``: one independent observation per ``l^3`` of the box instead of one per voxel
    (``Settings.error_correlation_mm``); 1 when ``l`` is ``None``."""
    if error_correlation_mm is None:
        return 1.0
    return float(min(1.0, (spacing_mm / error_correlation_mm) ** 3))


def fit_map(seg: Segmentation, anatomy: Anatomy, s: Settings, progress: bool = False) -> MapFit:
    """Stages 2-3: the box around the tumour, the GliODIL model on it, and its MAP."""
    from ..optimize import map_estimate

    _log(f"box: {s.box_scale} x the tumour, {s.grid}^3 points x {s.time_points} time nodes", progress)
    crop = crop_around(seg.tumor, seg.affine, scale=s.box_scale, n=s.grid)
    box = anatomy.crop(crop)
    classes_box = np.rint(crop.to_box(seg.classes.astype(float), order=0)).astype(np.int8)
    model = tumor_model(box.wm, box.gm, classes_box, crop.side_mm, nt=s.time_points, t_final=s.t_final,
                        infer=s.map_parameters, likelihood=s.likelihood, lambda_pde=s.lambda_pde,
                        lambda_ic=s.lambda_ic, sigma=s.sigma)

    sbox = None
    if "surrogate" in (s.inner, s.initializer):
        from ..forward.surrogate import pretrained
        from .surrogate import surrogate_box

        sbox = surrogate_box(model, pretrained("forward"), anatomy, seg.tumor, crop)

    if s.initializer == "surrogate":
        from .surrogate import fit_surrogate

        _log("MAP: gradient-based fit through the neural surrogate (L-BFGS-B), then ODIL (joint Gauss-Newton)",
             progress)
        theta_fk = fit_surrogate(model, sbox, initial_guess(model))
    else:
        _log("MAP: forward Fisher-Kolmogorov fit (Nelder-Mead), then ODIL (joint Gauss-Newton)", progress)
        theta_fk = fit_forward(model, initial_guess(model))
    theta0 = {k: jnp.asarray(v) for k, v in theta_fk.items()}
    fit = map_estimate(model.posterior, model.forward(theta0), theta0, strategy="joint", max_iter=s.map_iterations,
                       ftol=s.inner_ftol, progress=progress)
    theta_map = {**model.posterior.params.fixed, **{k: float(v) for k, v in fit.theta.items()}}
    _log(f"MAP: {fit.report.message}; " + ", ".join(f"{k} = {v:.4g}" for k, v in theta_map.items()), progress)
    return MapFit(crop, model, fit, theta_map, sbox)


def sample_posterior(mf: MapFit, s: Settings, progress: bool = False, checkpoint: str | None = None,
                     resume: bool = False):
    """Stage 4: BASIS on ``p(theta) L(theta)^w`` over ``Settings.posterior_parameters`` (the others at the MAP);
    returns ``(idata, evaluator)``, the evaluator's ``summary()`` counting the inner solves."""
    from ..inference import ModeApproximation, basis

    each = {"odil": "an inner ODIL solve",
            "forward": "a forward Fisher-Kolmogorov run (the mode approximation as lambda_PDE -> infinity)",
            "surrogate": "a neural-surrogate prediction (the forward limit, the network in place of the FK run)"
            }[s.inner]
    w = likelihood_weight(mf.model.spacing, s.error_correlation_mm)
    _log(f"posterior of {', '.join(s.posterior_parameters)}: BASIS, {s.samples} samples, likelihood weight "
         f"w = {w:.3g}, each evaluation {each}", progress)
    post_model = mf.model.with_fixed(mf.theta, infer=s.posterior_parameters)
    theta_start = {k: jnp.asarray(mf.theta[k]) for k in s.posterior_parameters}
    if s.inner == "odil":
        mode = ModeApproximation(post_model.posterior, mf.fit.u, theta_start, ftol=s.inner_ftol,
                                 max_iter=s.inner_iterations, cg_maxiter=s.inner_cg_iterations,
                                 damping=_damping(s), adaptive_damping=True,
                                 on_failure="lower-bound", cache_size=max(32, 2 * s.samples),
                                 keep=lambda u, th: np.asarray(u[-1], np.float32),
                                 initial=lambda th: post_model.forward(th))
        log_likelihood = mode.log_likelihood
    else:
        mode = _ForwardLikelihood(post_model, None if s.inner == "forward" else jax.jit(mf.surrogate_box.field))
        log_likelihood = mode

    def tempered(theta):
        value, aux = log_likelihood(theta)
        return w * value, aux

    idata = basis(tempered, post_model.posterior.params, n=s.samples, seed=s.seed, beta=s.beta, gamma=s.gamma,
                  lmax=s.lmax, checkpoint=checkpoint, resume=resume, progress=progress)
    idata.attrs["likelihood_weight"] = w
    return idata, mode


def _run(seg: Segmentation, anatomy: Anatomy, tmp: str, s: Settings, patient_id: str, truth, inputs,
         progress: bool, checkpoint: str | None = None, resume: bool = False) -> dict:
    mf = fit_map(seg, anatomy, s, progress)
    crop, model, fit, theta_map, sbox = mf.crop, mf.model, mf.fit, mf.theta, mf.surrogate_box
    idata, mode = sample_posterior(mf, s, progress, checkpoint, resume)
    inner = mode.summary()
    fields = np.asarray(idata.posterior["aux"].values).reshape((-1,) + crop.shape)
    origin_box = np.stack([np.asarray(idata.posterior[c].values).ravel() if c in s.posterior_parameters
                           else np.full(fields.shape[0], theta_map[c]) for c in ORIGIN], axis=1)
    origin_world = crop.box_to_world(origin_box)
    map_origin_world = crop.box_to_world(np.array([theta_map[c] for c in ORIGIN]))

    # ---------------------------------------------------------------- CTVs on the input grid
    _log("CTVs: standard margins and equal-volume model CTVs of every sample", progress)
    u_map = crop.to_input(np.asarray(fit.u[-1]))
    mean = np.zeros(seg.shape)
    sq = np.zeros(seg.shape)

    def stream():
        for f in tqdm(fields, desc="CTV ensemble", disable=not progress, leave=False):
            v = np.clip(crop.to_input(f), 0.0, 1.0)
            mean[...] += v
            sq[...] += v * v
            yield v

    brain = anatomy.brain | seg.tumor
    ens = ctv_ensemble(stream(), seg.core, brain, anatomy.spacing, margins_mm=s.margins_mm,
                       map_concentration=u_map, seed=s.seed)
    n = fields.shape[0]
    mean /= n
    std = np.sqrt(np.maximum(sq / n - mean**2, 0.0))

    # ---------------------------------------------------------------- files
    _log("writing NIfTI, posterior.nc, summary.json and the report", progress)
    a = seg.affine
    files = {}

    def nifti(name, data, dtype=np.float32):
        files[name] = save_nifti(os.path.join(tmp, f"{name}.nii.gz"), data, a, dtype=dtype)

    nifti("map_concentration", u_map)
    nifti("posterior_mean", mean)
    nifti("posterior_std", std)
    for m in s.margins_mm:
        tag = f"{m:g}mm"
        nifti(f"ctv_probability_{tag}", ens[m].probability)
        nifti(f"ctv_standard_{tag}", ens[m].standard, np.uint8)
        nifti(f"ctv_model_map_{tag}", ens[m].map_mask, np.uint8)
    idata.posterior["x_world"] = (("chain", "draw"), origin_world[:, 0].reshape(1, -1))
    idata.posterior["y_world"] = (("chain", "draw"), origin_world[:, 1].reshape(1, -1))
    idata.posterior["z_world"] = (("chain", "draw"), origin_world[:, 2].reshape(1, -1))
    idata.attrs["box_affine"] = np.asarray(crop.affine).ravel().tolist()
    idata.attrs["note"] = ("aux = concentration at the imaging time on the box grid (affine box_affine); "
                           "x0, y0, z0 in mm of the box frame, x/y/z_world in world (scanner) mm")
    files["posterior"] = os.path.join(tmp, "posterior.nc")
    idata.to_netcdf(files["posterior"])

    voxel_cm3 = float(np.prod(anatomy.spacing)) / 1e3
    params = []
    for name in model.posterior.params.priors:
        row = {"name": name, "unit": UNITS.get(name, ""), "map": theta_map[name]}
        if name in ORIGIN:
            axis = ORIGIN.index(name)
            q = _quantiles(origin_world[:, axis])
            row = {"name": f"{'xyz'[axis]} (world)", "unit": "mm", "map": float(map_origin_world[axis]),
                   "mean": q["mean"], "q05": q["q05"], "q95": q["q95"]}
        params.append(row)
    summary = {
        "patient_id": patient_id,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "inputs": inputs,
        "label_convention": seg.convention.name,
        "settings": dataclasses.asdict(s),
        "box": {"side_mm": crop.side_mm, "spacing_mm": crop.spacing_mm, "affine": np.asarray(crop.affine).tolist()},
        "volumes_cm3": {"core": float(seg.core.sum() * voxel_cm3), "edema": float(seg.edema.sum() * voxel_cm3)},
        "map": {"theta": theta_map, "origin_world_mm": map_origin_world.tolist(),
                "converged": bool(fit.report.converged), "message": fit.report.message,
                "loss": float(fit.report.loss), "wall_time_s": float(fit.report.wall_time)},
        "posterior": {
            "parameters": list(s.posterior_parameters),
            "origin_world_mm": {c: _quantiles(origin_world[:, i]) for i, c in enumerate("xyz")},
            "origin_spread_mm": float(np.sqrt(np.trace(np.cov(origin_world.T)))),
            "likelihood_weight": float(idata.attrs["likelihood_weight"]),
            "log_evidence": float(idata.attrs.get("log_evidence", np.nan)),  # of the tempered likelihood
            "inner_solves": inner,
        },
        "ctv": ens.table(),
        "truth": truth or {},
    }
    notes = []
    if not fit.report.converged:
        notes.append(f"The MAP solve did not reach its tolerance ({fit.report.message}); results may be off.")
    final = _final_particles_converged(mode, origin_box, s.posterior_parameters) if s.inner == "odil" else 1.0
    summary["posterior"]["final_samples_converged"] = final
    if final < 1.0:
        notes.append(f"{100 * (1 - final):.0f}% of the final samples come from inner solves that stopped at the "
                     f"iteration cap ({s.inner_iterations}); raise Settings.inner_iterations.")
    if sbox is not None:
        in_range = sbox.in_range(theta_map)
        summary["surrogate"] = {"crop_side_mm": sbox.crop.side_mm, "spacing_mm": sbox.surrogate.spacing_mm,
                                "theta_map": [float(v) for v in sbox.surrogate_theta(theta_map)],
                                "in_training_range": in_range, "weights": sbox.surrogate.info.get("dataset", {})}
        if not in_range:
            notes.append("The MAP lies outside the neural surrogate's training ranges; its predictions there are "
                         "extrapolations. Prefer inner='forward'.")
    summary["notes"] = notes
    run = {"grid": f"{s.grid}^3 x {s.time_points} (box side {crop.side_mm:.1f} mm, {crop.spacing_mm:.2f} mm)",
           "samples": s.samples, "seed": s.seed, "labels": seg.convention.name, "T (days)": s.t_final,
           "likelihood": s.likelihood,
           "likelihood weight": (f"{idata.attrs['likelihood_weight']:.3g} (errors correlated over "
                                 f"{s.error_correlation_mm:g} mm)" if s.error_correlation_mm else "1 (untempered)"),
           **{f"input {k}": v for k, v in inputs.items()},
           "created": summary["created"], "bodil": summary["versions"]["bodil"], "jax": summary["versions"]["jax"]}
    origin_truth = None
    if truth and "origin_world" in truth:
        origin_truth = np.asarray(truth["origin_world"], float)
    content = ReportContent.from_ensemble(
        ens, patient_id=patient_id, run=run, tissue=anatomy.tissue, classes=seg.classes, affine=a,
        origin_samples=origin_world, parameters=params, notes=notes, origin_truth=origin_truth,
        origin_map=map_origin_world)
    files["report_pdf"], files["report_html"] = write_report(content, tmp)
    return {"files": files, "summary": summary}
