"""SMC log-evidence: bodil BASIS against blackjax's adaptive tempered SMC on three cases with known evidence.

Cases (analytic log Z, see `truth()`):
1. prior U[-15, 15], likelihood N(-2, 3^2) (normalised): log Z = log((Phi(17/3) - Phi(-13/3)) / 30) = -3.4012
2. prior U[-5, 5]^5, likelihood exp(-|x|^2 / 2): log Z = 5 log(sqrt(2 pi) (1 - 2 Phi(-5)) / 10) = -6.9182
3. prior U[-2, 2]^4, likelihood 0.1 N(-0.5, 0.1^2 I) + 0.9 N(0.5, 0.1^2 I): log Z = -log 256 = -5.5452

Both samplers anneal ``L^q p`` with the same rule (ESS/n = 1/2, i.e. a coefficient of variation 1 of the
incremental weights) and move particles by a Gaussian random walk with covariance ``beta^2`` times the
weighted particle covariance; blackjax resamples systematically and moves before reweighting. Wall times
are from the second and later seeds (the first run of each row compiles and is not timed). Likelihood
evaluations: bodil counts them; blackjax evaluates ``n (k + 3)`` per stage for ``k`` MCMC steps (ESS
solve, chain init, k steps, reweighting), proposals outside the prior included.

    .venv/bin/python benchmarks/inference.py            # 5 seeds, n = 1000
    .venv/bin/python benchmarks/inference.py --quick    # 3 seeds
    .venv/bin/python benchmarks/inference.py --spread   # 50 seeds of the tests' settings -> test tolerances
"""

from __future__ import annotations

import argparse
import functools
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


def truth() -> dict[str, float]:
    """The analytic log-evidences (prior mass of the likelihood, truncation included)."""
    ph = stats.norm.cdf
    mix = [(ph((2 - m) / 0.1) - ph((-2 - m) / 0.1)) ** 4 for m in (-0.5, 0.5)]
    return {"1: U[-15,15], N(-2,9)": float(np.log((stats.norm(-2, 3).cdf(15) - stats.norm(-2, 3).cdf(-15)) / 30)),
            "2: U[-5,5]^5, exp(-|x|^2/2)": float(5 * np.log(np.sqrt(2 * np.pi) * (ph(5) - ph(-5)) / 10)),
            "3: U[-2,2]^4, mixture": float(np.log((0.1 * mix[0] + 0.9 * mix[1]) / 4**4))}


def cases() -> list[Case]:
    t = list(truth().items())
    return [Case(t[0][0], -15.0, 15.0, 1, _normal_1d, t[0][1]), Case(t[1][0], -5.0, 5.0, 5, _gauss_5d, t[1][1]),
            Case(t[2][0], -2.0, 2.0, 4, _mixture_4d, t[2][1])]


@functools.cache
def _bodil_fn(name: str, vectorised: bool):
    """One function and executor per case, so that jit(vmap(fn)) compiles once per case and batch shape."""
    case = next(c for c in cases() if c.name == name)
    if vectorised:  # numpy on the stacked batch, as in tests/test_smc.py
        return (lambda t: np.asarray(case.loglik(np.asarray(t["x"])))), BatchExecutor()
    return (lambda t: case.loglik(t["x"])), VmapExecutor()


def run_bodil(case: Case, seed: int, n: int, beta: float, lmax: int, vectorised: bool = False):
    params = Params(x=bodil.Uniform(case.low * jnp.ones(case.d), case.high * jnp.ones(case.d)))
    fn, executor = _bodil_fn(case.name, vectorised)
    t0 = time.perf_counter()
    idata = basis(fn, params, n, seed=seed, beta=beta, lmax=lmax, executor=executor)
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


def spread_table(seeds: int = 50, n: int = 1000) -> None:
    """The spread of bodil's log Z over seeds at the settings of tests/test_smc.py (tolerance ~ 4 std + |bias|)."""
    settings = [(0, 0.2, 1, "basis"), (1, 0.2, 1, "basis"), (1, 0.5, 10, "basis"), (2, 0.2, 1, "basis"),
                (2, 0.5, 10, "basis"), (0, 0.2, 1, "tmcmc")]
    print(f"\n## Spread of log Z over {seeds} seeds (seeds 1000...), n = {n}, numpy batch likelihood\n")
    print("| case | sampler | beta | lmax | bias | std | max abs error | 4 std + abs bias | extra |")
    print("|---|---|---|---|---|---|---|---|---|")
    all_cases = cases()
    for i, beta, lmax, sampler in settings:
        case, z, extra = all_cases[i], [], []
        for seed in range(1000, 1000 + seeds):
            if sampler == "basis":
                log_z, _, _, idata = run_bodil(case, seed, n, beta, lmax, vectorised=True)
            else:
                params = Params(x=bodil.Uniform(case.low * jnp.ones(case.d), case.high * jnp.ones(case.d)))
                idata = tmcmc(lambda t: np.asarray(case.loglik(np.asarray(t["x"]))), params, n,
                                                  seed=seed, executor=BatchExecutor())
                log_z = idata.attrs["log_evidence"]
            z.append(log_z)
            x = idata.posterior.x.values
            extra.append(float(np.abs(x).mean() if i == 2 else x.mean()))
        err = np.array(z) - case.truth
        bias, std = err.mean(), err.std(ddof=1)
        note = f"{'mean abs x' if i == 2 else 'mean x'} {np.mean(extra):.4f} ± {np.std(extra, ddof=1):.4f}"
        print(f"| {case.name} | {sampler} | {beta} | {lmax} | {bias:+.4f} | {std:.4f} | {np.abs(err).max():.4f} | "
              f"{4 * std + abs(bias):.3f} | {note} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per row (default 5, --quick 3)")
    parser.add_argument("--n", type=int, default=1000, help="particles")
    parser.add_argument("--spread", action="store_true", help="only the seed spread behind the test tolerances")
    args = parser.parse_args(argv)
    print("Analytic log-evidences:", {k: round(v, 4) for k, v in truth().items()})
    if args.spread:
        spread_table(args.seeds or 50, args.n)
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
