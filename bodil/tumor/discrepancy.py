"""Model discrepancy of the growth parameters: from the model's ``Dw T`` and ``rho T`` to the patient's.

One image identifies the growth parameters only through bodil's model: its seed, ``Dw / Dg`` fixed at 10, the
box's resolution, the explicit Fisher-Kolmogorov solver. On tumours grown otherwise the model's values differ
from the truth by a factor that the posterior cannot see, since it conditions on the model being right. Following
Kennedy and O'Hagan (2001), *Bayesian calibration of computer models*, in the space of the parameters: the
discrepancy is a random factor,

    log q_patient = log q_model + delta,    delta ~ N(mu, sigma^2),    q = Dw T or rho T,

so the patient's posterior of ``log q`` is the model's posterior convolved with ``N(mu, sigma^2)``: over the
samples ``q_i``, the mixture ``(1/n) sum_i N(log q_i + mu, sigma^2)``. ``(mu, sigma)`` are fitted on a cohort of
known truth by maximum marginal likelihood (type II),

    max_{mu, sigma}  sum_p log( (1/n_p) sum_i N(log q_p - log q_{p,i} - mu; 0, sigma^2) ),

and hold only for the settings and the kind of patients they were fitted on (``GROWTH_DISCREPANCY``).
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


GROWTH_DISCREPANCY = {"Dw": Discrepancy(mu=0.1346, sigma=0.4936), "rho": Discrepancy(mu=0.4101, sigma=0.2983)}
"""``(mu, sigma)`` of ``log(Dw T)`` and ``log(rho T)`` (natural logarithm): fitted on the validation cohort's
calibration patients 0-19 (``bodil.tumor.cohort``, seed 2027: tumours grown by another solver from other initial
shapes, with ``Dw / Dg`` in [5, 100], other thresholds and segmentation noise) from default runs, whose posterior
holds ``Dw`` and ``rho`` at the MAP (``benchmarks/tumor_cohort.py evaluate --discrepancy-from``; the numbers and
the report set's coverage in docs/tumor.md). The model's ``rho T`` is low by a factor ``exp(0.41) = 1.5`` and
both scatter by a factor ``exp(1.645 sigma)`` of 2.3 (``Dw T``) and 1.6 (``rho T``) at 90%."""

CALIBRATION = "20 synthetic patients grown by another solver, bodil's validation cohort (seed 2027, patients 0-19)"
VALIDATION = ("its 90% intervals held the truth of Dw T in 43 and of rho T in 45 of 50 other such patients (seed "
              "2027, patients 20-49, and 20 of a second cohort, seed 2028)")
"""Where ``GROWTH_DISCREPANCY`` comes from and how it did on patients it was not fitted on (docs/tumor.md),
in the words of the report."""

CALIBRATED_SETTINGS = {"grid": 24, "max_spacing_mm": None, "time_points": 12, "likelihood": "sigmoid",
                       "sigma": 0.05, "effective_seed_dt2": 4.0, "error_correlation_mm": 25.0, "inner": "forward",
                       "threshold_treatment": "marginalised", "map_parameters": ("Dw", "rho", "x0", "y0", "z0"),
                       "posterior_parameters": ("x0", "y0", "z0")}
"""The ``CTVSettings`` (attributes and properties) that ``GROWTH_DISCREPANCY`` was fitted with; with any other
value the model's error is a different one and is not corrected for."""


def calibration_mismatch(settings) -> list[str]:
    """The ``CALIBRATED_SETTINGS`` in which ``settings`` (a ``CTVSettings``) differ, as ``name=value`` (empty:
    ``GROWTH_DISCREPANCY`` holds for this run)."""
    out = []
    for name, value in CALIBRATED_SETTINGS.items():
        have = getattr(settings, name)
        if (tuple(have) if isinstance(value, tuple) else have) != value:
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
