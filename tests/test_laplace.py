"""Laplace approximation: exact on a linear-Gaussian problem, low-rank equal to dense when the rank covers
the spectrum, samples with the right covariance, clear errors."""

import jax
import numpy as np
import pytest

import bodil
from bodil.cases import linear_gaussian, oscillator, reaction_diffusion_2d


@pytest.fixture(scope="module")
def lg():
    pb = linear_gaussian()
    fit = bodil.map_estimate(pb.posterior, pb.u0, pb.theta0, strategy="joint", eta_max=0.0, gtol=1e-12)
    return pb, fit


@pytest.fixture(scope="module")
def lg_laplaces(lg):
    pb, fit = lg
    return {m: bodil.laplace(pb.posterior, fit, method=m, rank=20) for m in ("dense", "low-rank")}


def _flat(mean):
    u, theta = mean
    return np.concatenate([np.ravel(u), [float(theta["s"])]])


@pytest.mark.parametrize("method", ["dense", "low-rank"])
def test_linear_gaussian_matches_closed_form(lg, lg_laplaces, method):
    pb, _ = lg
    exact = pb.truth["closed_form"]
    lap = lg_laplaces[method]
    assert lap.method == method
    mean, cov = _flat(lap.mean), np.asarray(lap.cov())
    assert np.max(np.abs(mean - exact["mean"])) <= 1e-8 * np.max(np.abs(exact["mean"]))
    assert np.max(np.abs(cov - exact["cov"])) <= 1e-8 * np.max(np.abs(exact["cov"]))
    u_std, theta_std = lap.std()
    std = np.concatenate([np.ravel(u_std), [float(theta_std["s"])]])
    np.testing.assert_allclose(std, np.sqrt(np.diag(exact["cov"])), rtol=1e-8)
    np.testing.assert_allclose(lap.log_evidence, exact["log_evidence"], rtol=1e-8)
    np.testing.assert_allclose(np.asarray(lap.theta_cov()), exact["cov"][-1:, -1:], rtol=1e-8)
    marg = lap.marginal("s")
    np.testing.assert_allclose([float(marg.loc), float(marg.scale)],
                               [exact["mean"][-1], np.sqrt(exact["cov"][-1, -1])], rtol=1e-8)


def test_low_rank_reports_spectrum(lg_laplaces):
    spec = lg_laplaces["low-rank"].spectrum
    assert spec["rank"] == 20
    assert spec["captured"] == pytest.approx(1.0, abs=1e-8)  # 10 data points: rank 10 at most
    assert spec["smallest_kept"] < 1e-8
    assert lg_laplaces["dense"].spectrum is None


@pytest.mark.parametrize("method", ["dense", "low-rank"])
def test_samples_have_the_posterior_covariance(lg, lg_laplaces, method):
    pb, _ = lg
    exact = pb.truth["closed_form"]
    n = 4000
    u, theta = lg_laplaces[method].sample(jax.random.key(3), n)
    x = np.concatenate([np.asarray(u).reshape(n, -1), np.asarray(theta["s"])[:, None]], axis=1)
    sd = np.sqrt(np.diag(exact["cov"]))
    # Independent draws: the mean's standard error is sd / sqrt(n), a variance's is var * sqrt(2 / n).
    # Five pre-declared coordinates (s, nodes at t=0, a middle and the last time), each at 3.5 standard errors.
    for i in (-1, 0, 4 * 8 + 3, 8 * 8 + 5, 2):
        assert abs(x[:, i].mean() - exact["mean"][i]) < 3.5 * sd[i] / np.sqrt(n)
        assert abs(x[:, i].var() / sd[i] ** 2 - 1.0) < 3.5 * np.sqrt(2.0 / n)


def test_low_rank_pointwise_std_matches_dense_on_a_nonlinear_problem():
    pb = reaction_diffusion_2d(n=8, nt=9, t_final=0.1)
    fit = bodil.map_estimate(pb.posterior, pb.u0, pb.theta0, gtol=1e-10)
    dense = bodil.laplace(pb.posterior, fit, method="dense", hessian="gauss-newton")
    low = bodil.laplace(pb.posterior, fit, method="low-rank", rank=64)  # 64 data pixels: rank covers it
    (ud, td), (ul, tl) = dense.std(), low.std()
    np.testing.assert_allclose(np.asarray(ul), np.asarray(ud), rtol=1e-6)
    for k in td:
        np.testing.assert_allclose(float(tl[k]), float(td[k]), rtol=1e-6)
    np.testing.assert_allclose(low.log_evidence, dense.log_evidence, rtol=1e-6)


def test_improper_field_prior():
    pb = oscillator()
    fit = bodil.map_estimate(pb.posterior, pb.u0, pb.theta0)
    lap = bodil.laplace(pb.posterior, fit)
    assert lap.method == "dense" and np.isnan(lap.log_evidence)
    assert "improper" in lap.evidence_note
    with pytest.raises(ValueError, match="singular"):
        bodil.laplace(pb.posterior, fit, method="low-rank", rank=4)


def test_bad_arguments(lg):
    pb, fit = lg
    with pytest.raises(ValueError, match="method"):
        bodil.laplace(pb.posterior, fit, method="sparse")
    with pytest.raises(ValueError, match="Gauss-Newton"):
        bodil.laplace(pb.posterior, fit, method="low-rank", hessian="exact")
    with pytest.raises(KeyError, match="unknown parameter"):
        bodil.laplace(pb.posterior, fit).marginal("omega")
