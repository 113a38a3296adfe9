import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import bodil
from bodil import Grid, Params, PDEPrior, Posterior, residuals


def test_params_fixed_and_inferred():
    p = Params(a=bodil.Uniform(0.5, 1.5), b=bodil.LogNormal(0.0, 1.0), c=2.0)
    assert p.names == ("a", "b") and p.fixed == {"c": 2.0}
    theta = {"a": jnp.asarray(0.7), "b": jnp.asarray(3.0)}
    z = p.unconstrain(theta)
    back = p.constrain(z)
    np.testing.assert_allclose([back["a"], back["b"]], [0.7, 3.0], rtol=1e-12)
    assert float(p.log_prob(theta)) == pytest.approx(stats.uniform.logpdf(0.7, 0.5, 1.0)
                                                     + stats.lognorm.logpdf(3.0, 1.0), rel=1e-12)
    # log |det dT/dz| against finite differences of the transform
    for k in ("a", "b"):
        t = p.transforms[k]
        dz = 1e-6
        fd = (t(z[k] + dz) - t(z[k] - dz)) / (2 * dz)
        one = {kk: (z[kk] if kk == k else jnp.asarray(0.0)) for kk in z}
        other = {kk: jnp.asarray(0.0) for kk in z if kk != k}
        lad = p.log_abs_det_jacobian(one) - p.log_abs_det_jacobian({**other, k: jnp.asarray(0.0)})
        ref = np.log(abs(float(fd))) - np.log(abs(float((t(dz) - t(-dz)) / (2 * dz))))
        assert float(lad) == pytest.approx(ref, rel=1e-6, abs=1e-8)
    assert p.merge(theta)["c"] == 2.0


def test_params_errors():
    p = Params(a=bodil.Uniform(0.0, 1.0), c=1.0)
    with pytest.raises(ValueError, match="outside the support"):
        p.unconstrain({"a": 2.0})
    with pytest.raises(KeyError, match="missing \\['a'\\]"):
        p.log_prob({})
    with pytest.raises(KeyError, match="fixed parameters are not part of theta"):
        p.log_prob({"a": 0.5, "c": 1.0})
    with pytest.raises(TypeError, match="neither"):
        Params(a="x")
    with pytest.raises(ValueError, match="NaN"):
        Params(a=np.nan)


def _heat_problem(reduction):
    g = Grid((5, 8), 0.0, 1.0, ("t", "x"), ("node", "periodic"))
    prior = PDEPrior(residuals.heat_equation("D"), g, beta=3.0,
                     initial=residuals.gaussian_bump(("x0",), 0.1), beta_initial=7.0, reduction=reduction)
    return g, prior


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_pde_prior_normalisation(reduction):
    g, prior = _heat_problem(reduction)
    u = jnp.asarray(np.random.default_rng(0).normal(size=g.shape))
    theta = {"D": 0.1, "x0": 0.3}
    r = residuals.heat_equation("D")(u, theta, g)["pde"]
    ic = residuals.gaussian_bump(("x0",), 0.1)(u, theta, g)["ic"]
    agg = jnp.mean if reduction == "mean" else jnp.sum
    want = -3.0 * agg(r**2) - 7.0 * agg(ic**2)
    assert float(prior.log_prob(u, theta)) == pytest.approx(float(want), rel=1e-12)


def test_pde_prior_errors():
    g = Grid((5, 8), 0.0, 1.0)
    with pytest.raises(ValueError, match="reduction"):
        PDEPrior(residuals.heat_equation(0.1), g, reduction="max")
    with pytest.raises(ValueError, match="beta_initial"):
        PDEPrior(residuals.heat_equation(0.1), g, initial=residuals.gaussian_bump(("x0",)))
    with pytest.raises(TypeError, match="bodil.Grid"):
        PDEPrior(residuals.heat_equation(0.1), (5, 8))


def test_posterior_parts_and_potential():
    g, prior = _heat_problem("mean")
    y = np.linspace(-1, 1, 8)
    lik = bodil.Gaussian(lambda u, th: u[-1], y, sigma=0.2)
    post = Posterior(prior, lik, Params(D=bodil.LogNormal(np.log(0.1), 0.5), x0=0.3))
    u = jnp.asarray(np.random.default_rng(1).normal(size=g.shape))
    theta = {"D": jnp.asarray(0.12)}
    parts = post.log_density_parts(u, theta)
    assert set(parts) == {"pde", "ic", "data", "theta"}
    total = post.log_density(u, theta)
    assert float(sum(parts.values())) == pytest.approx(float(total), rel=1e-12)
    assert float(parts["data"]) == pytest.approx(stats.norm.logpdf(y, np.asarray(u[-1]), 0.2).sum(), rel=1e-12)
    assert float(parts["theta"]) == pytest.approx(stats.lognorm.logpdf(0.12, 0.5, scale=0.1), rel=1e-10)
    x = post.unconstrain(u, theta)
    # potential = -log p - log|dT/dz|; for the exp transform log|dT/dz| = z
    assert float(post.potential(x)) == pytest.approx(-float(total) - float(np.log(0.12)), rel=1e-12)


def test_posterior_rejects_bad_field():
    g, prior = _heat_problem("mean")
    post = Posterior(prior, None, Params(D=0.1, x0=0.3))
    with pytest.raises(ValueError, match="has shape"):
        post.check(jnp.zeros((4, 8)), {})
    with pytest.raises(ValueError, match="NaN"):
        post.check(jnp.full(g.shape, jnp.nan), {})
