"""Model discrepancy of the growth parameters and the origin: from the model's ``Dw T``, ``rho T`` and initial
position to the patient's.

One image identifies the growth parameters only through bodil's model: its seed, its tissue maps and diffusivity
faces, the box's resolution, the explicit Fisher-Kolmogorov solver. On tumours grown otherwise the model's values
differ from the truth by a factor that the posterior cannot see, since it conditions on the model being right.
Following Kennedy and O'Hagan (2001), *Bayesian calibration of computer models*, in the space of the parameters:
the discrepancy is a random factor,

    log q_patient = log q_model + delta,    delta ~ N(mu, sigma^2),    q = Dw T or rho T,

so the patient's posterior of ``log q`` is the model's posterior convolved with ``N(mu, sigma^2)``: over the
samples ``q_i``, the mixture ``(1/n) sum_i N(log q_i + mu, sigma^2)``. ``(mu, sigma)`` are fitted on a cohort of
known truth by maximum marginal likelihood (type II),

    max_{mu, sigma}  sum_p log( (1/n_p) sum_i N(log q_p - log q_{p,i} - mu; 0, sigma^2) ),

and hold only for the settings and the kind of patients they were fitted on (``GROWTH_DISCREPANCY``).

The initial position has a model error of its own: the seed is smeared over the box's voxels, and the model's
tissue, ``Dw / Dg`` and thresholds move where it puts the tumour's start. Its discrepancy is an isotropic normal
whose sd scales with the box spacing ``h`` (mm),

    x_patient = x_model + e,    e ~ N(0, (a h)^2 I_3),

so the patient's posterior of the origin is the model's samples convolved with it: per axis the mixture
``(1/n) sum_i N(x_i, (a h)^2)``, and in 3-D the ellipsoid of its mean and covariance ``C + (a h)^2 I`` (``C`` the
samples' covariance). ``a`` is fitted by maximum marginal likelihood on the same cohort, each patient's
posterior taken as the normal of its mean ``m_p`` and covariance ``C_p``:

    max_a  sum_p log N(x_p - m_p; 0, C_p + (a h_p)^2 I)    (``ORIGIN_DISCREPANCY``).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats


class Discrepancy(NamedTuple):
    """``log q_patient - log q_model ~ N(mu, sigma^2)`` (natural logarithm)."""

    mu: float
    sigma: float


def _as_samples(log_samples) -> np.ndarray:
    x = np.asarray(log_samples, dtype=float).ravel()
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError("discrepancy: the log-samples must be a non-empty array of finite numbers.")
    return x


def log_predictive(log_truth: float, log_samples, d: Discrepancy) -> float:
    """``log (1/n) sum_i N(log_truth - log_samples_i - mu; 0, sigma^2)``: the density of the truth under the
    patient's posterior (in ``log q``)."""
    x = _as_samples(log_samples)
    z = scipy.stats.norm.logpdf(log_truth - x - d.mu, scale=d.sigma)
    return float(scipy.special.logsumexp(z) - np.log(x.size))


def fit_discrepancy(log_samples: Sequence, log_truths: Sequence[float]) -> Discrepancy:
    """The maximum marginal likelihood ``(mu, sigma)`` (module docstring) from each calibration patient's
    model samples of ``log q`` and the true ``log q``.

    Raises:
        ValueError: fewer than two patients, or as many sample sets as truths not given.
    """
    samples = [_as_samples(s) for s in log_samples]
    truths = np.asarray(log_truths, dtype=float)
    if len(samples) != truths.size or truths.size < 2:
        raise ValueError(f"fit_discrepancy: needs one sample set per truth and at least two patients (got "
                         f"{len(samples)} sample sets and {truths.size} truths).")
    resid = np.array([t - np.median(s) for s, t in zip(samples, truths)])
    start = np.array([np.median(resid), np.log(max(resid.std(), 1e-3))])
    width = max(s.size for s in samples)
    r = np.zeros((truths.size, width))  # residuals t_p - x_{p,i}, padded; the padding gets weight 0
    log_w = np.full((truths.size, width), -np.inf)
    for p, (s, t) in enumerate(zip(samples, truths)):
        r[p, :s.size], log_w[p, :s.size] = t - s, -np.log(s.size)

    def nll(v):
        mu, log_sigma = v
        z = (r - mu) * np.exp(-log_sigma)
        log_pdf = -0.5 * z**2 - log_sigma - 0.5 * np.log(2 * np.pi)
        return -float(scipy.special.logsumexp(log_pdf + log_w, axis=1).sum())

    res = scipy.optimize.minimize(nll, start, method="Nelder-Mead",
                                  options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 4000})
    return Discrepancy(float(res.x[0]), float(np.exp(res.x[1])))


def patient_quantiles(log_samples, d: Discrepancy, probs=(0.05, 0.5, 0.95)) -> np.ndarray:
    """Quantiles of the patient's posterior of ``log q``: the mixture ``(1/n) sum_i N(log q_i + mu, sigma^2)``,
    its distribution function inverted by bracketing (deterministic)."""
    x = _as_samples(log_samples) + d.mu

    def cdf(y):
        return scipy.stats.norm.cdf((y - x) / d.sigma).mean()

    lo, hi = x.min() - 10 * d.sigma, x.max() + 10 * d.sigma
    return np.array([scipy.optimize.brentq(lambda y: cdf(y) - p, lo, hi, xtol=1e-10) for p in probs])


class OriginDiscrepancy(NamedTuple):
    """``x_patient - x_model ~ N(0, (per_spacing h)^2 I_3)``, ``h`` the box spacing in mm."""

    per_spacing: float

    def sd_mm(self, spacing_mm: float) -> float:
        """The discrepancy's sd per axis (mm) on a box of spacing ``spacing_mm``."""
        return float(self.per_spacing * spacing_mm)


def _origin_moments(samples) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(samples, dtype=float)
    if x.ndim != 2 or x.shape[1] != 3 or x.shape[0] < 4 or not np.all(np.isfinite(x)):
        raise ValueError(f"origin discrepancy: the origin samples must be a finite (n, 3) array with n >= 4 (got "
                         f"shape {x.shape}).")
    return x.mean(axis=0), np.cov(x.T)


def origin_log_predictive(truth, samples, spacing_mm: float, d: OriginDiscrepancy) -> float:
    """``log N(truth - m; 0, C + (a h)^2 I)``: the density of the true origin under the patient's posterior (its
    normal approximation; ``m``, ``C`` the samples' mean and covariance)."""
    m, c = _origin_moments(samples)
    cov = c + d.sd_mm(spacing_mm) ** 2 * np.eye(3)
    return float(scipy.stats.multivariate_normal.logpdf(np.asarray(truth, float), m, cov, allow_singular=True))


def fit_origin_discrepancy(samples: Sequence, truths: Sequence, spacings_mm: Sequence[float]) -> OriginDiscrepancy:
    """The maximum marginal likelihood ``a`` (module docstring) from each calibration patient's model samples of
    the origin (``(n, 3)``, mm), the true origin and the box spacing of the run (mm).

    Raises:
        ValueError: fewer than two patients, or not one sample set, truth and spacing per patient.
    """
    moments = [_origin_moments(s) for s in samples]
    truths, h = np.asarray(truths, dtype=float), np.asarray(spacings_mm, dtype=float)
    if truths.shape != (len(moments), 3) or h.shape != (len(moments),) or len(moments) < 2 or np.any(h <= 0):
        raise ValueError(f"fit_origin_discrepancy (origin discrepancy): needs one (n, 3) sample set, one true origin "
                         f"and one positive box spacing per patient, and at least two patients (got {len(moments)} "
                         f"sample sets, truths of shape {truths.shape}, spacings of shape {h.shape}).")

    def nll(log_a):
        a2 = np.exp(2 * log_a)
        return -sum(scipy.stats.multivariate_normal.logpdf(t, m, c + a2 * hp**2 * np.eye(3), allow_singular=True)
                    for (m, c), t, hp in zip(moments, truths, h))

    res = scipy.optimize.minimize_scalar(nll, bounds=(np.log(1e-4), np.log(10.0)), method="bounded",
                                         options={"xatol": 1e-8})
    return OriginDiscrepancy(float(np.exp(res.x)))


def origin_region(samples, spacing_mm: float, d: OriginDiscrepancy, level: float = 0.9) -> dict:
    """The patient's posterior of the origin (mm, the samples' frame): mean, covariance ``C + (a h)^2 I``, the
    ``level`` ellipsoid's squared Mahalanobis radius (chi-square with 3 degrees of freedom), and per axis the
    5/50/95% (for ``level`` 0.9) quantiles of the mixture ``(1/n) sum_i N(x_i, (a h)^2)``."""
    x = np.asarray(samples, dtype=float)
    m, c = _origin_moments(x)
    sd = d.sd_mm(spacing_mm)
    probs = ((1 - level) / 2, 0.5, (1 + level) / 2)
    axes = [patient_quantiles(x[:, k], Discrepancy(0.0, max(sd, 1e-9)), probs) for k in range(3)]
    return {"level": level, "sd_mm": sd, "mean": m.tolist(), "covariance": (c + sd**2 * np.eye(3)).tolist(),
            "radius2": float(scipy.stats.chi2.ppf(level, 3)),
            "axes": {"xyz"[k]: {"lower": float(q[0]), "q50": float(q[1]), "upper": float(q[2])}
                     for k, q in enumerate(axes)}}


def in_origin_region(point, region: dict) -> tuple[bool, float]:
    """Whether ``point`` lies in ``origin_region``'s ellipsoid, and its Mahalanobis distance."""
    r = np.asarray(point, float) - np.asarray(region["mean"])
    d2 = float(r @ np.linalg.solve(np.asarray(region["covariance"]), r))
    return d2 <= region["radius2"], float(np.sqrt(d2))


GROWTH_DISCREPANCY = {"Dw": Discrepancy(mu=0.1826, sigma=0.3937), "rho": Discrepancy(mu=0.3736, sigma=0.2926)}
"""``(mu, sigma)`` of ``log(Dw T)`` and ``log(rho T)`` (natural logarithm): fitted on the validation cohort's
calibration patients 0-19 (``bodil.tumor.cohort``, seed 2027: tumours grown by another solver from other initial
shapes, with ``Dw / Dg`` in [5, 100], other thresholds and segmentation noise) from default runs, whose posterior
holds ``Dw`` and ``rho`` at the MAP and samples ``Dw / Dg`` (``benchmarks/tumor_cohort.py evaluate
--discrepancy-from``; the numbers and the report set's coverage in docs/tumor.md). The model's ``rho T`` is low
by a factor ``exp(0.37) = 1.45`` and both scatter by a factor ``exp(1.645 sigma)`` of 1.9 (``Dw T``) and 1.6
(``rho T``) at 90%."""

ORIGIN_DISCREPANCY = OriginDiscrepancy(per_spacing=0.1985)
"""``a`` of the origin's discrepancy: per axis an sd of 0.2 box spacings (0.5 mm on a 2.5 mm box, 1.1 mm on a
5.5 mm one), fitted as ``GROWTH_DISCREPANCY`` was, on the same default runs (``benchmarks/tumor_cohort.py
evaluate --discrepancy-from``; docs/tumor.md)."""

CALIBRATION = "20 synthetic patients grown by another solver, bodil's validation cohort (seed 2027, patients 0-19)"
VALIDATION = ("its 90% intervals held the truth of Dw T in 40 and of rho T in 48 of 50 other such patients (seed "
              "2027, patients 20-49, and 20 of a second cohort, seed 2028)")
ORIGIN_VALIDATION = ("its 90% regions held the true origin in 44 of 50 other such patients (42 without the model's "
                     "error)")
"""Where ``GROWTH_DISCREPANCY`` and ``ORIGIN_DISCREPANCY`` come from and how they did on patients they were not
fitted on (docs/tumor.md), in the words of the report."""

CALIBRATED_SETTINGS = {"grid": 24, "max_spacing_mm": None, "time_points": 12, "likelihood": "sigmoid",
                       "sigma": 0.05, "effective_seed_dt2": 4.0, "error_correlation_mm": 25.0, "inner": "forward",
                       "threshold_treatment": "marginalised",
                       "map_parameters": ("Dw", "rho", "ratio", "x0", "y0", "z0"),
                       "posterior_parameters": ("x0", "y0", "z0", "ratio")}
"""The ``CTVSettings`` (attributes and properties) that ``GROWTH_DISCREPANCY`` and ``ORIGIN_DISCREPANCY`` were
fitted with; with any other value the model's error is a different one and is not corrected for."""


def calibration_mismatch(settings) -> list[str]:
    """The ``CALIBRATED_SETTINGS`` in which ``settings`` (a ``CTVSettings``) differ, as ``name=value`` (empty:
    ``GROWTH_DISCREPANCY`` holds for this run)."""
    out = []
    for name, value in CALIBRATED_SETTINGS.items():
        have = getattr(settings, name)
        if isinstance(value, tuple):  # a selection of parameters: their order does not matter
            have, value = tuple(sorted(have)), tuple(sorted(value))
        if have != value:
            out.append(f"{name}={have!r} (calibrated: {value!r})")
    return out


def growth_with_model_error(settings, theta_map: dict, samples: dict | None = None, level: float = 0.9) -> dict:
    """``Dw T`` and ``rho T`` of the patient with the model's error included (module docstring): the mean, the
    median and the central ``level`` interval of the mixture over the model's samples (``samples[name]``, model
    units; the MAP where a parameter was not sampled), with ``GROWTH_DISCREPANCY``. Returns
    ``{"applied": False, "why": ...}`` when ``settings`` differ from those it was fitted with
    (``calibration_mismatch``)."""
    mismatch = calibration_mismatch(settings)
    if mismatch:
        return {"applied": False, "why": "; ".join(mismatch)}
    out = {"applied": True, "level": level, "calibration": CALIBRATION, "validation": VALIDATION}
    probs = ((1 - level) / 2, 0.5, (1 + level) / 2)
    for name, unit in (("Dw", "mm^2"), ("rho", "")):
        d = GROWTH_DISCREPANCY[name]
        q = np.asarray((samples or {}).get(name, [theta_map[name]]), dtype=float) * settings.t_final
        lo, mid, hi = np.exp(patient_quantiles(np.log(q), d, probs))
        mean = float(q.mean() * np.exp(d.mu + d.sigma**2 / 2))  # of the log-normal mixture
        out[f"{name}_T"] = {"unit": unit, "map": float(theta_map[name] * settings.t_final), "mean": mean,
                            "q50": float(mid), "lower": float(lo), "upper": float(hi), "mu": d.mu, "sigma": d.sigma}
    return out


def origin_with_model_error(settings, origin_samples, spacing_mm: float, level: float = 0.9) -> dict:
    """The initial position (world mm) with the model's error included (module docstring): ``origin_region``
    with ``ORIGIN_DISCREPANCY`` on a box of spacing ``spacing_mm``. Returns ``{"applied": False, "why": ...}``
    when ``settings`` differ from those it was fitted with (``calibration_mismatch``)."""
    mismatch = calibration_mismatch(settings)
    if mismatch:
        return {"applied": False, "why": "; ".join(mismatch)}
    return {"applied": True, "calibration": CALIBRATION, "validation": ORIGIN_VALIDATION,
            "per_spacing": ORIGIN_DISCREPANCY.per_spacing,
            **origin_region(origin_samples, spacing_mm, ORIGIN_DISCREPANCY, level)}
