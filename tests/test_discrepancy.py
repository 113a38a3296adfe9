"""The model discrepancy of the growth parameters and the origin (bodil.tumor.discrepancy) against closed forms."""

import numpy as np
import pytest
import scipy.stats

from bodil.tumor.discrepancy import Discrepancy, fit_discrepancy, log_predictive, patient_quantiles


def test_one_sample_gives_the_normal_quantiles():
    d = Discrepancy(0.3, 0.2)
    q = patient_quantiles([1.5], d, probs=(0.05, 0.5, 0.95))
    np.testing.assert_allclose(q, 1.5 + 0.3 + 0.2 * scipy.stats.norm.ppf([0.05, 0.5, 0.95]), atol=1e-8)


def test_normal_samples_give_the_convolved_normal():
    """Samples at the quantiles of N(m, s^2): the mixture is N(m + mu, s^2 + sigma^2) up to the 2000-point
    discretisation (checked at 1e-3)."""
    m, s, d = -0.4, 0.5, Discrepancy(0.25, 0.3)
    x = m + s * scipy.stats.norm.ppf((np.arange(2000) + 0.5) / 2000)
    probs = np.array([0.05, 0.25, 0.5, 0.75, 0.95])
    want = m + d.mu + np.hypot(s, d.sigma) * scipy.stats.norm.ppf(probs)
    np.testing.assert_allclose(patient_quantiles(x, d, probs=probs), want, atol=1e-3)
    t = 0.7
    np.testing.assert_allclose(log_predictive(t, x, d),
                               scipy.stats.norm.logpdf(t, m + d.mu, np.hypot(s, d.sigma)), atol=1e-4)


def test_fit_recovers_the_discrepancy_of_point_posteriors():
    """Point posteriors (one sample each): the fit is the Gaussian maximum likelihood, mean and sd of the
    residuals in closed form; with 400 patients both lie within 4 standard errors of the truth (a false alarm
    below 1e-4 for the test)."""
    rng = np.random.default_rng(7)
    mu, sigma, n = -0.35, 0.25, 400
    x = rng.normal(0.0, 2.0, n)
    t = x + rng.normal(mu, sigma, n)
    d = fit_discrepancy([[v] for v in x], t)
    r = t - x
    np.testing.assert_allclose([d.mu, d.sigma], [r.mean(), r.std()], rtol=1e-4, atol=1e-5)
    assert abs(d.mu - mu) < 4 * sigma / np.sqrt(n)
    assert abs(d.sigma - sigma) < 4 * sigma / np.sqrt(2 * n)


def test_wide_posteriors_need_less_discrepancy():
    """Residuals of sd 0.3 against posteriors that are themselves N(0, 0.2^2) wide: sigma^2 + 0.2^2 = 0.3^2
    (within the fit's error for 400 patients, 4 standard errors)."""
    rng = np.random.default_rng(3)
    n = 400
    base = 0.2 * scipy.stats.norm.ppf((np.arange(200) + 0.5) / 200)
    t = rng.normal(0.1, 0.3, n)
    d = fit_discrepancy([base] * n, t)
    assert abs(np.hypot(d.sigma, 0.2) - t.std()) < 4 * 0.3 / np.sqrt(2 * n)


@pytest.mark.parametrize("samples, truths", [([[1.0]], [1.0]), ([[1.0], [2.0]], [1.0]), ([[np.nan], [1.0]], [0, 1])])
def test_bad_input_is_refused(samples, truths):
    with pytest.raises(ValueError, match="discrepancy"):
        fit_discrepancy(samples, truths)


def test_the_defaults_are_the_settings_it_was_calibrated_with():
    """Changing a default that the model's error depends on needs a new fit on the cohort
    (benchmarks/tumor_cohort.py evaluate --discrepancy-from); this fails until then."""
    from bodil.tumor import CTVSettings
    from bodil.tumor.discrepancy import calibration_mismatch

    assert calibration_mismatch(CTVSettings()) == []
    # the order in which the parameters are named does not matter; which ones are fitted and sampled does
    assert calibration_mismatch(CTVSettings(map_parameters=("z0", "y0", "x0", "ratio", "rho", "Dw"))) == []
    fixed_ratio = calibration_mismatch(CTVSettings(map_parameters=("Dw", "rho", "x0", "y0", "z0")))
    assert [m.split("=")[0] for m in fixed_ratio] == ["map_parameters", "posterior_parameters"]


def test_growth_with_model_error_at_the_map_is_log_normal():
    from bodil.tumor import CTVSettings
    from bodil.tumor.discrepancy import GROWTH_DISCREPANCY, growth_with_model_error

    s = CTVSettings()
    g = growth_with_model_error(s, {"Dw": 0.2, "rho": 0.05})
    z = scipy.stats.norm.ppf([0.05, 0.5, 0.95])
    for name, v in (("Dw", 0.2), ("rho", 0.05)):
        d = GROWTH_DISCREPANCY[name]
        want = v * s.t_final * np.exp(d.mu + d.sigma * z)
        got = g[f"{name}_T"]
        np.testing.assert_allclose([got["lower"], got["q50"], got["upper"]], want, rtol=1e-8)
        np.testing.assert_allclose(got["mean"], v * s.t_final * np.exp(d.mu + d.sigma**2 / 2), rtol=1e-12)
    other = growth_with_model_error(CTVSettings(grid=32), {"Dw": 0.2, "rho": 0.05})
    assert not other["applied"] and "grid=32" in other["why"]


def test_origin_fit_recovers_the_discrepancy_of_point_posteriors():
    """Posteriors 1e-4 mm wide on boxes of 2-6 mm: the fit is the Gaussian maximum likelihood of the scaled
    residuals, ``a^2 = mean(|r_p|^2 / (3 h_p^2))`` (checked to 1e-4 relative), within 4 standard errors
    (``a / sqrt(6 n)``) of the truth for 300 patients (a false alarm below 1e-4)."""
    from bodil.tumor.discrepancy import fit_origin_discrepancy

    rng = np.random.default_rng(11)
    a, n = 0.3, 300
    h = rng.uniform(2.0, 6.0, n)
    means = rng.normal(0.0, 20.0, (n, 3))
    samples = [m + 1e-4 * rng.normal(size=(32, 3)) for m in means]
    truths = means + (a * h)[:, None] * rng.normal(size=(n, 3))
    d = fit_origin_discrepancy(samples, truths, h)
    closed = np.sqrt(np.mean(np.sum((truths - np.array([s.mean(0) for s in samples]))**2, 1) / (3 * h**2)))
    np.testing.assert_allclose(d.per_spacing, closed, rtol=1e-4)
    assert abs(d.per_spacing - a) < 4 * a / np.sqrt(6 * n)


def test_origin_region_of_a_point_posterior_is_the_discrepancy_normal():
    """Every sample at one point: per axis the 90% interval is ``x +- 1.645 a h``; a point at 0.99 (1.01) times
    the chi-square radius along an axis lies inside (outside) the 3-D ellipsoid."""
    from bodil.tumor.discrepancy import OriginDiscrepancy, in_origin_region, origin_region

    x, h, d = np.array([1.0, -2.0, 3.0]), 4.0, OriginDiscrepancy(0.25)
    region = origin_region(np.tile(x, (16, 1)), h, d)
    sd = 0.25 * h
    z = scipy.stats.norm.ppf(0.95)
    for k, c in enumerate("xyz"):
        np.testing.assert_allclose([region["axes"][c]["lower"], region["axes"][c]["upper"]],
                                   [x[k] - z * sd, x[k] + z * sd], atol=1e-8)
    radius = np.sqrt(scipy.stats.chi2.ppf(0.9, 3)) * sd
    assert in_origin_region(x + [0.99 * radius, 0, 0], region)[0]
    inside, dist = in_origin_region(x + [0, 1.01 * radius, 0], region)
    assert not inside and np.isclose(dist, 1.01 * radius / sd)


def test_origin_with_model_error_holds_only_at_the_calibrated_settings():
    from bodil.tumor import CTVSettings
    from bodil.tumor.discrepancy import ORIGIN_DISCREPANCY, origin_with_model_error

    samples = np.random.default_rng(2).normal(size=(128, 3))
    got = origin_with_model_error(CTVSettings(), samples, 3.0)
    assert got["applied"] and np.isclose(got["sd_mm"], 3.0 * ORIGIN_DISCREPANCY.per_spacing)
    np.testing.assert_allclose(got["covariance"], np.cov(samples.T) + got["sd_mm"]**2 * np.eye(3), rtol=1e-12)
    other = origin_with_model_error(CTVSettings(error_correlation_mm=15.0), samples, 3.0)
    assert not other["applied"] and "error_correlation_mm" in other["why"]


@pytest.mark.parametrize("samples, truths, spacings", [
    ([np.zeros((8, 3))], [[0, 0, 0]], [2.0]),                      # one patient
    ([np.zeros((8, 2))] * 2, [[0, 0]] * 2, [2.0, 2.0]),             # not 3-D
    ([np.zeros((8, 3))] * 2, [[0, 0, 0]] * 2, [2.0, -1.0]),         # negative spacing
    ([np.full((8, 3), np.nan)] * 2, [[0, 0, 0]] * 2, [2.0, 2.0])])  # NaN samples
def test_bad_origin_input_is_refused(samples, truths, spacings):
    from bodil.tumor.discrepancy import fit_origin_discrepancy

    with pytest.raises(ValueError, match="origin discrepancy"):
        fit_origin_discrepancy(samples, truths, spacings)
