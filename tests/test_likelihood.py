import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from bodil.likelihood import (ABOVE, BELOW, BETWEEN, UNOBSERVED, Bernoulli, Gaussian, IntervalHinge,
                              ThreeClassSigmoid, interval_bounds)


def test_gaussian_matches_scipy():
    rng = np.random.default_rng(0)
    u, y = rng.normal(size=30), rng.normal(size=30)
    sigma = rng.uniform(0.1, 1.0, size=30)
    lik = Gaussian(None, y, sigma=sigma)
    assert float(lik.log_prob(jnp.asarray(u), {})) == pytest.approx(stats.norm.logpdf(y, u, sigma).sum(), rel=1e-12)


def test_gaussian_inferred_sigma_by_name():
    y = np.array([0.0, 1.0])
    lik = Gaussian(lambda u, th: u[:2], y, sigma="s")
    got = float(lik.log_prob(jnp.asarray([0.5, 0.5, 9.0]), {"s": 0.3}))
    assert got == pytest.approx(stats.norm.logpdf(y, 0.5, 0.3).sum(), rel=1e-12)


def test_bernoulli_sigmoid_matches_scipy():
    rng = np.random.default_rng(1)
    u = rng.uniform(size=50)
    y = (rng.uniform(size=50) < 0.5).astype(float)
    tau, sigma = 0.5, 0.05
    p = 1.0 / (1.0 + np.exp(-(u - tau) / sigma))
    lik = Bernoulli(None, y, tau=tau, sigma=sigma)
    assert float(lik.log_prob(jnp.asarray(u), {})) == pytest.approx(stats.bernoulli.logpmf(y, p).sum(), rel=1e-10)


def test_interval_bounds_eq31():
    classes = jnp.asarray([BELOW, BETWEEN, ABOVE, UNOBSERVED])
    lo, up = interval_bounds(classes, 0.25, 0.675)
    np.testing.assert_allclose(lo[:3], [0.0, 0.25, 0.675])
    np.testing.assert_allclose(up[:3], [0.25, 0.675, 1.0])
    assert np.isneginf(lo[3]) and np.isposinf(up[3])


def test_interval_hinge_eq30_by_hand():
    classes = np.array([BELOW, BELOW, BETWEEN, BETWEEN, ABOVE, UNOBSERVED])
    u = jnp.asarray([0.1, 0.4, 0.5, 0.9, 0.5, 5.0])
    lik = IntervalHinge(None, classes, tau_lo="tau_lo", tau_up="tau_up", sigma=0.05)
    # violations: healthy 0.4 > 0.3 by 0.1; edema 0.9 > 0.6 by 0.3; core 0.5 < 0.6 by 0.1; ignored voxel free
    want = -(0.1 + 0.3 + 0.1) / 0.05
    assert float(lik.log_prob(u, {"tau_lo": 0.3, "tau_up": 0.6})) == pytest.approx(want, rel=1e-12)


def test_three_class_sigmoid_is_normalised_and_close_to_hinge():
    lik = ThreeClassSigmoid(None, np.zeros(3, int), tau_lo=0.3, tau_up=0.6, sigma=0.05)
    u = jnp.linspace(-0.2, 1.2, 141)
    logp = lik.class_log_probs(u, {})
    np.testing.assert_allclose(jnp.sum(jnp.exp(logp), axis=-1), 1.0, rtol=1e-12)
    # appendix B: far from the thresholds eq. 36 behaves like eq. 30, slope -1/sigma outside the interval
    healthy = logp[:, 0]
    i, j = np.searchsorted(np.asarray(u), [0.8, 0.9])
    slope = (healthy[j] - healthy[i]) / (u[j] - u[i])
    assert float(slope) == pytest.approx(-1 / 0.05, rel=1e-3)
    assert float(healthy[np.searchsorted(np.asarray(u), 0.0)]) == pytest.approx(0.0, abs=5e-3)


def test_three_class_log_prob_picks_the_class():
    classes = np.array([BELOW, BETWEEN, ABOVE, UNOBSERVED])
    lik = ThreeClassSigmoid(None, classes, tau_lo=0.3, tau_up=0.6, sigma=0.05)
    u = jnp.asarray([0.1, 0.45, 0.9, 0.2])
    logp = lik.class_log_probs(u, {})
    want = float(logp[0, 0] + logp[1, 1] + logp[2, 2])
    assert float(lik.log_prob(u, {})) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("make, message", [
    (lambda: Gaussian(None, [0.0, np.nan], 0.1), "NaN"),
    (lambda: Gaussian(None, [0.0], -1.0), "positive"),
    (lambda: Bernoulli(None, [0.0, 0.5], 0.5, 0.1), "only 0 and 1"),
    (lambda: IntervalHinge(None, [0, 1, 4]), "unknown class"),
    (lambda: IntervalHinge(None, [0.5, 1.0]), "integers"),
])
def test_bad_data_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_shape_mismatch_is_reported():
    lik = Gaussian(lambda u, th: u[:3], np.zeros(4), 0.1)
    with pytest.raises(ValueError, match="observe\\(\\) returned shape"):
        lik.log_prob(jnp.zeros(5), {})
