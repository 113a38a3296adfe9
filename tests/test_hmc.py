"""HMC / NUTS through numpyro and blackjax (``bodil.inference.hmc``).

Sampler tests compare with exact answers at bounds fixed in advance (``tests/montecarlo.py``): each test
function makes ``K`` pre-declared comparisons ``|estimate - exact| < z se`` with ``z`` the Bonferroni bound for
a false-alarm rate of 1e-4 for the whole function, and ``se`` the standard error of the estimator compared
(a mean: ``sd(x) / sqrt(ESS(x))``; a variance ``E[(x - mu)^2]`` with the exact ``mu``: ``sd(f) / sqrt(ESS(f))``
with ``f = (x - mu)^2``). Seeds are fixed and were not tuned.
"""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from bodil import Grid, Normal, Params, PDEPrior, Posterior, Uniform
from bodil.cases import linear_gaussian, oscillator
from bodil.inference.hmc import hmc
from montecarlo import FAMILY_RATE, z_bound, z_mean, z_variance

BACKENDS = ("numpyro", "blackjax")


def gaussian_posterior(n: int = 6, residual=None) -> tuple[Posterior, tuple]:
    """A known target: ``u ~ N(mu, I)`` on ``n`` nodes, ``s ~ N(1, 2^2)``, ``w ~ Uniform(0, 1)``, independent.

    ``w`` is sampled as ``logit(w)``, so its moments test the Jacobian term of the potential."""
    grid = Grid(shape=(n,), lower=(0.0,), upper=(1.0,), names=("t",))
    mu = np.linspace(-1.0, 1.0, n)
    residual = residual or (lambda u, theta, grid: {"r": u - mu})
    prior = PDEPrior(residual, grid, beta=0.5, reduction="sum")  # 0.5 sum (u - mu)^2
    post = Posterior(prior, params=Params(s=Normal(1.0, 2.0), w=Uniform(0.0, 1.0)))
    return post, (jnp.asarray(mu), {"s": jnp.asarray(1.0), "w": jnp.asarray(0.5)})


# ---------------------------------------------------------------------- correctness against exact answers
@pytest.mark.parametrize("backend", BACKENDS)
def test_nuts_matches_the_closed_form_linear_gaussian_posterior(backend):
    problem = linear_gaussian(dtype=jnp.float64)
    exact = problem.truth["closed_form"]
    post, grid = problem.posterior, problem.grid
    n = exact["n_field"]
    mode = (jnp.asarray(exact["mean"][:n].reshape(grid.shape)), {"s": jnp.asarray(exact["mean"][n])})  # the MAP
    idata = hmc(post, mode, backend=backend, num_warmup=300, num_samples=1000, seed=1)
    measured = {(int(i), int(j)) for i, j in zip(problem.data["it"], problem.data["ix"])}
    # Four pre-declared scalars, mean and variance of each: K = 8 comparisons per backend, family-wise false
    # alarm 1e-4 (z = 4.37): the source s, a measured node, an unmeasured node at the final time and an
    # unmeasured node at t = 0 (the initial condition).
    nodes = {"measured": (int(problem.data["it"][0]), int(problem.data["ix"][0])), "unmeasured": (8, 3),
             "initial": (0, 0)}
    assert nodes["unmeasured"] not in measured and nodes["initial"] not in measured
    series = {"s": (idata.posterior["s"].values, n)}
    for name, (i, j) in nodes.items():
        series[name] = (idata.posterior["u"].values[:, :, i, j], np.ravel_multi_index((i, j), grid.shape))
    z = z_bound(8, FAMILY_RATE)
    for name, (draws, k) in series.items():
        mean, var = exact["mean"][k], exact["cov"][k, k]
        assert abs(z_mean(draws, mean)) < z, (backend, name, "mean", z_mean(draws, mean))
        assert abs(z_variance(draws, mean, var)) < z, (backend, name, "variance", z_variance(draws, mean, var))
    ss = idata.sample_stats
    assert not ss["diverging"].values.any()
    assert set(ss.data_vars) == {"diverging", "acceptance_rate", "step_size", "n_steps", "energy", "lp", "tree_depth"}
    depth, steps = ss["tree_depth"].values, ss["n_steps"].values  # depth d: 2^(d-1) <= steps < 2^d
    assert np.all((2 ** (depth - 1) <= steps) & (steps < 2**depth)) and depth.max() <= 10
    # lp is -U(x) at the draw (here no transform: theta = z)
    u, s = idata.posterior["u"].values[0, -1], idata.posterior["s"].values[0, -1]
    np.testing.assert_allclose(ss["lp"].values[0, -1], post.log_density(u, {"s": s}), rtol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_static_hmc_without_adaptation_samples_a_known_gaussian(backend):
    """Amoudruz et al.'s (2025) kind of run (static HMC, fixed step, identity mass, no warmup) on a known target:
    mean and variance of three scalars, K = 6 comparisons per backend at family-wise false alarm 1e-4.

    The path length eps L = 2 turns the unit-frequency modes by about 2 rad per proposal: static HMC with a
    path near pi maps x to about 2 mu - x whatever the momentum, so |x - mu| would hardly mix."""
    post, init = gaussian_posterior()
    run = lambda chain_method: hmc(post, init, backend=backend, kernel="hmc", step_size=0.2, num_steps=10,
                                   adapt=False, num_warmup=0, num_samples=1000, num_chains=2,
                                   chain_method=chain_method, seed=2)
    idata = run("vectorized")
    p = idata.posterior
    checks = {"s": (p["s"].values, 1.0, 4.0), "u[0]": (p["u"].values[..., 0], -1.0, 1.0),
              "w": (p["w"].values, 0.5, 1.0 / 12.0)}
    z = z_bound(6, FAMILY_RATE)
    for name, (draws, mean, var) in checks.items():
        assert abs(z_mean(draws, mean)) < z, (backend, name, "mean", z_mean(draws, mean))
        assert abs(z_variance(draws, mean, var)) < z, (backend, name, "variance", z_variance(draws, mean, var))
    assert np.all(idata.sample_stats["n_steps"].values == 10)
    assert np.all(idata.sample_stats["step_size"].values == 0.2)
    assert float(az.rhat(idata)["s"]) < 1.05 and idata.posterior["u"].dims == ("chain", "draw", "t")
    assert not np.array_equal(idata.posterior["u"].values[0], idata.posterior["u"].values[1])  # chains differ
    # the same seed gives the same chains; blackjax also when they run one after another (numpyro runs
    # "sequential" chains through its own loop and compiles once per chain, so it repeats the vectorized run)
    again = run("sequential" if backend == "blackjax" else "vectorized")
    for group, name in (("posterior", "u"), ("posterior", "w"), ("sample_stats", "lp")):
        np.testing.assert_array_equal(again[group][name].values, idata[group][name].values)


def test_leapfrog_of_both_backends_is_reversible_on_a_gaussian_target():
    """L leapfrog steps, flip the momentum, L steps more: back at the start with the momentum flipped."""
    from blackjax.mcmc.integrators import IntegratorState, velocity_verlet
    from blackjax.mcmc.metrics import default_metric
    from numpyro.infer.hmc_util import euclidean_kinetic_energy
    from numpyro.infer.hmc_util import velocity_verlet as numpyro_verlet

    post, (u, theta) = gaussian_posterior()
    x0, unravel = ravel_pytree(post.unconstrain(u, theta))
    x0 = x0 + 0.3 * jax.random.normal(jax.random.key(0), x0.shape)
    p0 = jax.random.normal(jax.random.key(1), x0.shape)
    potential = jax.jit(lambda x: post.potential(unravel(x)))
    eps, steps, imm = 0.3, 10, jnp.ones_like(x0)

    step = velocity_verlet(lambda x: -potential(x), default_metric(imm).kinetic_energy)

    def blackjax_path(x, p):
        state = IntegratorState(x, p, *jax.value_and_grad(lambda y: -potential(y))(x))
        for _ in range(steps):
            state = step(state, eps)
        return state.position, state.momentum

    init_fn, update_fn = numpyro_verlet(potential, euclidean_kinetic_energy)

    def numpyro_path(x, p):
        state = init_fn(x, p)
        for _ in range(steps):
            state = update_fn(eps, imm, state)
        return state.z, state.r

    for path in (blackjax_path, numpyro_path):
        x1, p1 = path(x0, p0)
        assert float(jnp.max(jnp.abs(x1 - x0))) > 0.1  # it moved
        x2, p2 = path(x1, -p1)
        np.testing.assert_allclose(x2, x0, atol=1e-12)
        np.testing.assert_allclose(-p2, p0, atol=1e-12)
    np.testing.assert_allclose(blackjax_path(x0, p0)[0], numpyro_path(x0, p0)[0], atol=1e-12)


# ---------------------------------------------------------------------- the oscillator, Amoudruz et al.'s (2025) settings
@pytest.mark.xla_optimized
def test_oscillator_with_seed_003_settings():
    """Static HMC, 10 leapfrog steps, identity mass, no adaptation (Amoudruz et al. 2025, sec. 3.1), started at the
    truth instead of the MAP to spare a MAP solve (its PDE residuals are O(dt^2), its potential near the MAP's).

    Amoudruz et al. (2025) reports acceptance about 0.65 at step 0.008. With bodil's ``L_PDE`` (mean over the 64 residual
    pairs of eq. 15) the stiffest mode has curvature about 5.15e4, so 0.008 sits just inside the leapfrog
    stability limit 2 / sqrt(5.15e4) = 0.0088 and almost nothing is accepted; half the step gives the
    reported acceptance (0.66 for a Gaussian with this Hessian)."""
    problem = oscillator(infer_omega=True, dtype=jnp.float64)
    truth = problem.truth
    fit = ({k: jnp.asarray(truth[k]) for k in ("x", "v")}, {"omega2": jnp.asarray(truth["omega2"], jnp.float64)})
    idata = hmc(problem.posterior, fit, kernel="hmc", step_size=0.008, num_steps=10, adapt=False, num_warmup=0,
                num_samples=1000, seed=3)

    assert set(idata.groups()) == {"posterior", "sample_stats"}
    p, ss = idata.posterior, idata.sample_stats
    assert set(p.data_vars) == {"omega2", "x", "v"}
    assert p["x"].dims == ("chain", "draw", "t") and p["x"].shape == (1, 1000, problem.grid.shape[0])
    assert p["omega2"].dims == ("chain", "draw")
    np.testing.assert_allclose(p["t"].values, problem.grid.coordinates("t"))
    assert set(ss.data_vars) == {"diverging", "acceptance_rate", "step_size", "n_steps", "energy", "lp"}
    assert all(ss[k].dims == ("chain", "draw") for k in ss.data_vars)
    assert idata.attrs["backend"] == "numpyro" and idata.attrs["kernel"] == "hmc"
    assert idata.attrs["step_size"] == 0.008 and idata.attrs["num_steps"] == 10 and idata.attrs["wall_time"] > 0
    # see the docstring: this flags a change of the oscillator's loss normalisation
    assert float(ss["acceptance_rate"].mean()) < 0.05, "step 0.008 is no longer at the stability limit"

    half = hmc(problem.posterior, fit, backend="blackjax", kernel="hmc", step_size=0.004, num_steps=10,
               adapt=False, num_warmup=0, num_samples=1000, seed=3)
    acceptance = float(half.sample_stats["acceptance_rate"].mean())
    # 0.66 is the acceptance of the Gaussian with this Hessian, not of the posterior itself: the range is that
    # model's error, not a Monte Carlo bound (the Monte Carlo error of the rate is about 0.01).
    assert 0.5 < acceptance < 0.8, acceptance
    # No moment of omega^2 is compared here: with a path of 10 x 0.004 the chain barely moves omega^2 (exact
    # posterior sd 0.105, ESS about 10 of 1000 draws), so its mean says nothing about correctness. The NUTS
    # and static-HMC tests above compare moments with exact posteriors.


# ---------------------------------------------------------------------- output, reproducibility, errors
def test_errors_say_what_is_wrong():
    post, init = gaussian_posterior(n=3)
    with pytest.raises(ValueError, match="unknown backend"):
        hmc(post, init, backend="stan")
    with pytest.raises(ValueError, match="unknown kernel"):
        hmc(post, init, kernel="mala")
    with pytest.raises(ValueError, match="needs num_steps"):
        hmc(post, init, kernel="hmc", step_size=0.1)
    with pytest.raises(ValueError, match="step_size is required"):
        hmc(post, init, kernel="hmc", num_steps=10, adapt=False)
    with pytest.raises(ValueError, match="num_warmup must be > 0"):
        hmc(post, init, num_warmup=0)
    with pytest.raises(ValueError, match="NUTS chooses its own"):
        hmc(post, init, num_steps=10)
    with pytest.raises(TypeError, match="MAPResult or a pair"):
        hmc(post, 3.0)
    with pytest.raises(ValueError, match="outside the support"):
        hmc(post, (init[0], {"s": 1.0, "w": 2.0}))
    bad, (u, theta) = gaussian_posterior(n=3, residual=lambda u, theta, grid: {"r": jnp.log(u)})
    with pytest.raises(ValueError, match=r"not finite at the initial position .*pde/r"):
        hmc(bad, (jnp.zeros(3), theta))
