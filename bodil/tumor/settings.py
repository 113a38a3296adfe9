"""``CTVSettings``: the numbers that define one run of the tumour pipeline (``bodil.tumor.run_ctv``), checked
when they are made."""

from __future__ import annotations

import dataclasses
import math

from .. import _checks
from ..io import InputError
from ..residuals.initial import SEED_DT2 as PAPER_SEED_DT2
from .model import ORIGIN, PARAMETERS

INNER = ("forward", "odil", "surrogate")
INITIALIZERS = ("forward", "surrogate")
LIKELIHOODS = ("sigmoid", "interval")
DTYPES = ("float64", "float32")
THRESHOLD_TREATMENTS = ("marginalised", "fixed")
SEED_DT2 = 4.0
"""The seed's default ``Dt^2`` (mm^2), chosen on the validation cohort (docs/tumor.md): smaller than GliODIL's
15 mm^2, whose blob of 10 mm radius needed less growth than the cohort's 1.5-5 mm seeds."""
MAP_PARAMETERS = ("Dw", "rho", "ratio") + ORIGIN
"""The parameters the MAP fits by default; ``M`` and the thresholds stay at their fixed values."""
POSTERIOR_PARAMETERS = ORIGIN + ("ratio",)
"""The parameters BASIS samples by default: the initial position and ``Dw / Dg``, which one image hardly informs
and which is no longer fixed at one guess (chosen on the validation cohort, docs/tumor.md); the thresholds are
integrated out, ``Dw`` and ``rho`` held at the MAP with their model error calibrated (``bodil.tumor.discrepancy``)."""


@dataclasses.dataclass(frozen=True)
class CTVSettings:
    """Numbers that define one run. Defaults are sized for a 2-core laptop (a few minutes);
    ``CTVSettings.paper()`` gives the sizes of Amoudruz et al. 2025 (64^3 x 128 points, 512 samples: a GPU job).
    Measurements behind the defaults are in docs/tumor.md.

    Attributes:
        grid: points per axis of the box (``n`` >= 8), at least; see ``max_spacing_mm``.
        max_spacing_mm: the largest box spacing (mm): a box whose side over ``grid`` exceeds it gets
            ``ceil(side / max_spacing_mm)`` points per axis instead, so that large tumours are not modelled on
            coarser voxels than small ones. ``None``: always ``grid`` points.
        time_points: time nodes on ``[0, t_final]`` (>= 4).
        num_samples: BASIS particles, the posterior samples (>= 4).
        seed: integer seed of the sampler (and of the CTV ensemble's choice of compared samples).
        t_final: time from tumour onset to imaging (days); only ``D T`` and ``rho T`` are identifiable.
        margins_mm: standard CTV margins.
        box_scale: box side over the tumour's largest extent; the box is enlarged where needed to hold the
            largest margin's standard CTV around the core (``bodil.tumor.box.side_to_contain``), so no model CTV
            voxel is picked outside the modelled region.
        map_parameters: parameters fitted by the MAP; the others stay at their fixed values
            (``ratio = Dw / Dg = 10``, ``tau_lo = 0.25``, ``tau_up = 0.675``, ``M = 1500``). ``None``:
            ``MAP_PARAMETERS`` (``Dw``, ``rho``, ``ratio`` and the origin), without ``ratio`` where the neural
            surrogate is used (``inner`` or ``initializer``), which was trained at ``Dw / Dg = 10``.
        posterior_parameters: parameters sampled by BASIS (the rest fixed at the MAP); among the MAP
            parameters and the origin. ``None``: ``POSTERIOR_PARAMETERS`` (the origin and ``Dw / Dg``), less the
            ones the MAP does not fit (the origin alone with the surrogate). Sampling ``Dw`` and ``rho`` too made
            the ensemble CTV worse on the validation cohort, and their intervals covered the truth only where they
            were nearly as wide as the prior (docs/tumor.md); the summary and report give ``Dw T`` and ``rho T``
            with the model's error calibrated on that cohort instead (``bodil.tumor.discrepancy``). Both ``None``
            defaults are resolved when the settings are made: change ``inner`` or the fitted parameters by making
            new settings, not by ``dataclasses.replace``, which keeps the resolved tuples.
        likelihood: ``"sigmoid"`` (Amoudruz et al. 2025, eq. 36, smooth: the inner Newton solves converge) or
            ``"interval"`` (eq. 30, the paper's hinge).
        lambda_pde, lambda_ic, sigma: weights of eq. 32 and the likelihood width.
        seed_dt2: ``Dt^2`` (mm^2) of the initial seed (eq. 27-28: a Gaussian of mass ``M`` and variance
            ``2 Dt^2``, clipped at 1 and cut at 0.1). ``None``: ``SEED_DT2`` (4 mm^2: a ball of height 1 and
            about 5 mm radius, chosen on the validation cohort, docs/tumor.md), or GliODIL's 15 mm^2 (a blob of
            height 0.58 and 10 mm radius) with ``inner="surrogate"``, whose network was trained on that seed.
        error_correlation_mm: the distance ``l`` (mm) over which the errors of the segmentation and of the
            model are correlated. The posterior counts one independent observation per ``l^3`` instead of one
            per voxel: BASIS samples ``p(theta) L(theta)^w`` with ``w = min(1, (h / l)^3)``, ``h`` the box
            spacing (a tempered, or composite, likelihood), so its width does not depend on the box
            resolution. ``None``: ``w = 1``, the likelihood of Amoudruz et al. 2025 as is. The default, 25 mm,
            is calibrated on a validation cohort (docs/tumor.md).
        beta, gamma, lmax: BASIS settings (Wu et al. 2018): proposal covariance ``beta^2`` times the particles'
            weighted covariance, target coefficient of variation of the incremental weights, Metropolis steps
            per sample. The paper's ``beta = 0.2, lmax = 1`` give an effective sample size of one or two per
            run; ``beta = 0.7, lmax = 3`` is the cheapest setting measured whose estimates are usable
            (``tests/test_smc.py`` tests them).
        thresholds: how the posterior treats the visibility thresholds ``tau_lo``, ``tau_up`` when it does not
            sample them. ``"marginalised"``: integrated over their uniform priors by a ``threshold_nodes^2``
            Gauss-Legendre rule on each sample's field (``bodil.tumor.thresholds``; needs the sigmoid likelihood,
            which is normalised in the thresholds, and ``inner="forward"`` or ``"surrogate"``, whose field does
            not depend on them); ``"fixed"``: held at the MAP's values. ``None``: marginalised where that is
            possible, fixed otherwise (the summary's ``posterior.thresholds`` says which).
        threshold_nodes: Gauss-Legendre nodes per threshold of the marginalisation; ``None``: the first of 8,
            16, 32 whose error at the MAP (against twice the nodes) is below 0.01 nats
            (``bodil.tumor.pipeline.threshold_rule``). The summary gives that error.
        inner: how ``log p(theta | D)`` is evaluated for BASIS. ``"forward"``: the limit
            ``lambda_PDE -> infinity`` of the mode approximation, where ``u*(theta)`` is the solution of the PDE
            (an explicit Fisher-Kolmogorov run, ``bodil.forward.fk``) and
            ``log p(theta | D) = log p(D | u_FK(theta)(T), theta) + log p(theta)``. ``"odil"``: the mode
            approximation at finite ``lambda_PDE`` (eq. 12), an inner ODIL solve per evaluation (Gauss-Newton
            with adaptive Levenberg-Marquardt damping; far slower than a forward run). ``"surrogate"``: as
            ``"forward"`` with the neural surrogate (``bodil.forward.surrogate.pretrained()``, placed on the
            patient by ``bodil.tumor.surrogate``) in place of the FK run.
        initializer: where the MAP's forward fit starts. ``"forward"``: from the segmentation's geometry
            (``bodil.tumor.model.initial_guess``); ``"surrogate"``: from an L-BFGS-B fit through the neural
            surrogate with its exact gradient (Weidner et al. 2025). Either way the MAP is then the forward
            limit's mode (Nelder-Mead on explicit FK runs to its tolerance, ``bodil.tumor.model.fit_forward``).
        inner_ftol: relative accuracy of each inner solve's log density.
        inner_iterations: Gauss-Newton iterations of each inner solve. A solve stopped at the cap gives a
            lower bound of the mode value (any field gives one); the summary counts them.
        inner_cg_iterations: conjugate-gradient iterations per inner Gauss-Newton step.
        map_iterations: Gauss-Newton iterations of the ODIL refinement of the MAP (joint over field and
            parameters, from the forward fit). The refinement replaces the forward fit only when it converges
            (the summary says which MAP was used). ``None``: 10 with ``inner="odil"`` (the finite-lambda_PDE
            posterior, whose mode it is) and 0 otherwise (the forward limit's mode is the forward fit).
        batch_size: with ``inner="forward"``, BASIS evaluates up to this many particles in one vmapped explicit
            run (``ForwardLikelihood.batch``; the same steps as one at a time, equal to rounding): the bound on
            its memory, about ``batch_size * grid^3 * 80`` bytes. 1: one particle at a time (``solve_fk``).
            16 is the fastest measured on 2 CPU cores (benchmarks/batching.py); a GPU wants larger batches.
            With ``inner="surrogate"``, the same number of particles go through the network in one call.
        dtype: ``"float64"`` or ``"float32"``, the precision of BASIS's explicit forward runs (``inner="forward"``)
            and of the fields they keep; the likelihood is summed in float64 either way, and the MAP, its Hessians
            and the ODIL solves stay in float64. float32 halves the runs' memory (the larger batches a GPU wants);
            on a synthetic patient it moved the log-likelihoods by at most 2.5e-5 and gave the same origin
            posterior and ensemble CTVs (docs/scaling.md).

    Raises:
        InputError: a size below its minimum, an unknown ``inner``, ``initializer``, ``likelihood`` or ``dtype``, a
            non-positive length or weight, or posterior parameters that the MAP does not fit.
    """

    grid: int = 24
    max_spacing_mm: float | None = None
    time_points: int = 12
    num_samples: int = 128
    seed: int = 0
    t_final: float = 100.0
    margins_mm: tuple = (10.0, 15.0, 20.0)
    box_scale: float = 1.5
    map_parameters: tuple | None = None
    posterior_parameters: tuple | None = None
    likelihood: str = "sigmoid"
    lambda_pde: float = 1e3
    lambda_ic: float = 200.0
    sigma: float = 0.05
    seed_dt2: float | None = None
    error_correlation_mm: float | None = 25.0
    beta: float = 0.7
    gamma: float = 1.5
    lmax: int = 3
    thresholds: str | None = None
    threshold_nodes: int | None = None
    inner: str = "forward"
    initializer: str = "forward"
    inner_ftol: float = 1e-6
    inner_iterations: int = 6
    inner_cg_iterations: int = 100
    map_iterations: int | None = None
    batch_size: int = 16
    dtype: str = "float64"

    @classmethod
    def paper(cls, **overrides) -> "CTVSettings":
        """The sizes of Amoudruz et al. 2025: 64^3 x 128, 512 samples."""
        return cls(**{"grid": 64, "time_points": 128, "num_samples": 512, **overrides})

    def box_points(self, side_mm: float) -> int:
        """Points per axis of a box of side ``side_mm``: ``grid``, or more where ``max_spacing_mm`` asks."""
        if self.max_spacing_mm is None:
            return self.grid
        return max(self.grid, int(math.ceil(side_mm / self.max_spacing_mm - 1e-9)))

    @property
    def odil_map_iterations(self) -> int:
        """``map_iterations`` resolved: 10 with ``inner="odil"`` and 0 otherwise when it is ``None``."""
        if self.map_iterations is None:
            return 10 if self.inner == "odil" else 0
        return self.map_iterations

    @property
    def effective_seed_dt2(self) -> float:
        """``seed_dt2`` resolved (mm^2): ``SEED_DT2``, or the surrogate's training seed with ``inner="surrogate"``
        when it is ``None``."""
        if self.seed_dt2 is not None:
            return float(self.seed_dt2)
        return float(PAPER_SEED_DT2) if self.inner == "surrogate" else SEED_DT2

    @property
    def threshold_treatment(self) -> str:
        """``thresholds`` resolved: ``"sampled"`` when the posterior samples them, else ``"marginalised"`` or
        ``"fixed"`` (``None``: marginalised where possible)."""
        if {"tau_lo", "tau_up"} & set(self.posterior_parameters):
            return "sampled"
        if self.thresholds is not None:
            return self.thresholds
        return "marginalised" if self._marginalisable() is None else "fixed"

    def _marginalisable(self) -> str | None:
        """Why the thresholds cannot be marginalised in this run (``None``: they can)."""
        if self.likelihood != "sigmoid":
            return ("the interval hinge (likelihood='interval') is not normalised in the thresholds; use "
                    "likelihood='sigmoid'")
        if self.inner == "odil":
            return ("the inner ODIL solve's field depends on the thresholds (one solve per quadrature node); use "
                    "inner='forward' or 'surrogate'")
        return None

    @property
    def inner_damping(self) -> float:
        """Starting Levenberg-Marquardt damping of the ODIL solves: a tenth of the largest curvature per voxel
        of the data term, ``1 / (4 sigma^2)`` for both likelihoods' sigmoid (why damping: docs/tumor.md)."""
        return 0.1 / (4.0 * self.sigma**2)

    def __post_init__(self):
        try:
            self._check()
        except (TypeError, ValueError) as err:
            raise InputError(str(err)) from None

    def _check(self) -> None:
        where = "CTVSettings"
        for name, low in (("grid", 8), ("time_points", 4), ("num_samples", 4), ("lmax", 1), ("inner_iterations", 1),
                          ("inner_cg_iterations", 1), ("map_iterations", 0), ("seed", 0), ("batch_size", 1),
                          ("threshold_nodes", 2)):
            if name in ("map_iterations", "threshold_nodes") and getattr(self, name) is None:
                continue
            object.__setattr__(self, name, _checks.integer(where, name, getattr(self, name), low))
        _checks.choice(where, "inner", self.inner, INNER)
        _checks.choice(where, "initializer", self.initializer, INITIALIZERS)
        surrogate = "surrogate" in (self.inner, self.initializer)
        if self.map_parameters is None:  # the surrogate was trained at Dw / Dg = 10
            object.__setattr__(self, "map_parameters", tuple(p for p in MAP_PARAMETERS
                                                             if not (surrogate and p == "ratio")))
        if self.posterior_parameters is None:  # the defaults that the MAP fits
            object.__setattr__(self, "posterior_parameters", tuple(p for p in POSTERIOR_PARAMETERS
                                                                   if p in ORIGIN or p in self.map_parameters))
        _checks.choice(where, "likelihood", self.likelihood, LIKELIHOODS)
        _checks.choice(where, "dtype", self.dtype, DTYPES)
        if self.thresholds is not None:
            _checks.choice(where, "thresholds", self.thresholds, THRESHOLD_TREATMENTS)
            sampled = sorted({"tau_lo", "tau_up"} & set(self.posterior_parameters))
            if sampled:
                raise ValueError(f"{where}: thresholds={self.thresholds!r} but the posterior samples {sampled}; "
                                 f"set thresholds=None (bodil ctv: leave out --thresholds) or sample fewer.")
            why = self._marginalisable()
            if self.thresholds == "marginalised" and why:
                raise ValueError(f"{where}: the thresholds cannot be marginalised here: {why}, or "
                                 f"thresholds='fixed'.")
        if self.seed_dt2 is not None:
            _checks.positive(where, "seed_dt2", self.seed_dt2)
        for name in ("t_final", "box_scale", "sigma", "beta", "gamma", "inner_ftol"):
            _checks.positive(where, name, getattr(self, name))
        for name in ("lambda_pde", "lambda_ic"):
            _checks.positive(where, name, getattr(self, name), allow_zero=True)
        if self.max_spacing_mm is not None:
            _checks.positive(where, "max_spacing_mm", self.max_spacing_mm)
        if self.error_correlation_mm is not None and not (isinstance(self.error_correlation_mm, (int, float))
                                                          and self.error_correlation_mm > 0):
            raise ValueError(f"{where}: error_correlation_mm must be a positive length in mm or None (no "
                             f"tempering), got {self.error_correlation_mm!r}.")
        for name in ("map_parameters", "posterior_parameters"):
            unknown = sorted(set(getattr(self, name)) - set(PARAMETERS))
            if unknown or not getattr(self, name):
                raise ValueError(f"{where}: {name} must be a non-empty selection of {', '.join(PARAMETERS)}; got "
                                 f"{tuple(getattr(self, name))} (unknown: {unknown}).")
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not set(self.posterior_parameters) <= set(self.map_parameters) | set(ORIGIN):
            raise ValueError(f"{where}: posterior parameters {self.posterior_parameters} must be among the MAP "
                             f"parameters {self.map_parameters} or the origin {ORIGIN}; fit them too (map_parameters, bodil ctv "
                             f"--fit) or sample fewer.")
        if self.inner == "surrogate" and self.effective_seed_dt2 != PAPER_SEED_DT2:
            raise ValueError(f"{where}: the neural surrogate was trained with the paper's seed (Dt^2 = "
                             f"{PAPER_SEED_DT2:g} mm^2) and cannot use seed_dt2={self.seed_dt2!r}; leave seed_dt2 "
                             f"unset (bodil ctv: no --seed-dt2) or use inner='forward'.")
        if "ratio" in self.map_parameters and surrogate:
            raise ValueError(f"{where}: the neural surrogate was trained at Dw / Dg = 10 and cannot vary the ratio; "
                             f"drop ratio from map_parameters and posterior_parameters (bodil ctv --fit, --sample) or "
                             f"use inner='forward' and initializer='forward'.")
        if "M" in self.map_parameters and surrogate:
            raise ValueError(f"{where}: the neural surrogate was trained with the paper's seed (M = 1500) and cannot "
                             f"vary the seed's mass M; drop M from map_parameters (bodil ctv --fit) or use "
                             f"inner='forward' and initializer='forward'.")


__all__ = ["CTVSettings"]
