"""The visibility thresholds integrated out of the tumour posterior (bodil.tumor.thresholds): the product rule
against closed forms, the binned likelihood against the voxelwise one within its stated bound, the marginal
against adaptive integration (QUADPACK), the threshold posterior's quantiles, and the settings that refuse it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from bodil.io import InputError
from bodil.likelihood import ThreeClassSigmoid
from bodil.prior import Uniform
from bodil.tumor.model import threshold_priors
from bodil.tumor.settings import CTVSettings
from bodil.tumor.thresholds import (binned_log_likelihoods, node_log_likelihoods, threshold_quadrature,
                                    threshold_summary)


def test_rule_integrates_polynomials_over_the_prior_exactly():
    quad = threshold_quadrature(threshold_priors(), 4)  # exact to degree 7 in each threshold
    mass = np.exp(quad.log_mass)
    assert mass.sum() == pytest.approx(1.0, abs=1e-14)
    # E[tau_lo^3 tau_up^2] under U(0.05, 0.5) x U(0.5, 0.95): (b^4 - a^4) / (4 (b - a)) * (d^3 - c^3) / (3 (d - c))
    expected = (0.5**4 - 0.05**4) / (4 * 0.45) * (0.95**3 - 0.5**3) / (3 * 0.45)
    assert mass @ (quad.tau_lo**3 * quad.tau_up**2) == pytest.approx(expected, rel=1e-13)


def test_rule_refuses_a_prior_it_cannot_integrate():
    with pytest.raises(ValueError, match="must be Uniform"):
        threshold_quadrature({"tau_lo": Uniform(0.05, 0.5), "tau_up": None}, 8)
    with pytest.raises(ValueError, match="at least 2"):
        threshold_quadrature(threshold_priors(), 1)


def _case(seed=0, n=12):
    """A field and segmentation on an ``n^3`` box: a blob with values over all of [0, 1] and labels from other
    thresholds than any node, some voxels unobserved."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, n)
    r2 = sum(a**2 for a in np.meshgrid(x, x, x, indexing="ij"))
    u = np.clip(np.exp(-3 * r2) + 0.02 * rng.normal(size=r2.shape), 0.0, 1.0)
    classes = np.where(u > 0.61, 2, np.where(u > 0.33, 1, 0)).astype(np.int8)
    classes[rng.random(classes.shape) < 0.05] = -1
    lik = ThreeClassSigmoid(lambda v, th: v[-1], classes, "tau_lo", "tau_up", sigma=0.05)
    return jnp.asarray(u)[None], lik


def test_binned_likelihood_is_within_its_bound_of_the_voxelwise_one():
    u, lik = _case()
    quad = threshold_quadrature(threshold_priors(), 6)
    exact = jax.jit(node_log_likelihoods(lik, quad))(u, {})
    for bins in (256, 1024):
        binned = jax.jit(binned_log_likelihoods(lik, quad, bins))(u, {})
        bound = 3.0 / (4 * 0.05**2) / (8 * bins**2) * np.sum(lik.classes >= 0)  # M h^2 / 8 per voxel
        assert np.max(np.abs(np.asarray(binned - exact))) <= bound
    # a field whose values all sit on bin centres is exact
    centred = (jnp.floor(u * 64) + 0.5) / 64
    binned = jax.jit(binned_log_likelihoods(lik, quad, 64))(centred, {})
    np.testing.assert_allclose(binned, jax.jit(node_log_likelihoods(lik, quad))(centred, {}), rtol=1e-12)


def _numpy_log_likelihood(u, classes, tau_lo, tau_up, sigma=0.05):
    """eq. 36 written out in numpy, voxel by voxel: independent of ``ThreeClassSigmoid`` and of the quadrature."""
    seen = classes >= 0
    v, c = u[seen], classes[seen]
    a, b = (v - tau_lo) / sigma, (v - tau_up) / sigma

    def log_s(x):
        return -np.logaddexp(0.0, -x)

    log_z = np.logaddexp(0.0, log_s(b) + log_s(-a))
    return float(np.sum(np.select([c == 0, c == 1, c == 2], [log_s(-a), log_s(-b) + log_s(a), log_s(b)]) - log_z))


def test_marginal_matches_adaptive_integration():
    u, lik = _case(seed=1)
    weight = 0.05
    quad = threshold_quadrature(threshold_priors(), 24)
    value = float(quad.marginal(jax.jit(node_log_likelihoods(lik, quad))(u, {}), weight))
    # QUADPACK's adaptive Gauss-Kronrod (scipy.integrate.dblquad) over the prior's rectangle, on eq. 36 in numpy
    field, classes = np.asarray(u)[-1], np.asarray(lik.classes)
    priors = threshold_priors()
    (lo_a, lo_b), (up_a, up_b) = ((float(priors[k].low), float(priors[k].high)) for k in ("tau_lo", "tau_up"))
    shift = weight * _numpy_log_likelihood(field, classes, (lo_a + lo_b) / 2, (up_a + up_b) / 2)

    def integrand(tau_up, tau_lo):  # the likelihood times the uniform priors' density
        return np.exp(weight * _numpy_log_likelihood(field, classes, tau_lo, tau_up) - shift) / (
            (lo_b - lo_a) * (up_b - up_a))

    integral, error = integrate.dblquad(integrand, lo_a, lo_b, up_a, up_b, epsabs=0.0, epsrel=1e-9)
    assert error < 1e-8 * integral
    assert value == pytest.approx(np.log(integral) + shift, abs=1e-7)


def test_threshold_summary_of_the_prior_is_the_uniform_distribution():
    quad = threshold_quadrature(threshold_priors(), 8)
    prior = np.exp(quad.log_mass)
    out = threshold_summary(np.stack([prior, prior]), quad)  # every sample's nodes at their prior masses
    for name, (low, high) in zip(("tau_lo", "tau_up"), quad.ranges):
        t = out[name]
        assert t["mean"] == pytest.approx((low + high) / 2, abs=1e-12)
        assert t["sd"] == pytest.approx((high - low) / np.sqrt(12), rel=0.01)  # the nodes' discrete sd
        for key, p in (("q05", 0.05), ("q50", 0.5), ("q95", 0.95)):
            assert t[key] == pytest.approx(low + p * (high - low), abs=1e-12)


def test_settings_say_when_thresholds_cannot_be_integrated_out():
    assert CTVSettings().threshold_treatment == "marginalised"
    assert CTVSettings(inner="odil").threshold_treatment == "fixed"
    assert CTVSettings(likelihood="interval").threshold_treatment == "fixed"
    sampled = CTVSettings(map_parameters=("Dw", "rho", "x0", "y0", "z0", "tau_lo"),
                          posterior_parameters=("x0", "y0", "z0", "tau_lo"))
    assert sampled.threshold_treatment == "sampled"
    with pytest.raises(InputError, match="not normalised in the thresholds"):
        CTVSettings(likelihood="interval", thresholds="marginalised")
    with pytest.raises(InputError, match="inner ODIL solve"):
        CTVSettings(inner="odil", thresholds="marginalised")
    with pytest.raises(InputError, match="the posterior samples"):
        CTVSettings(map_parameters=("Dw", "rho", "x0", "y0", "z0", "tau_lo"),
                    posterior_parameters=("x0", "y0", "z0", "tau_lo"), thresholds="fixed")
    with pytest.raises(InputError, match="unknown thresholds"):
        CTVSettings(thresholds="sampled")
