"""SMC: bodil BASIS against blackjax's adaptive tempered SMC on cases with known evidence, and the seed spread
behind tests/test_smc.py's bounds and the tumour pipeline's BASIS settings.

Cases (analytic log Z, see `truth()`; exact posterior moments of the Gaussian ones in `moments()`):
1. prior U[-15, 15], likelihood N(-2, 3^2) (normalised): log Z = log((Phi(17/3) - Phi(-13/3)) / 30) = -3.4012
2. prior U[-5, 5]^5, likelihood exp(-|x|^2 / 2): log Z = 5 log(sqrt(2 pi) (1 - 2 Phi(-5)) / 10) = -6.9182
3. prior U[-2, 2]^4, likelihood 0.1 N(-0.5, 0.1^2 I) + 0.9 N(0.5, 0.1^2 I): log Z = -log 256 = -5.5452
4. prior U[-1, 1]^3, likelihood N(mu, Sigma) (normalised), sd 0.05, 0.1, 0.15, correlations 0.6, -0.3, 0.4:
   log Z = -log 8 = -2.0794 (mass outside the box < 1e-9); shaped like the tumour posterior of the origin

Both samplers anneal ``L^q p`` with the same rule (ESS/n = 1/2, i.e. a coefficient of variation 1 of the
incremental weights) and move particles by a Gaussian random walk with covariance ``beta^2`` times the
weighted particle covariance; blackjax resamples systematically and moves before reweighting. Wall times
are from the second and later seeds (the first run of each row compiles and is not timed). Likelihood
evaluations: bodil counts them; blackjax evaluates ``n (k + 3)`` per stage for ``k`` MCMC steps (ESS
solve, chain init, k steps, reweighting), proposals outside the prior included.

``--spread`` runs 50 seeds (1000-1049; the tests use seed 0) with a numpy batch likelihood and prints (1) for
every statistical test of tests/test_smc.py the bias and standard deviation of each compared estimate and the
bound ``z sd`` with ``z = Phi^-1(1 - 1e-4 / 2K)`` for its ``K`` comparisons, and (2) for BASIS settings around
the tumour pipeline's, on cases 4 and 2 with 128 and 512 samples, the bias and spread of log Z and of each
coordinate's posterior mean and variance, the likelihood evaluations, and whether the settings pass (see
``settings_table``). About an hour on one core.

    .venv/bin/python benchmarks/inference.py            # 5 seeds, n = 1000
    .venv/bin/python benchmarks/inference.py --quick    # 3 seeds
    .venv/bin/python benchmarks/inference.py --spread   # 50 seeds: the tests' bounds, the pipeline's settings
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import inspect
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax

jax.config.update("jax_enable_x64", True)

import blackjax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

import bodil  # noqa: E402
from bodil.inference.executors import BatchExecutor, VmapExecutor  # noqa: E402
from bodil.inference.smc import basis, tmcmc  # noqa: E402
from bodil.prior import Params  # noqa: E402


class Case(NamedTuple):
    name: str
    low: float
    high: float
    d: int
    loglik: object  # x (d,) -> log L, JAX; also works on batches (..., d) with numpy or jax arrays
    truth: float


def _normal_1d(x):
    return -0.5 * ((x[..., 0] + 2.0) / 3.0) ** 2 - jnp.log(3.0) - 0.5 * jnp.log(2 * jnp.pi)


def _gauss_5d(x):
    return -0.5 * jnp.sum(x**2, axis=-1)


def _mixture_4d(x):
    s, d = 0.1, 4
    c = -d * jnp.log(s) - 0.5 * d * jnp.log(2 * jnp.pi)
    a = jnp.log(0.1) + c - 0.5 * jnp.sum((x + 0.5) ** 2, axis=-1) / s**2
    b = jnp.log(0.9) + c - 0.5 * jnp.sum((x - 0.5) ** 2, axis=-1) / s**2
    return jnp.logaddexp(a, b)


# Case 4: shaped like the tumour pipeline's posterior of the initial position (3 parameters, a uniform prior
# box, a correlated posterior with unequal widths 13-40 times narrower than the box, off its centre).
GAUSS_3D_MEAN = np.array([0.3, -0.2, 0.1])
GAUSS_3D_SD = np.array([0.05, 0.1, 0.15])
GAUSS_3D_COV = np.array([[1.0, 0.6, -0.3], [0.6, 1.0, 0.4], [-0.3, 0.4, 1.0]]) * np.outer(GAUSS_3D_SD, GAUSS_3D_SD)
_GAUSS_3D_PREC = np.linalg.inv(GAUSS_3D_COV)
_GAUSS_3D_NORM = -0.5 * np.log(np.linalg.det(2 * np.pi * GAUSS_3D_COV))


def _gauss_3d(x):
    r = x - GAUSS_3D_MEAN
    return _GAUSS_3D_NORM - 0.5 * jnp.einsum("...i,ij,...j->...", r, _GAUSS_3D_PREC, r)


def gauss_3d_outside_mass() -> float:
    """An upper bound of the likelihood's mass outside [-1, 1]^3 (a union bound over the six faces): 1e-9."""
    lo, hi = (-1.0 - GAUSS_3D_MEAN) / GAUSS_3D_SD, (1.0 - GAUSS_3D_MEAN) / GAUSS_3D_SD
    return float(np.sum(stats.norm.cdf(lo) + stats.norm.sf(hi)))


def truth() -> dict[str, float]:
    """The analytic log-evidences (prior mass of the likelihood, truncation included; case 4: the mass outside
    the box is below 1e-9, so log Z = -log 8 to 1e-9)."""
    ph = stats.norm.cdf
    mix = [(ph((2 - m) / 0.1) - ph((-2 - m) / 0.1)) ** 4 for m in (-0.5, 0.5)]
    return {"1: U[-15,15], N(-2,9)": float(np.log((stats.norm(-2, 3).cdf(15) - stats.norm(-2, 3).cdf(-15)) / 30)),
            "2: U[-5,5]^5, exp(-|x|^2/2)": float(5 * np.log(np.sqrt(2 * np.pi) * (ph(5) - ph(-5)) / 10)),
            "3: U[-2,2]^4, mixture": float(np.log((0.1 * mix[0] + 0.9 * mix[1]) / 4**4)),
            "4: U[-1,1]^3, correlated N": float(-np.log(8.0))}


def moments() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Exact posterior means and variances per coordinate of the Gaussian cases (case 1: N(-2, 3^2) truncated to
    [-15, 15]; case 2: N(0, 1) truncated to [-5, 5] in each coordinate; case 4: the mass outside the box,
    < 1e-9, changes them by less than 1e-7, relative)."""
    t1, t2 = stats.truncnorm(-13.0 / 3.0, 17.0 / 3.0, loc=-2.0, scale=3.0), stats.truncnorm(-5.0, 5.0)
    return {"1: U[-15,15], N(-2,9)": (np.array([t1.mean()]), np.array([t1.var()])),
            "2: U[-5,5]^5, exp(-|x|^2/2)": (np.full(5, t2.mean()), np.full(5, t2.var())),
            "4: U[-1,1]^3, correlated N": (GAUSS_3D_MEAN, np.diag(GAUSS_3D_COV).copy())}


def cases() -> list[Case]:
    t = list(truth().items())
    return [Case(t[0][0], -15.0, 15.0, 1, _normal_1d, t[0][1]), Case(t[1][0], -5.0, 5.0, 5, _gauss_5d, t[1][1]),
            Case(t[2][0], -2.0, 2.0, 4, _mixture_4d, t[2][1]), Case(t[3][0], -1.0, 1.0, 3, _gauss_3d, t[3][1])]


@functools.cache
def _bodil_fn(name: str, vectorised: bool):
    """One function and executor per case, so that jit(vmap(fn)) compiles once per case and batch shape."""
    case = next(c for c in cases() if c.name == name)
    if vectorised:  # numpy on the stacked batch, as in tests/test_smc.py
        return (lambda t: np.asarray(case.loglik(np.asarray(t["x"])))), BatchExecutor()
    return (lambda t: case.loglik(t["x"])), VmapExecutor()


def run_bodil(case: Case, seed: int, n: int, beta: float, lmax: int, vectorised: bool = False, gamma: float = 1.0):
    params = Params(x=bodil.Uniform(case.low * jnp.ones(case.d), case.high * jnp.ones(case.d)))
    fn, executor = _bodil_fn(case.name, vectorised)
    t0 = time.perf_counter()
    idata = basis(fn, params, n, seed=seed, beta=beta, gamma=gamma, lmax=lmax, executor=executor)
    return idata.attrs["log_evidence"], idata.attrs["evaluations"], time.perf_counter() - t0, idata


def _weighted_chol(x, w, beta):
    mean = w @ x
    xc = x - mean
    cov = (w[:, None] * xc).T @ xc / (1.0 - jnp.sum(w**2))
    return jnp.linalg.cholesky(beta**2 * cov + 1e-12 * jnp.eye(x.shape[1]))


def make_blackjax(case: Case, n: int, beta: float, steps: int):
    """A jitted step and init of blackjax's adaptive tempered SMC with a tuned Gaussian random walk."""
    lo, hi = case.low * jnp.ones(case.d), case.high * jnp.ones(case.d)

    def logprior(x):
        return jnp.where(jnp.all((x >= lo) & (x <= hi)), -jnp.sum(jnp.log(hi - lo)), -jnp.inf)

    def rw_step(key, state, logdensity, chol):
        return blackjax.additive_step_random_walk(logdensity, blackjax.mcmc.random_walk.normal(chol)).step(key, state)

    def update(key, state, info):
        return blackjax.smc.base.extend_params({"chol": _weighted_chol(state.particles, state.weights, beta)})

    def algorithm(chol0):
        return blackjax.inner_kernel_tuning(
            smc_algorithm=blackjax.adaptive_tempered_smc, logprior_fn=logprior, loglikelihood_fn=case.loglik,
            mcmc_step_fn=rw_step, mcmc_init_fn=blackjax.rmh.init, resampling_fn=blackjax.smc.resampling.systematic,
            mcmc_parameter_update_fn=update, initial_parameter_value=blackjax.smc.base.extend_params({"chol": chol0}),
            num_mcmc_steps=steps, target_ess=0.5)

    @jax.jit
    def init(key):
        x = jax.random.uniform(key, (n, case.d), minval=lo, maxval=hi)
        return algorithm(_weighted_chol(x, jnp.full(n, 1.0 / n), beta)).init(x)

    @jax.jit
    def step(key, state):
        return algorithm(state.parameter_override["chol"][0]).step(key, state)

    return init, step


def run_blackjax(case: Case, seed: int, n: int, beta: float, steps: int, compiled=None):
    init, step = compiled or make_blackjax(case, n, beta, steps)
    t0 = time.perf_counter()
    key, sub = jax.random.split(jax.random.key(seed))
    state, log_z, stages = init(sub), 0.0, 0
    while float(state.sampler_state.tempering_param) < 1.0 and stages < 200:
        key, sub = jax.random.split(key)
        state, info = step(sub, state)
        log_z += float(info.log_likelihood_increment)
        stages += 1
    return log_z, stages * n * (steps + 3), time.perf_counter() - t0


def evidence_table(seeds: int = 5, n: int = 1000) -> list[dict]:
    """Print a markdown table: log Z mean +- std over seeds, |error of the mean|, evaluations, wall time."""
    methods = [("bodil BASIS (beta 0.2, lmax 1)", "bodil", 0.2, 1), ("bodil BASIS (beta 0.5, lmax 10)", "bodil", 0.5, 10),
               ("blackjax RW (beta 0.2, 1 step)", "blackjax", 0.2, 1),
               ("blackjax RW (beta 0.5, 10 steps)", "blackjax", 0.5, 10)]
    print(f"\n## Log-evidence, n = {n} particles, {seeds} seeds\n")
    print("| case | method | log Z (mean ± std) | truth | abs error of mean | likelihood evals | wall s |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for case in cases():
        for label, lib, beta, steps in methods:
            compiled = make_blackjax(case, n, beta, steps) if lib == "blackjax" else None
            results = []
            for seed in range(-1, seeds):  # seed -1 compiles, untimed
                if lib == "bodil":
                    results.append(run_bodil(case, seed + 1, n, beta, steps)[:3])
                else:
                    results.append(run_blackjax(case, seed + 1, n, beta, steps, compiled))
            z, ev, wall = (np.array(col) for col in zip(*results[1:]))
            row = dict(case=case.name, method=label, mean=z.mean(), std=z.std(ddof=1) if seeds > 1 else np.nan,
                       truth=case.truth, error=abs(z.mean() - case.truth), evals=ev.mean(), wall=wall.mean())
            rows.append(row)
            print(f"| {row['case']} | {label} | {row['mean']:.3f} ± {row['std']:.3f} | {case.truth:.4f} | "
                  f"{row['error']:.3f} | {row['evals']:.0f} | {row['wall']:.2f} |", flush=True)
    return rows


FAMILY_RATE = 1e-4  # false-alarm probability of one whole test function (as tests/montecarlo.py)
PIPELINE = dict(n=128, beta=0.7, gamma=1.5, lmax=3)  # bodil.tumor.CTVSettings: num_samples, beta, gamma, lmax


def z_bound(k: int, rate: float = FAMILY_RATE) -> float:
    """Two-sided Bonferroni bound for ``k`` comparisons at family-wise false-alarm ``rate``."""
    return float(stats.norm.isf(rate / (2 * k)))


_RUNS: dict = {}
CACHE: Path | None = None  # --cache: a folder keeping the runs of spread_runs between invocations


def spread_runs(case: Case, n: int, beta: float, gamma: float, lmax: int, sampler: str = "basis",
                seeds: int = 50, first: int = 1000) -> dict[str, np.ndarray]:
    """``seeds`` runs (seeds ``first...``; the tests use seed 0) with the numpy batch likelihood: per run the
    log-evidence, the evaluations, and the particles' mean, variance (``ddof = 1``) and mean ``|x|``."""
    key = (case.name, n, beta, gamma, lmax, sampler, seeds, first)
    if key in _RUNS:
        return _RUNS[key]
    file = None
    if CACHE is not None:
        file = CACHE / (hashlib.sha256(repr(key).encode()).hexdigest()[:20] + ".npz")
        if file.exists():
            with np.load(file) as data:
                _RUNS[key] = dict(data)
            return _RUNS[key]
    params = Params(x=bodil.Uniform(case.low * jnp.ones(case.d), case.high * jnp.ones(case.d)))
    fn, executor = _bodil_fn(case.name, True)
    run = functools.partial(basis, lmax=lmax) if sampler == "basis" else tmcmc
    out: dict[str, list] = {k: [] for k in ("log_z", "evaluations", "mean", "var", "abs_mean")}
    for seed in range(first, first + seeds):
        idata = run(fn, params, n, seed=seed, beta=beta, gamma=gamma, executor=executor)
        x = idata.posterior.x.values[0]
        for k, v in (("log_z", idata.attrs["log_evidence"]), ("evaluations", idata.attrs["evaluations"]),
                     ("mean", x.mean(0)), ("var", x.var(0, ddof=1)), ("abs_mean", np.abs(x).mean())):
            out[k].append(v)
    _RUNS[key] = {k: np.asarray(v, float) for k, v in out.items()}
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(file, **_RUNS[key])
    return _RUNS[key]


def _case(prefix: str) -> Case:
    return next(c for c in cases() if c.name.startswith(prefix))


def _errors(case: Case, runs: dict[str, np.ndarray], quantity: str) -> np.ndarray:
    """Errors per run (rows) and coordinate (columns) of what the tests compare, in the units of their bounds:
    log Z in nats, a mean in posterior standard deviations, a variance relative to the exact one, mean |x| as is."""
    if quantity == "log_z":
        return (runs["log_z"] - case.truth)[:, None]
    if quantity == "abs_mean":  # case 3: |x_i| ~ N(0.5, 0.1^2) in both modes, truncation < 1e-6
        return (runs["abs_mean"] - 0.5)[:, None]
    mean, var = moments()[case.name]
    if quantity == "mean":
        return (runs["mean"] - mean) / np.sqrt(var)
    return runs["var"] / var - 1.0


# The statistical tests of tests/test_smc.py (each at seed 0): the test function, the case, the sampler and its
# settings, and what it compares with the exact value (one comparison per coordinate for "mean" and "var").
TESTS = [("test_basis_log_evidence", "1", "basis", dict(n=1000, beta=0.2, gamma=1.0, lmax=1), ("log_z", "mean")),
         ("test_basis_log_evidence", "2", "basis", dict(n=1000, beta=0.5, gamma=1.0, lmax=10), ("log_z",)),
         ("test_basis_log_evidence", "3", "basis", dict(n=1000, beta=0.5, gamma=1.0, lmax=10), ("log_z", "abs_mean")),
         ("test_tmcmc_log_evidence", "1", "tmcmc", dict(n=1000, beta=0.2, gamma=1.0, lmax=1), ("log_z",)),
         ("test_basis_at_pipeline_settings", "4", "basis", PIPELINE, ("log_z", "mean", "var")),
         ("test_basis_at_pipeline_settings", "2", "basis", PIPELINE, ("log_z", "mean", "var"))]


def bounds_table(seeds: int = 50) -> None:
    """The bounds of tests/test_smc.py: z(K) times the spread over ``seeds`` seeds of each compared estimate."""
    k = {}
    for test, prefix, _, _, quantities in TESTS:
        d = _case(prefix).d
        k[test] = k.get(test, 0) + sum(d if q in ("mean", "var") else 1 for q in quantities)
    print(f"\n## Bounds of tests/test_smc.py: family-wise false-alarm rate {FAMILY_RATE:g} per test function, "
          f"Bonferroni over its K comparisons, z = Phi^-1(1 - rate / 2K); {seeds} seeds (1000...)\n")
    print("Units: log Z in nats (centre: truth - sd^2/2, the bias of the log of an unbiased estimate of Z); mean "
          "in posterior sd; variance relative to the exact one (ddof 1); mean |x| as is. sd: the largest over the "
          "coordinates. Bias: mean error over the seeds +- its Monte Carlo error sd / sqrt(seeds).\n")
    print("| test | case | sampler | n, beta, gamma, lmax | quantity | bias | -sd^2/2 | sd | K | z | bound z sd "
          "| evals |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for test, prefix, sampler, opts, quantities in TESTS:
        case = _case(prefix)
        runs = spread_runs(case, sampler=sampler, seeds=seeds, **opts)
        z = z_bound(k[test])
        for q in quantities:
            err = _errors(case, runs, q)
            bias, sd = err.mean(0), err.std(0, ddof=1)
            worst = int(np.argmax(np.abs(bias)))
            jensen = f"{-sd.max() ** 2 / 2:+.4f}" if q == "log_z" else ""
            print(f"| {test} | {case.name} | {sampler} | {opts['n']}, {opts['beta']}, {opts['gamma']}, {opts['lmax']} "
                  f"| {q} | {bias[worst]:+.4f} ± {sd[worst] / np.sqrt(seeds):.4f} | {jensen} | {sd.max():.3g} | "
                  f"{k[test]} | {z:.3f} | {z * sd.max():.3g} | {runs['evaluations'].mean():.0f} |", flush=True)


# BASIS settings measured on the cases shaped like the pipeline's posterior: the papers' (beta 0.2, gamma 1.5,
# lmax 1), gamma 1, longer chains, larger proposals; n = 512 (Amoudruz et al.'s (2025) samples) for a subset.
GRID = {128: [(0.2, 1.5, 1), (0.2, 1.0, 1), (0.2, 1.5, 3), (0.2, 1.5, 5), (0.2, 1.5, 10), (0.5, 1.5, 1),
              (0.5, 1.5, 2), (0.5, 1.5, 3), (0.7, 1.5, 2), (0.7, 1.5, 3), (0.7, 1.0, 3), (1.0, 1.5, 1),
              (1.0, 1.5, 2), (1.0, 1.5, 3), (1.0, 1.5, 5), (1.0, 1.0, 2)],
        512: [(0.2, 1.5, 1), (0.2, 1.0, 1), (0.2, 1.5, 3), (0.2, 1.5, 5), (0.2, 1.5, 10), (0.7, 1.5, 2),
              (0.7, 1.5, 3), (0.7, 1.0, 3)]}
# Acceptance: the pipeline turns the samples into CTV ensembles, so they must be usable from one run.
# Noise: a run's posterior mean within +-0.5 posterior sd and its variance within +-50% at 95%, i.e. a
# run-to-run sd of at most 0.25 (posterior sd; relative) for every coordinate, with 95% confidence: the upper
# one-sided 95% bound of the sd measured over the seeds (chi-square) <= 0.25. Bias: a defect where it is both
# statistically significant (beyond z times its Monte Carlo error sd / sqrt(seeds), z for a 5% false alarm over
# the 1 + 2d comparisons of the row, Bonferroni) and practically significant: a mean off by more than 0.25 of its
# sd, a variance off by more than 10%, log Z off its expected -sd^2/2 by more than 0.25 sd.
MAX_SD_MEAN, MAX_SD_VAR, MAX_BIAS_SD, MAX_BIAS_VAR, BIAS_RATE = 0.25, 0.25, 0.25, 0.10, 0.05


def settings_table(seeds: int = 50, grid: dict = GRID) -> None:
    """Bias and spread of log Z and of each coordinate's posterior mean and variance on cases 4 (3-D) and
    2 (5-D) for the BASIS settings in ``grid``, with the likelihood evaluations and the verdict."""
    print(f"\n## BASIS settings on the 3-D and 5-D Gaussian cases, {seeds} seeds (1000...)\n")
    upper = np.sqrt((seeds - 1) / stats.chi2.ppf(0.05, seeds - 1))  # sd's upper 95% bound / sd
    print(f"Columns as above; mean and variance: the worst coordinate. Passes: the upper 95% bound of the sd "
          f"({upper:.3f} sd) of every mean <= {MAX_SD_MEAN} posterior sd and of every variance <= {MAX_SD_VAR} "
          f"(relative), i.e. a measured sd <= {MAX_SD_MEAN / upper:.3f}, and no bias both significant (beyond "
          f"z(1 + 2d, {BIAS_RATE}) Monte Carlo errors: {z_bound(7, BIAS_RATE):.2f} in 3-D, "
          f"{z_bound(11, BIAS_RATE):.2f} in 5-D) and larger than {MAX_BIAS_SD} of its sd (mean, log Z from -sd^2/2) or {MAX_BIAS_VAR:.0%} "
          f"(variance).\n")
    print("| case | n | beta | gamma | lmax | log Z bias | -sd^2/2 | log Z sd | mean bias | mean sd | var bias | "
          "var sd | evals | passes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for prefix in ("4", "2"):
        case = _case(prefix)
        for n, rows in grid.items():
            for beta, gamma, lmax in rows:
                runs = spread_runs(case, n, beta, gamma, lmax, seeds=seeds)
                mc, z = np.sqrt(seeds), z_bound(1 + 2 * case.d, BIAS_RATE)
                cells, ok = [], True
                for q in ("log_z", "mean", "var"):
                    err = _errors(case, runs, q)
                    bias, sd = err.mean(0), err.std(0, ddof=1)
                    centre = -sd**2 / 2 if q == "log_z" else 0.0
                    off = np.abs(bias - centre)
                    limit = MAX_BIAS_VAR if q == "var" else MAX_BIAS_SD * sd
                    ok &= not np.any((off > z * sd / mc) & (off > limit))
                    ok &= q == "log_z" or upper * sd.max() <= (MAX_SD_MEAN if q == "mean" else MAX_SD_VAR)
                    w = int(np.argmax(off))
                    cells += [f"{bias[w]:+.3f} ± {sd[w] / mc:.3f}"] + ([f"{centre[0]:+.3f}"] if q == "log_z" else []) \
                        + [f"{sd.max():.3f}"]
                print(f"| {case.name} | {n} | {beta} | {gamma} | {lmax} | {' | '.join(cells)} | "
                      f"{runs['evaluations'].mean():.0f} | {'yes' if ok else 'no'} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per row (default 5, --quick 3)")
    parser.add_argument("--n", type=int, default=1000, help="particles")
    parser.add_argument("--spread", action="store_true",
                        help="only the seed spread behind the tests' bounds and the pipeline's BASIS settings")
    parser.add_argument("--cache", type=Path, default=None,
                        help="with --spread: keep each row's runs in this folder and reuse them (delete it when "
                             "the sampler changes)")
    args = parser.parse_args(argv)
    global CACHE
    CACHE = args.cache
    print("Analytic log-evidences:", {k: round(v, 4) for k, v in truth().items()})
    if args.spread:
        bounds_table(args.seeds or 50)
        settings_table(args.seeds or 50)
        return
    evidence_table(args.seeds or (3 if args.quick else 5), args.n)
    if not Path(__file__).with_name("nuts_ess.py").exists():
        print("\n(benchmarks/nuts_ess.py is not there yet: no NUTS table.)")
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from nuts_ess import nuts_table
    nuts_table(**({"quick": args.quick} if "quick" in inspect.signature(nuts_table).parameters else {}))


if __name__ == "__main__":
    main()
