"""The GliODIL posterior for one patient (Amoudruz et al. 2025, sec. 3.4, eq. 26-32).

On a cubic box of side ``L`` mm around the tumour (``n^3`` cell-centred points, spacing ``h = L / n``) and
``n_t`` time nodes on ``[0, T]`` days, the unknowns are the tumour-cell concentration ``u(t, x)`` and

    theta = (Dw [mm^2/day], ratio = Dw / Dg, rho [1/day], M [mm^3], x0, y0, z0 [mm, box frame], tau_lo, tau_up).

The posterior is (eq. 32, with GliODIL's time scaled to ``[0, 1]``)

    -log p(u, theta | D) = lambda_PDE T^2 sum r^2 + lambda_IC sum (u(0) - u_IC)^2 + L(D; u, theta) - log p(theta),

* ``r``: the Crank-Nicolson residual of ``u_t = div(D grad u) + rho u (1 - u)`` (eq. 26, 33-35) with
  ``D = Dw c_w + Dg c_g`` (eq. 29) and no flux across faces that touch a point with ``c_w + c_g < 0.1``
  (no flux into CSF or background). The factor ``T^2`` makes ``lambda_PDE`` the weight of the residual of
  the equation in the scaled time ``t / T`` that GliODIL uses, so ``lambda_PDE = 1e3`` means what it means in
  the paper whatever ``T`` is;
* ``u_IC``: the clipped Gaussian seed of eq. 27-28 (``Dt^2 = 15 mm^2`` here, the paper's; the pipeline's default
  is 4 mm^2, ``CTVSettings.seed_dt2``) at ``(x0, y0, z0)`` with mass ``M``:
  ``min(1, (M / 1500) g)``, ``g`` the paper's seed (``M = 1500``, cut where it is at most 0.1), so that a smaller
  seed keeps the paper's shape at a lower height instead of being cut away. ``M = 1500`` (the paper's) unless
  inferred: a tumour's visible size after ``T`` days depends on its seed as much as on its growth (a seed of
  mass 40 lags the paper's by about 12 mm after 300 days at ``D = 0.2``, ``rho = 0.03``), so a fixed seed
  biases ``rho T`` and ``D T`` (docs/tumor.md);
* ``L``: the interval likelihood of eq. 30-31 (``sigma = 0.05``) on the segmentation classes at ``t = T``,
  or the smooth three-class model of appendix B (``likelihood="sigmoid"``).

Only ``D T`` and ``rho T`` are identifiable from one image; ``T`` is fixed (default 100 days).

The field is a concentration: the posterior is restricted to ``0 <= u <= 1`` (``TumorPosterior.field_bounds``;
the ODIL solves are projected Gauss-Newton steps on that box). Unrestricted, the likelihood drives the field
below zero where the segmentation says "healthy" (docs/maths.md, "Non-negative concentrations").
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import distributions as dist

from ..forward.crank_nicolson import crank_nicolson_march
from ..forward.fk import BatchedFK, solve_fk
from ..grid import Grid
from ..likelihood import IntervalHinge, ThreeClassSigmoid
from ..posterior import Posterior
from ..prior import Params, PDEPrior, Uniform
from ..residuals import clipped_gaussian, clipped_gaussian_profile, fisher_kpp
from ..stencil import TISSUE_THRESHOLD
from .segmentation import CORE, EDEMA, IGNORE
from .thresholds import binned_log_likelihoods

PARAMETERS = ("Dw", "ratio", "rho", "M", "x0", "y0", "z0", "tau_lo", "tau_up")
ORIGIN = ("x0", "y0", "z0")
UNITS = {"Dw": "mm^2/day", "Dg": "mm^2/day", "ratio": "", "rho": "1/day", "M": "mm^3", "x0": "mm", "y0": "mm", "z0": "mm",
         "tau_lo": "", "tau_up": "", "T": "day"}


FIELD_BOUNDS = (0.0, 1.0)
"""The physical range of the concentration: the tumour posterior's support in ``u``."""


class TumorPosterior(Posterior):
    """The GliODIL posterior restricted to concentrations in ``[0, 1]``: ``p(u, theta | D)`` times the indicator
    of ``0 <= u <= 1`` (renormalised). ``field_bounds`` is read by the Gauss-Newton solver
    (``bodil.optimize.gauss_newton.GaussNewton(bounds="auto")``), which then keeps every iterate in the box;
    its mode is the constrained mode. Densities are those of ``Posterior`` (inside the box)."""

    field_bounds = FIELD_BOUNDS


def _seed_scale(mass: float):
    """``theta -> M / mass``: the seed's scale relative to the reference seed of mass ``mass`` (1 when ``theta``
    has no ``M``: the reference seed)."""
    return lambda theta, grid: (theta["M"] / mass) if "M" in theta else 1.0


def default_priors(origin_lower, origin_upper) -> dict[str, dist.Distribution]:
    """Priors on theta: log-uniform ``Dw`` in [0.001, 10] mm^2/day, ``Dw/Dg`` in [2, 1000] (GliODIL's [10, 1000]
    widened to include the 5 of Swanson et al. 2000, "A quantitative model for differential motility of gliomas in
    grey and white matter"), ``rho`` in [0.001, 1] /day (DESIGN.md), the seed's mass ``M`` in [1, 3000] mm^3
    (from a few cells' worth to twice the paper's seed), origin uniform over ``[origin_lower, origin_upper]`` (mm; ``tumor_model``
    uses the bounding box of the visible tumour, core and edema, widened by one grid point: the tumour started
    inside what is now visible. Not the core's box: growth into white matter moves the core away from the
    origin, by 5 mm on one of the benchmark's synthetic patients, whose small core's box then excluded the
    truth), and
    ``tau_lo`` in [0.05, 0.5], ``tau_up`` in [0.5, 0.95] so that ``0 < tau_lo < tau_up < 1``."""
    lo, up = np.asarray(origin_lower, float), np.asarray(origin_upper, float)
    return {"Dw": dist.LogUniform(1e-3, 10.0), "ratio": dist.LogUniform(2.0, 1000.0),
            "rho": dist.LogUniform(1e-3, 1.0), "M": dist.LogUniform(1.0, 3000.0),
            **{c: Uniform(float(a), float(b)) for c, a, b in zip(ORIGIN, lo, up)}, **threshold_priors()}


def threshold_priors() -> dict[str, dist.Distribution]:
    """The visibility thresholds' priors: ``tau_lo`` uniform in [0.05, 0.5], ``tau_up`` in [0.5, 0.95]."""
    return {"tau_lo": Uniform(0.05, 0.5), "tau_up": Uniform(0.5, 0.95)}


@dataclasses.dataclass
class TumorModel:
    """The GliODIL posterior on one box, with everything needed to start and read it.

    Attributes:
        posterior: the ``TumorPosterior`` over ``(u, theta)`` (a ``bodil.Posterior`` on ``0 <= u <= 1``).
        grid: the space-time grid (``t`` in days, ``x, y, z`` in mm of the box frame).
        wm, gm: white- and grey-matter fractions on the box points.
        classes: segmentation classes on the box points (0 healthy, 1 edema, 2 core, -1 ignored).
        settings: the numbers that define the model (for reports).
    """

    posterior: Posterior
    grid: Grid
    wm: np.ndarray
    gm: np.ndarray
    classes: np.ndarray
    settings: dict

    @property
    def space(self) -> Grid:
        return self.grid.subgrid(self.grid.names[1:])

    @property
    def spacing(self) -> float:
        return float(self.grid.spacing[1])

    def diffusivity(self, theta) -> Any:
        """``D = Dw c_w + (Dw / ratio) c_g`` (eq. 29) on the box points."""
        return theta["Dw"] * self.wm + theta["Dw"] / theta["ratio"] * self.gm

    def initial_condition(self, theta) -> Any:
        """The clipped Gaussian seed of eq. 27-28 at ``theta``'s origin, of mass ``theta["M"]``."""
        s = self.settings
        return clipped_gaussian_profile(theta, self.grid, ORIGIN, s["mass"], s["dt2"], scale=_seed_scale(s["mass"]))

    def final_log_likelihood(self, u_final, theta) -> float:
        """``log p(D | u(T) = u_final, theta)``: the data term on the field at the imaging time."""
        return float(self._compiled_final_log_likelihood(jnp.asarray(u_final), theta))

    @functools.cached_property
    def _compiled_final_log_likelihood(self):
        likelihoods = self.posterior.likelihoods  # one compilation, not one per operation and shape (eager)
        return jax.jit(lambda u_final, theta: sum(lik.log_prob(u_final[None], theta) for lik in likelihoods))

    def forward(self, theta, dtype=None) -> jnp.ndarray:
        """Explicit finite-difference solution (``bodil.forward.fk``) at every time node: the ODIL starting field."""
        theta = self.posterior.params.merge(theta)
        u0 = jnp.asarray(self.initial_condition(theta), dtype)
        dw = float(theta["Dw"])
        return solve_fk(u0, self.wm, self.gm, self.spacing, dw=dw, dg=dw / float(theta["ratio"]),
                        rho=float(theta["rho"]), t_final=self.settings["t_final"], times=self.grid.coordinates(0),
                        tissue_threshold=TISSUE_THRESHOLD)

    def discrete_forward(self, theta, dtype=None) -> jnp.ndarray:
        """The Crank-Nicolson solution of the model's own residual at ``theta`` (``bodil.forward.crank_nicolson``)
        from the seed, clipped to ``[0, 1]``: zero PDE and initial-condition terms, the ODIL solves' start."""
        theta = {k: jnp.asarray(v, dtype) for k, v in self.posterior.params.merge(theta).items()}
        return self._compiled_discrete_forward(theta)

    @functools.cached_property
    def _compiled_discrete_forward(self):
        residual = self.posterior.prior.residual

        def march(theta):
            u0 = self.initial_condition(theta)
            return crank_nicolson_march(residual, u0, theta, self.grid, bounds=FIELD_BOUNDS)

        return jax.jit(march)

    def with_fixed(self, theta: dict, infer=ORIGIN) -> "TumorModel":
        """The same model with every parameter not in ``infer`` fixed at its value in ``theta``."""
        params = self.posterior.params
        entries = {}
        for name in PARAMETERS:
            if name in infer:
                if name not in params.priors:
                    raise ValueError(f"TumorModel.with_fixed: {name!r} has no prior in this model.")
                entries[name] = params.priors[name]
            elif name in theta:
                entries[name] = float(theta[name])
            elif name == "M" and name not in params.fixed:  # an inferred seed mass not given: the reference seed
                entries[name] = self.settings["mass"]
            else:
                entries[name] = params.fixed[name]
        post = type(self.posterior)(self.posterior.prior, self.posterior.likelihoods, Params(**entries))
        return dataclasses.replace(self, posterior=post)


def tumor_model(wm, gm, classes, side_mm: float, *, nt: int = 32, t_final: float = 100.0,
                infer=PARAMETERS, fixed: dict | None = None, priors: dict | None = None,
                lambda_pde: float = 1e3, lambda_ic: float = 200.0, sigma: float = 0.05,
                likelihood: str = "interval", mass: float = 1500.0, dt2: float = 15.0) -> TumorModel:
    """Build the GliODIL posterior on a cubic box.

    Args:
        wm, gm: white/grey-matter fractions on the ``n^3`` box points (``bodil.tumor.Crop.to_box``).
        classes: segmentation classes on the box (0 healthy, 1 edema, 2 core); points without tissue
            (``c_w + c_g < TISSUE_THRESHOLD``, ``bodil.stencil``) are ignored by the likelihood.
        side_mm: side of the box in mm (spacing ``side_mm / n``).
        nt: time nodes on ``[0, t_final]`` (the paper: 128).
        t_final: imaging time ``T`` in days.
        infer: the parameters with priors (the rest are fixed, see ``fixed``).
        fixed: values of the parameters not inferred (defaults: ``ratio = 10``, ``tau_lo = 0.25``,
            ``tau_up = 0.675``, DESIGN.md).
        priors: overrides of ``default_priors``.
        lambda_pde, lambda_ic, sigma: eq. 32 and 30 (paper: 1e3, 200, 0.05).
        likelihood: ``"interval"`` (eq. 30, the paper's) or ``"sigmoid"`` (eq. 36).
        mass, dt2: the reference seed's ``M`` (mm^3; also the value of ``M`` when it is not inferred) and ``Dt^2``
            (mm^2) (eq. 28); a seed of mass ``M`` is the reference scaled by ``M / mass`` before the clip at 1.
    """
    wm, gm, classes = np.asarray(wm, float), np.asarray(gm, float), np.asarray(classes)
    if wm.ndim != 3 or len(set(wm.shape)) != 1 or gm.shape != wm.shape or classes.shape != wm.shape:
        raise ValueError(f"tumor_model: wm, gm and classes must be the same cube (n, n, n); got {wm.shape}, "
                         f"{gm.shape}, {classes.shape}. Resample with bodil.tumor.Crop.to_box.")
    if not np.any(classes == CORE):
        raise ValueError("tumor_model: the segmentation has no core voxel inside the box.")
    unknown = set(infer) - set(PARAMETERS)
    if unknown:
        raise ValueError(f"tumor_model: unknown parameters {sorted(unknown)}; choose from {PARAMETERS}.")
    if likelihood not in ("interval", "sigmoid"):
        raise ValueError(f"tumor_model: likelihood must be 'interval' or 'sigmoid', got {likelihood!r}.")
    n = wm.shape[0]
    grid = Grid(shape=(nt, n, n, n), lower=0.0, upper=(t_final, side_mm, side_mm, side_mm),
                names=("t", "x", "y", "z"), layout=("node", "cell", "cell", "cell"))
    tissue = wm + gm
    classes = np.where(tissue >= TISSUE_THRESHOLD, classes, IGNORE).astype(np.int8)
    visible = np.argwhere(classes >= EDEMA)
    h = side_mm / n
    lower, upper = (visible.min(axis=0) - 0.5) * h, (visible.max(axis=0) + 1.5) * h  # one point wider (cells)
    all_priors = {**default_priors(lower, upper), **(priors or {})}
    all_fixed = {"ratio": 10.0, "tau_lo": 0.25, "tau_up": 0.675, "M": float(mass), **(fixed or {})}
    entries = {}
    for name in PARAMETERS:
        if name in infer:
            entries[name] = all_priors[name]
        elif name in all_fixed:
            entries[name] = float(all_fixed[name])
        else:
            raise ValueError(f"tumor_model: {name!r} is neither inferred nor given in fixed=.")
    wm_j, gm_j = jnp.asarray(wm), jnp.asarray(gm)
    residual = fisher_kpp(lambda th, g: th["Dw"] * wm_j + th["Dw"] / th["ratio"] * gm_j, "rho",
                          tissue=jnp.asarray(tissue), tissue_threshold=TISSUE_THRESHOLD)
    prior = PDEPrior(residual, grid, beta=lambda_pde * t_final**2, reduction="sum",
                     initial=clipped_gaussian(ORIGIN, mass, dt2, scale=_seed_scale(mass)), beta_initial=lambda_ic)
    cls = IntervalHinge if likelihood == "interval" else ThreeClassSigmoid
    lik = cls(lambda u, th: u[-1], classes, "tau_lo", "tau_up", sigma=sigma)
    post = TumorPosterior(prior, lik, Params(**entries))
    settings = dict(n=n, nt=nt, side_mm=float(side_mm), spacing_mm=float(h), t_final=float(t_final),
                    lambda_pde=lambda_pde, lambda_ic=lambda_ic, sigma=sigma, likelihood=likelihood, mass=mass,
                    dt2=dt2, infer=tuple(infer), fixed={k: v for k, v in entries.items() if k not in infer})
    return TumorModel(post, grid, wm, gm, classes, settings)


def initial_guess(model: TumorModel) -> dict:
    """A starting theta from the segmentation alone.

    The origin is the core's centre of mass. For the growth parameters, a Fisher-KPP front moves at
    ``c = 2 sqrt(D rho)`` and decays ahead of itself over ``sqrt(D / rho)``; with ``R_e`` the radius of the
    visible tumour (edema + core) and ``dR`` the thickness of the edema rim, ``sqrt(D rho) ~ R_e / (2 T)`` and
    ``sqrt(D / rho) ~ dR``, so ``D ~ R_e dR / (2 T)`` and ``rho ~ R_e / (2 T dR)`` (clipped to the priors).
    """
    h, t = model.spacing, model.settings["t_final"]
    voxel = h**3
    core = model.classes == CORE
    visible = model.classes >= EDEMA
    r_core = (3 * core.sum() * voxel / (4 * np.pi)) ** (1 / 3)
    r_vis = (3 * visible.sum() * voxel / (4 * np.pi)) ** (1 / 3)
    d_r = max(r_vis - r_core, h)
    theta = {"Dw": r_vis * d_r / (2 * t), "rho": r_vis / (2 * t * d_r)}
    centre = (np.argwhere(core).mean(axis=0) + 0.5) * h
    theta.update(zip(ORIGIN, centre))
    theta.update(ratio=10.0, tau_lo=0.25, tau_up=0.675, M=model.settings["mass"])
    params = model.posterior.params
    out = {}
    for name in params.priors:
        prior = params.priors[name]
        lo, up = float(prior.support.lower_bound), float(prior.support.upper_bound)
        pad = 1e-3 * (up - lo)
        out[name] = float(np.clip(theta[name], lo + pad, up - pad))
    return out


class ForwardFit(NamedTuple):
    """What ``fit_forward`` found: the parameters, whether Nelder-Mead met its tolerances, its message, the
    number of forward runs and the objective ``-log p(D | u_FK(theta)(T), theta) - log p(theta)`` reached."""

    theta: dict
    converged: bool
    message: str
    evaluations: int
    loss: float


def forward_objective(model: TumorModel):
    """``w -> -log p(D | u_FK(theta)(T), theta) - log p(theta)``, ``theta`` the inferred parameters (in the order of
    the priors) from the unconstrained coordinates ``w``: one explicit run to the imaging time
    (``ForwardLikelihood.batch``, the steps of ``TumorModel.forward`` equal to rounding) and the transforms and the
    prior compiled, so one evaluation is two compiled calls. A non-finite value is returned as ``1e300``."""
    params = model.posterior.params
    names = list(params.priors)
    run = ForwardLikelihood(model)

    @jax.jit
    def constrain(w):
        theta = params.constrain({k: w[i] for i, k in enumerate(names)})
        return {k: v[None] for k, v in theta.items()}, params.log_prob(theta)

    def objective(w):
        theta, log_prior = constrain(jnp.asarray(w, jnp.float64))
        log_likelihood, _ = run.batch(theta)
        value = -float(log_likelihood[0]) - float(log_prior)
        return value if np.isfinite(value) else 1e300

    return objective


def fit_forward(model: TumorModel, theta0: dict, *, max_evaluations: int | None = None, xatol: float = 1e-3,
                fatol: float = 1e-3) -> ForwardFit:
    """The MAP of the forward limit: maximise ``log p(D | u_FK(theta)(T), theta) + log p(theta)`` over the inferred
    parameters by Nelder-Mead in unconstrained coordinates.

    Each evaluation is one explicit Fisher-Kolmogorov run to the imaging time (``ForwardLikelihood.batch``: the
    steps of ``TumorModel.forward`` in one compiled call, equal to rounding; a few hundredths of a second on a
    24^3 box). Converged means the simplex is smaller than ``xatol`` (unconstrained units, about a 0.1% relative
    change of a log-scaled parameter) and its objective values differ by less than ``fatol``.

    Args:
        model: the tumour model.
        theta0: starting values of the inferred parameters.
        max_evaluations: forward runs allowed (default ``400`` per inferred parameter).
        xatol, fatol: Nelder-Mead's tolerances.
    """
    import scipy.optimize

    params = model.posterior.params
    names = list(params.priors)
    z0 = params.unconstrain({k: jnp.asarray(theta0[k], jnp.float64) for k in names})
    w0 = np.array([float(z0[k]) for k in names])
    objective = forward_objective(model)
    budget = 400 * len(names) if max_evaluations is None else int(max_evaluations)
    res = scipy.optimize.minimize(objective, w0, method="Nelder-Mead",
                                  options={"maxfev": budget, "xatol": xatol, "fatol": fatol,
                                           "initial_simplex": w0 + np.vstack([np.zeros(len(w0)), 0.3 * np.eye(len(w0))])})
    theta = params.constrain({k: jnp.asarray(v) for k, v in zip(names, res.x)})
    return ForwardFit({k: float(v) for k, v in theta.items()}, bool(res.success), str(res.message), int(res.nfev),
                      float(res.fun))


class ForwardLikelihood:
    """``theta -> (log p(D | u_FK(theta)(T), theta), u_FK(theta)(T))``: the mode approximation in the limit
    ``lambda_PDE -> infinity``, with an explicit Fisher-Kolmogorov run as the field (or, given ``field``, the
    neural surrogate's); counts its evaluations. ``batch`` evaluates a stacked batch of thetas in one vmapped
    run (``bodil.forward.fk.BatchedFK``: the same steps, equal to rounding) or one vmapped call of the
    surrogate's field (a pure JAX function of theta), ``cost`` is a run's step count
    (``bodil.inference.BatchExecutor(cost=...)``). ``dtype``: of the explicit run's field (float32 halves its
    memory; the likelihood is summed in float64). With ``thresholds`` (a ``ThresholdQuadrature``) the
    log-likelihood is evaluated at every node of the rule on the same field: a vector ``(K,)`` per theta
    (``ThresholdQuadrature.marginal`` integrates it)."""

    def __init__(self, model, field=None, dtype=jnp.float64, thresholds=None):
        self.model = model
        self.field = field
        self.dtype = jnp.dtype(dtype)
        self.thresholds = thresholds
        self.evaluations, self.wall_time = 0, 0.0

    def __call__(self, theta):
        start = time.perf_counter()
        full = self.model.posterior.params.merge({k: jnp.asarray(v) for k, v in theta.items()})
        if self.field is None:
            u_final = jnp.asarray(self.model.forward(full, dtype=self.dtype)[-1], jnp.float64)
        else:
            u_final = jnp.asarray(self.field(full), jnp.float64)
        value = self._final_log_likelihood(u_final, full)
        self.evaluations += 1
        self.wall_time += time.perf_counter() - start
        return value, np.asarray(u_final, np.float32)

    def batch(self, thetas: dict):
        """``{name: (m,)}`` -> ``(log L (m,), u(T) (m, n, n, n) float32)``, as device arrays: one vmapped explicit
        run (``BatchedFK``) or one vmapped call of the surrogate's field for the whole batch (every row counts as
        an evaluation, an executor's padding included)."""
        start = time.perf_counter()
        if self.field is None:
            self.cost(thetas)  # refuses runs of too many steps, as the serial path does
        values, fields = jax.block_until_ready(self._batched({k: jnp.asarray(v) for k, v in thetas.items()}))
        self.evaluations += int(values.shape[0])
        self.wall_time += time.perf_counter() - start
        return values, fields

    def cost(self, theta):
        """Steps of the explicit run at ``theta`` (an array for a stacked batch)."""
        full = self.model.posterior.params.merge(theta)
        return self._solver.steps(full["Dw"], np.divide(full["Dw"], full["ratio"]), full["rho"])

    @functools.cached_property
    def _solver(self):
        m = self.model
        return BatchedFK(m.wm, m.gm, m.spacing, m.grid.coordinates(0), dtype=self.dtype, final_only=True)

    @functools.cached_property
    def _node_log_likelihoods(self):
        """``(u(T), theta) -> log L`` at the model's thresholds, or at every node of ``thresholds``
        (``bodil.tumor.thresholds.binned_log_likelihoods``)."""
        if self.thresholds is None:
            return self.model._compiled_final_log_likelihood
        (lik,) = self.model.posterior.likelihoods
        if not isinstance(lik, ThreeClassSigmoid):
            raise ValueError(f"ForwardLikelihood: the thresholds can be integrated out of the three-class sigmoid "
                             f"likelihood only (normalised in them), not {type(lik).__name__}.")
        at_nodes = binned_log_likelihoods(lik, self.thresholds)
        return jax.jit(lambda u_final, theta: at_nodes(u_final[None], theta))

    def _final_log_likelihood(self, u_final, theta):
        if self.thresholds is None:
            return self.model.final_log_likelihood(u_final, theta)
        return np.asarray(self._node_log_likelihoods(u_final, theta), np.float64)

    @functools.cached_property
    def _batched(self):
        model = self.model
        merge = model.posterior.params.merge
        at_nodes = self._node_log_likelihoods

        def prepare(theta):
            full = merge(theta)
            return model.initial_condition(full), *(jnp.asarray(v) for v in (full["Dw"], full["Dw"] / full["ratio"],
                                                                            full["rho"]))

        def final_log_likelihood(u, theta):
            return at_nodes(u, merge(theta))

        if self.field is not None:  # the surrogate's field: a pure JAX function of theta
            field = self.field

            def run_field(thetas):
                u = jax.vmap(lambda th: field(merge(th)))(thetas).astype(jnp.float64)
                return jax.vmap(final_log_likelihood)(u, thetas), u.astype(jnp.float32)

            return jax.jit(run_field)

        def run(solver, thetas):  # the solver is an argument: its tissue maps are inputs, not folded constants
            u = solver.solve_batch(*jax.vmap(prepare)(thetas)).astype(jnp.float64)
            return jax.vmap(final_log_likelihood)(u, thetas), u.astype(jnp.float32)

        compiled = jax.jit(run)
        return lambda thetas: compiled(self._solver, thetas)

    def summary(self) -> dict:
        """The method, the number of evaluations and their total wall time (the layout of
        ``ModeApproximation.summary``; every evaluation counts as one converged inner solve)."""
        method = "forward (lambda_PDE -> infinity)" if self.field is None else "neural surrogate (forward limit)"
        return {"method": method, "evaluations": self.evaluations,
                "inner_solves": self.evaluations, "unconverged": 0, "wall_time": self.wall_time}
