"""BASIS / TMCMC: log-evidence and posterior moments on cases with known values, the tumour pipeline's BASIS
settings, reproducibility, executors, checkpoints, aux.

Statistical tests compare one run (seed 0, not tuned) with the exact value at a bound fixed in advance
(``tests/montecarlo.py``): a test function makes ``K`` comparisons ``|estimate - centre| < z se`` with
``z = Phi^-1(1 - 1e-4 / 2K)`` (a false-alarm rate of 1e-4 for the whole function, parametrisations included,
Bonferroni over its comparisons) and ``se`` the standard error of the compared estimate: its standard deviation
over 50 other seeds (1000-1049) at the same settings, measured by ``benchmarks/inference.py --spread``, which
prints the numbers below. Means and variances are centred at the exact posterior moments. The log-evidence is
the log of an estimate that is unbiased in ``Z``, so it is centred at ``log Z - se^2 / 2`` (the bias of the log of
a log-normal estimate; the measured biases agree with it within their Monte Carlo error).

The tumour pipeline's BASIS settings (``bodil.tumor.CTVSettings``: 128 samples, ``beta = 0.7``,
``gamma = 1.5``, ``lmax = 3``) are tested on a 3-D and a 5-D Gaussian posterior much narrower than the prior
box. The papers' ``beta = 0.2, lmax = 1`` (Korali's defaults) were too noisy there: over 50 seeds a run's
posterior mean spread 0.7-0.9 posterior sd (0.35-0.4 with 512 samples) and its variance 65-90% (40%), i.e.
an effective sample size of one or two (six to eight); see ``docs/tumor.md``.
"""

import pickle
from concurrent.futures import ThreadPoolExecutor

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import bodil
from bodil.cases import linear_gaussian
from bodil.inference.executors import BatchExecutor, PoolExecutor, SerialExecutor, VmapExecutor
from bodil.inference.smc import (SMCSettings, basis, build_kernel, chain_lengths, next_exponent, plan_stage, smc,
                                 tmcmc)
from bodil.prior import Params
from montecarlo import FAMILY_RATE, z_bound

LOG2PI = np.log(2 * np.pi)


def box(low, high, d):
    return Params(x=bodil.Uniform(low * jnp.ones(d), high * jnp.ones(d)))


# Likelihoods on a batch {"x": (m, d)} (BatchExecutor) or one theta {"x": (d,)}.
def normal_1d(t):
    return -0.5 * ((np.asarray(t["x"])[..., 0] + 2.0) / 3.0) ** 2 - np.log(3.0) - 0.5 * LOG2PI


def gauss_5d(t):
    return -0.5 * np.sum(np.asarray(t["x"]) ** 2, axis=-1)


def mixture_4d(t):
    x, s, d = np.asarray(t["x"]), 0.1, 4
    c = -d * np.log(s) - 0.5 * d * LOG2PI
    return np.logaddexp(np.log(0.1) + c - 0.5 * np.sum((x + 0.5) ** 2, -1) / s**2,
                        np.log(0.9) + c - 0.5 * np.sum((x - 0.5) ** 2, -1) / s**2)


# Shaped like the tumour pipeline's posterior of the initial position: three parameters, correlated, of unequal
# widths 13-40 times narrower than the uniform prior box, off its centre (KL(posterior | prior) = 5.7 nats).
MU_3D, SD_3D = np.array([0.3, -0.2, 0.1]), np.array([0.05, 0.1, 0.15])
COV_3D = np.array([[1.0, 0.6, -0.3], [0.6, 1.0, 0.4], [-0.3, 0.4, 1.0]]) * np.outer(SD_3D, SD_3D)


def gauss_3d(t):  # the normalised N(MU_3D, COV_3D) density: Z = its mass in [-1, 1]^3 / 8
    r = np.asarray(t["x"]) - MU_3D
    norm = -0.5 * np.linalg.slogdet(2 * np.pi * COV_3D)[1]
    return norm - 0.5 * np.einsum("...i,ij,...j->...", r, np.linalg.inv(COV_3D), r)


# (params, likelihood, exact log Z, options of the log-evidence test)
CASES = {
    "normal-1d": (box(-15.0, 15.0, 1), normal_1d, -3.40120, dict()),
    "gauss-5d": (box(-5.0, 5.0, 5), gauss_5d, -6.91824, dict(beta=0.5, lmax=10)),
    "mixture-4d": (box(-2.0, 2.0, 4), mixture_4d, -5.54518, dict(beta=0.5, lmax=10)),
    "gauss-3d": (box(-1.0, 1.0, 3), gauss_3d, -np.log(8.0), None),
}
# Exact posterior means and variances per coordinate (truncated normals; gauss-3d: the truncation changes them
# by less than 1e-7, relative).
TRUNCATED_1D = stats.truncnorm(-13 / 3, 17 / 3, loc=-2.0, scale=3.0)
MOMENTS = {
    "normal-1d": (TRUNCATED_1D.mean(), TRUNCATED_1D.var()),
    "gauss-5d": (np.zeros(5), np.full(5, stats.truncnorm(-5.0, 5.0).var())),
    "gauss-3d": (MU_3D, np.diag(COV_3D)),
}


def test_reference_values_are_analytic():
    ph = stats.norm.cdf
    assert np.log((ph(17 / 3) - ph(-13 / 3)) / 30) == pytest.approx(CASES["normal-1d"][2], abs=1e-5)
    assert 5 * np.log(np.sqrt(2 * np.pi) * (ph(5) - ph(-5)) / 10) == pytest.approx(CASES["gauss-5d"][2], abs=1e-5)
    mass = [(ph((2 - m) / 0.1) - ph((-2 - m) / 0.1)) ** 4 for m in (-0.5, 0.5)]
    assert np.log((0.1 * mass[0] + 0.9 * mass[1]) / 256) == pytest.approx(CASES["mixture-4d"][2], abs=1e-5)
    # gauss-3d: the mass outside the box is below 1e-9 (a union bound over the faces), so log Z = -log 8 and
    # the moments are the Gaussian's; a trapezoid rule on 121^3 points (2 per smallest sd) agrees
    outside = np.sum(ph((-1.0 - MU_3D) / SD_3D) + ph((MU_3D - 1.0) / SD_3D))
    assert outside < 1e-9 and np.all(np.linalg.eigvalsh(COV_3D) > 0)
    g = np.linspace(-1.0, 1.0, 121)
    x = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    p = np.exp(gauss_3d({"x": x})) * (g[1] - g[0]) ** 3
    mean = p @ x / p.sum()
    assert np.log(p.sum() / 8) == pytest.approx(CASES["gauss-3d"][2], abs=1e-9)
    np.testing.assert_allclose(mean, MU_3D, atol=1e-9)
    np.testing.assert_allclose(p @ (x - mean) ** 2 / p.sum(), np.diag(COV_3D), rtol=1e-7)  # truncation: 3e-8


# Standard deviations over 50 seeds of what the statistical tests compare (benchmarks/inference.py --spread):
# log Z (nats), a posterior mean (posterior sd), a posterior variance (relative), mean |x|; the largest over
# the coordinates.
SPREAD = {
    ("normal-1d", "basis"): dict(log_z=0.0414, mean=0.0559),
    ("gauss-5d", "basis"): dict(log_z=0.0784),
    ("mixture-4d", "basis"): dict(log_z=0.172, abs_mean=0.0020),
    ("normal-1d", "tmcmc"): dict(log_z=0.0395),
}


@pytest.mark.parametrize("name", ["normal-1d", "gauss-5d", "mixture-4d"])
def test_basis_log_evidence(name):
    """K = 5 comparisons over the three cases: log Z of each, the posterior mean of normal-1d, the mean |x| of
    mixture-4d (n = 1000; gauss-5d and mixture-4d with beta = 0.5, lmax = 10)."""
    z = z_bound(5, FAMILY_RATE)  # 4.26
    params, loglik, log_z, options = CASES[name]
    sd = SPREAD[name, "basis"]
    idata = basis(loglik, params, 1000, seed=0, executor=BatchExecutor(), **options)
    assert abs(idata.attrs["log_evidence"] - (log_z - sd["log_z"] ** 2 / 2)) < z * sd["log_z"]
    stages = idata.smc_stages
    assert stages.q.values[0] == 0.0 and stages.q.values[-1] == 1.0 and np.all(np.diff(stages.q.values) > 0)
    assert idata.posterior.x.shape == (1, 1000, params.priors["x"].batch_shape[0])
    if name == "mixture-4d":  # E|x_i| = 0.5 in both modes (sigma 0.1 << 0.5)
        assert abs(np.abs(idata.posterior.x.values).mean() - 0.5) < z * sd["abs_mean"]
    if name == "normal-1d":  # posterior N(-2, 3^2) truncated to [-15, 15]
        mean, var = MOMENTS[name]
        assert abs(idata.posterior.x.values.mean() - mean) / np.sqrt(var) < z * sd["mean"]


def test_tmcmc_log_evidence():
    """K = 1: log Z of normal-1d (n = 1000)."""
    params, loglik, log_z, _ = CASES["normal-1d"]
    sd = SPREAD["normal-1d", "tmcmc"]["log_z"]
    idata = tmcmc(loglik, params, 1000, seed=0, executor=BatchExecutor())
    assert abs(idata.attrs["log_evidence"] - (log_z - sd**2 / 2)) < z_bound(1, FAMILY_RATE) * sd
    assert idata.attrs["algorithm"] == "tmcmc" and idata.attrs["max_chain_length"] == 0


# The BASIS settings of bodil.tumor.CTVSettings and the spread of one run's estimates there (n = 128).
PIPELINE = dict(n=128, beta=0.7, gamma=1.5, lmax=3)
PIPELINE_SPREAD = {"gauss-3d": dict(log_z=0.374, mean=0.136, var=0.152),
                   "gauss-5d": dict(log_z=0.491, mean=0.193, var=0.204)}


def test_pipeline_uses_the_validated_basis_settings():
    from bodil.tumor import CTVSettings as Settings

    s = Settings()
    assert dict(n=s.num_samples, beta=s.beta, gamma=s.gamma, lmax=s.lmax) == PIPELINE, \
        "new BASIS defaults: measure them with benchmarks/inference.py --spread and update PIPELINE(_SPREAD)"
    assert (Settings.paper().beta, Settings.paper().gamma, Settings.paper().lmax) == (s.beta, s.gamma, s.lmax)


@pytest.mark.parametrize("name", ["gauss-3d", "gauss-5d"])
def test_basis_at_pipeline_settings(name):
    """K = 18 comparisons over the two cases: log Z, and each coordinate's posterior mean and variance of the
    samples (gauss-3d 1 + 3 + 3, gauss-5d 1 + 5 + 5)."""
    z = z_bound(18, FAMILY_RATE)  # 4.54
    params, loglik, log_z, _ = CASES[name]
    mean, var = MOMENTS[name]
    sd = PIPELINE_SPREAD[name]
    options = {k: v for k, v in PIPELINE.items() if k != "n"}
    idata = basis(loglik, params, PIPELINE["n"], seed=0, executor=BatchExecutor(), **options)
    x = idata.posterior.x.values[0]
    assert abs(idata.attrs["log_evidence"] - (log_z - sd["log_z"] ** 2 / 2)) < z * sd["log_z"]
    np.testing.assert_array_less(np.abs(x.mean(0) - mean) / np.sqrt(var), z * sd["mean"])
    np.testing.assert_array_less(np.abs(x.var(0, ddof=1) / var - 1.0), z * sd["var"])


def run_small(executor=None, loglik=None, **options):
    params = box(-2.0, 2.0, 4)
    return basis(loglik or mixture_4d, params, 200, seed=3, executor=executor, **options)


def same(a, b):
    return (np.array_equal(a.posterior.x.values, b.posterior.x.values)
            and np.array_equal(a.sample_stats.log_likelihood.values, b.sample_stats.log_likelihood.values)
            and a.attrs["log_evidence"] == b.attrs["log_evidence"])


def test_same_seed_same_result():
    a, b = run_small(BatchExecutor()), run_small(BatchExecutor())
    assert same(a, b)
    c = basis(mixture_4d, box(-2.0, 2.0, 4), 200, seed=4, executor=BatchExecutor())
    assert not np.array_equal(a.posterior.x.values, c.posterior.x.values)


def jax_mixture(t):
    x, s = t["x"], 0.1
    c = -4 * jnp.log(s) - 2 * jnp.log(2 * jnp.pi)
    return jnp.logaddexp(jnp.log(0.1) + c - 0.5 * jnp.sum((x + 0.5) ** 2) / s**2,
                         jnp.log(0.9) + c - 0.5 * jnp.sum((x - 0.5) ** 2) / s**2)


def test_executors_give_identical_results():
    reference = run_small(BatchExecutor())
    assert same(reference, run_small(SerialExecutor()))
    with ThreadPoolExecutor(2) as pool:
        assert same(reference, run_small(pool))
        assert same(reference, run_small(PoolExecutor(pool, chunksize=16)))
    # jit(vmap(f)) against the same compiled arithmetic one theta at a time: identical
    vmapped = run_small(VmapExecutor(), jax_mixture)
    assert same(vmapped, run_small(None, jax.jit(jax_mixture)))
    assert same(vmapped, run_small(VmapExecutor(batch_size=64), jax_mixture))
    # and the same samples as the numpy version up to rounding of the log-likelihood
    assert vmapped.attrs["log_evidence"] == pytest.approx(reference.attrs["log_evidence"], rel=1e-12)


class Interrupt(Exception):
    pass


def test_resume_after_crash_is_bit_identical(tmp_path):
    path = tmp_path / "run.ckpt"
    full = run_small(BatchExecutor(), burn_in=1, lmax=2)
    calls = {"n": 0}

    def crashing(t):
        calls["n"] += 1
        if calls["n"] > 4:  # a few batches: the crash comes in the middle of a stage
            raise Interrupt("node lost")
        return mixture_4d(t)

    with pytest.raises(Interrupt):
        run_small(BatchExecutor(), crashing, burn_in=1, lmax=2, checkpoint=path)
    saved = pickle.loads(path.read_bytes())["state"]
    assert 0 < saved["stage"] < full.attrs["stages"]
    resumed = run_small(BatchExecutor(), burn_in=1, lmax=2, checkpoint=path, resume=True)
    assert same(full, resumed)
    np.testing.assert_array_equal(full.smc_stages.q.values, resumed.smc_stages.q.values)


def test_resume_after_max_stages_and_bad_checkpoints(tmp_path):
    path = tmp_path / "run.ckpt"
    full = run_small(BatchExecutor())
    with pytest.raises(RuntimeError, match="max_stages"):
        run_small(BatchExecutor(), checkpoint=path, max_stages=2)
    assert same(full, run_small(BatchExecutor(), checkpoint=path, resume=True))
    with pytest.raises(ValueError, match="gamma: checkpoint 1.0, call 1.5"):
        run_small(BatchExecutor(), checkpoint=path, resume=True, gamma=1.5)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable bodil SMC checkpoint"):
        run_small(BatchExecutor(), checkpoint=path, resume=True)
    assert not [p for p in tmp_path.iterdir() if p.name != "run.ckpt"]  # no temporary files left


def test_aux_is_carried_with_its_particle():
    def with_aux(t):
        return mixture_4d(t), {"twice": 2.0 * np.asarray(t["x"]), "norm": np.linalg.norm(t["x"], axis=-1)}

    for sampler in (basis, tmcmc):
        idata = sampler(with_aux, box(-2.0, 2.0, 4), 300, seed=1, executor=BatchExecutor(), burn_in=1)
        x = idata.posterior.x.values
        np.testing.assert_array_equal(idata.posterior.twice.values, 2.0 * x)
        np.testing.assert_allclose(idata.posterior.norm.values, np.linalg.norm(x, axis=-1))
        np.testing.assert_array_equal(idata.sample_stats.log_likelihood.values[0], mixture_4d({"x": x[0]}))


def test_parameter_shapes_and_netcdf_roundtrip(tmp_path):
    params = Params(a=bodil.Normal(0.0, 1.0), B=bodil.Uniform(-jnp.ones((2, 3)), jnp.ones((2, 3))), fixed=3.0)
    seen = []

    def loglik(t):
        seen.append({k: np.shape(v) for k, v in t.items()})
        return -0.5 * (t["a"] - 1.0) ** 2 - 0.5 * np.sum(t["B"] ** 2)

    idata = smc(loglik, params, 50, seed=0, progress=True)
    assert seen[0] == {"a": (), "B": (2, 3)}
    assert idata.posterior.a.shape == (1, 50) and idata.posterior.B.shape == (1, 50, 2, 3)
    idata.to_netcdf(tmp_path / "smc.nc", engine="h5netcdf")
    back = az.from_netcdf(tmp_path / "smc.nc", engine="h5netcdf")
    assert back.attrs["log_evidence"] == idata.attrs["log_evidence"]
    assert back.sample_stats.attrs["log_evidence"] == idata.attrs["log_evidence"]
    assert set(back.groups()) == {"posterior", "sample_stats", "smc_stages"}
    np.testing.assert_array_equal(back.smc_stages.log_evidence.values, idata.smc_stages.log_evidence.values)
    assert back.smc_stages.log_evidence.values[-1] == idata.attrs["log_evidence"]


def test_minus_infinity_and_nan():
    def half(t):  # L = 1 on x > 0, 0 elsewhere: Z = 1/2
        return np.where(np.asarray(t["x"])[..., 0] > 0, 0.0, -np.inf)

    idata = basis(half, box(-1.0, 1.0, 1), 1000, seed=0, executor=BatchExecutor())
    assert np.all(idata.posterior.x.values > 0)
    # log Z = log of the fraction of the 1000 prior draws with x > 0: se = sqrt(p (1 - p) / n) / p; K = 1
    se = np.sqrt(0.25 / 1000) / 0.5
    assert idata.attrs["log_evidence"] == pytest.approx(np.log(0.5), abs=z_bound(1, FAMILY_RATE) * se)

    def nan_at_positive(t):
        return np.nan if t["x"][0] > 0 else 0.0

    with pytest.raises(FloatingPointError, match=r"returned nan at theta = \{'x': \["):
        basis(nan_at_positive, box(-1.0, 1.0, 1), 20, seed=0)


def test_bad_inputs():
    params, loglik = box(-1.0, 1.0, 1), normal_1d
    for kwargs, match in [(dict(num_samples=1), "num_samples must be an integer >= 2"),
                          (dict(gamma=0.0), "gamma must be a finite positive number"),
                          (dict(beta=-1.0), "beta must be a finite positive number"), (dict(lmax=0), "lmax"),
                          (dict(resume=True), "needs checkpoint")]:
        with pytest.raises(ValueError, match=match):
            basis(loglik, params, **kwargs)
    with pytest.raises(ValueError, match="no inferred entries"):
        basis(loglik, Params(x=1.0))
    with pytest.raises(TypeError, match="bodil.Params"):
        basis(loglik, {"x": bodil.Uniform(0.0, 1.0)})
    with pytest.raises(TypeError, match="max_chain_length"):
        basis(loglik, params, max_chain_length=3)
    with pytest.raises(TypeError, match="executor"):
        basis(loglik, params, executor="dask")
    with pytest.raises(ValueError, match="-inf at all"):
        basis(lambda t: -np.inf, params, 10)


def test_next_exponent_hits_the_target_cv():
    loglik = np.random.default_rng(0).normal(0.0, 30.0, 500)
    q, cv = next_exponent(loglik, 0.2, 1.0)
    w = np.exp((q - 0.2) * (loglik - loglik.max()))
    assert 0.2 < q < 1 and np.std(w) / np.mean(w) == pytest.approx(1.0, rel=1e-9) and cv == pytest.approx(1.0)
    assert next_exponent(loglik, 0.2, 1.0, max_rho_update=1e-3)[0] == pytest.approx(0.201)
    assert next_exponent(np.zeros(10), 0.3, 1.0) == (1.0, 0.0)


def test_chain_lengths_follow_korali():
    seeds, lengths = chain_lengths(np.array([0, 5, 1, 7]), 2)
    assert seeds.tolist() == [1, 1, 1, 2, 3, 3, 3, 3] and lengths.tolist() == [1, 2, 2, 1, 1, 2, 2, 2]
    assert chain_lengths(np.array([3, 0, 2]), None)[1].tolist() == [3, 2]
    assert chain_lengths(np.array([3, 0, 2]), 1)[1].tolist() == [1] * 5


def test_mode_approximation_warm_starts_depend_on_theta_and_start_only():
    pb = linear_gaussian()
    mode = bodil.ModeApproximation(pb.posterior, (pb.u0, pb.theta0))
    v0, x0 = mode.warm_log_likelihood({"s": 0.1})
    v1, x1 = mode.warm_log_likelihood({"s": 0.3}, x0)
    assert [r.start for r in mode.records] == ["u0", "particle"] and len(mode._cache) == 1  # nothing stored
    assert mode.records[-1].warm_start_distance == pytest.approx(0.2)
    assert mode.warm_log_likelihood({"s": 0.3}, x0)[0] == v1  # in any order, on any worker: the same value
    np.testing.assert_array_equal(mode.warm_log_likelihood({"s": 0.3}, x0)[1], x1)
    assert v1[0] == pytest.approx(mode.log_likelihood({"s": 0.3})[0], abs=1e-8)


def test_extras_and_stats_travel_with_their_particle_under_their_names(tmp_path):
    def with_stats(t):
        x = np.asarray(t["x"])
        return mixture_4d(t), {"twice": 2.0 * x}, {"inside": np.all(np.abs(x) < 1.0, axis=-1),
                                                    "norm": np.linalg.norm(x, axis=-1)}

    idata = basis(with_stats, box(-2.0, 2.0, 4), 200, seed=3, executor=BatchExecutor())
    assert same(idata, run_small(BatchExecutor()))  # what a likelihood carries does not change the samples
    x = idata.posterior.x.values
    np.testing.assert_array_equal(idata.posterior.twice.values, 2.0 * x)
    np.testing.assert_array_equal(idata.sample_stats.inside.values, np.all(np.abs(x) < 1.0, axis=-1))
    np.testing.assert_allclose(idata.sample_stats.norm.values, np.linalg.norm(x, axis=-1))
    assert "norm" not in idata.posterior and "twice" not in idata.sample_stats
    idata.to_netcdf(tmp_path / "smc.nc", engine="h5netcdf")
    back = az.from_netcdf(tmp_path / "smc.nc", engine="h5netcdf")
    np.testing.assert_array_equal(back.sample_stats.inside.values, idata.sample_stats.inside.values)

    def changing(t):  # extras of another structure than the particles carry
        x = np.asarray(t["x"])
        return (mixture_4d(t), {"twice": 2.0 * x}) if x[0] < 1.0 else (mixture_4d(t), {"other": x})

    with pytest.raises(TypeError, match="extras of different structures"):
        basis(changing, box(-2.0, 2.0, 4), 50, seed=0)


def test_seed_may_be_a_jax_key():
    reference = run_small(BatchExecutor())
    for key in (jax.random.key(3), jax.random.PRNGKey(3)):
        assert same(reference, basis(mixture_4d, box(-2.0, 2.0, 4), 200, seed=key, executor=BatchExecutor()))
    other = basis(mixture_4d, box(-2.0, 2.0, 4), 50, seed=jax.random.split(jax.random.key(3))[0])
    assert isinstance(other.attrs["seed"], (int, str))
    with pytest.raises(TypeError, match="seed must be an integer or a jax.random key"):
        basis(mixture_4d, box(-2.0, 2.0, 4), 50, seed="three")


def test_kernel_runs_without_the_driver():
    """``build_kernel``: the same stages as ``basis``, with the likelihood called in this process."""
    reference = run_small(BatchExecutor())
    settings = SMCSettings(num_samples=200, seed=3)
    algorithm = build_kernel(mixture_4d, box(-2.0, 2.0, 4), settings)
    state = algorithm.init()
    plan = plan_stage(state, settings._replace(names=("x",), shapes=((4,),)))
    assert plan.stage == 1 and plan.counts.sum() == 200 and len(plan.log_u) == int(plan.steps.sum())
    while state.q < 1.0:
        state = algorithm.step(state)
    np.testing.assert_array_equal(state.x, reference.posterior.x.values[0])
    assert state.log_evidence == reference.attrs["log_evidence"] and state.stage == reference.attrs["stages"]
    with pytest.raises(ValueError, match="SMCSettings: lmax must be an integer >= 1"):
        SMCSettings(lmax=0)
    with pytest.raises(ValueError, match="SMCSettings: beta must be a finite positive number"):
        settings._replace(beta=0.0)
    assert SMCSettings(max_chain_length=None).max_chain_length == 0


def test_resume_from_a_format_1_checkpoint(tmp_path):
    """Checkpoints of bodil before ``n`` became ``num_samples`` (format ``bodil.smc/1``) are resumed."""
    path = tmp_path / "run.ckpt"
    full = run_small(BatchExecutor())
    with pytest.raises(RuntimeError, match="max_stages"):
        run_small(BatchExecutor(), checkpoint=path, max_stages=2)
    data = pickle.loads(path.read_bytes())
    assert data["format"] == "bodil.smc/2"
    settings, state = data["settings"], data["state"]
    settings["n"] = settings.pop("num_samples")
    state["aux"] = state.pop("extras")
    del state["stats"]
    path.write_bytes(pickle.dumps({"format": "bodil.smc/1", "settings": settings, "state": state}))
    assert same(full, run_small(BatchExecutor(), checkpoint=path, resume=True))


def test_mode_approximation_diagnostics_travel_with_the_particle():
    """Each final particle carries the converged flag and iterations of its own inner solve: solves below
    s = 0.2 get one iteration (unconverged, their value a lower bound), the others converge."""
    pb = linear_gaussian()
    mode = bodil.ModeApproximation(pb.posterior, (pb.u0, pb.theta0), keep=lambda u, th: {"field": u},
                                   on_failure="lower-bound")

    def log_likelihood(theta):
        mode.run_options["max_iter"] = 1 if float(theta["s"]) < 0.2 else 50
        return mode.log_likelihood(theta)

    idata = basis(log_likelihood, pb.posterior.params, 16, seed=0)
    s = idata.posterior.s.values.ravel()
    converged, iterations = idata.sample_stats.converged.values.ravel(), idata.sample_stats.iterations.values.ravel()
    assert 0 < np.count_nonzero(s < 0.2) < 16  # both kinds among the final particles
    np.testing.assert_array_equal(converged, s >= 0.2)
    assert np.all(iterations[s < 0.2] == 1) and np.all(iterations >= 1)
    assert idata.posterior.field.shape[:2] == (1, 16)
