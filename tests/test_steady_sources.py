"""The two-source inverse problem on the steady diffusion surrogate (bodil.cases.steady_sources): the prior's
support and normaliser, the exact forward model against bodil.forward.steady, the surrogate forward model's
gradient, the likelihood formula, and bad input.

The surrogate tests use a tiny randomly initialised network on a 24 x 24 lattice (discs of radius 3): the
gradient checks need a smooth map, not a trained one, and the small network compiles in a second.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from bodil.cases import steady_sources as SS
from bodil.forward import steady as S
from bodil.forward import steady_network as N
from bodil.inference.smc import ParameterSpace
from bodil.io import InputError

SIZE, RADIUS = 24, 3.0
TRUTH = {"centres": ((8.0, 9.0), (16.5, 14.0)), "v2": 0.7}


@pytest.fixture(scope="module")
def tiny_surrogate():
    arch = N.SteadyArchitecture(size=SIZE, p1=0.0, dropout=(0, 0, 0, 0), width_scale=1 / 32, output_norm=False)
    network, state = N.build_steady(arch, seed=5)
    return N.SteadySurrogate(network, state, arch, {})


@pytest.fixture(scope="module")
def problems(tiny_surrogate):
    common = dict(truth=TRUTH, num_sensors=12, sigma=0.05, seed=3, size=SIZE, radius=RADIUS)
    return {"exact": SS.steady_sources("exact", **common),
            "surrogate": SS.steady_sources("surrogate", surrogate=tiny_surrogate, **common)}


def theta(centres, v2):
    return {"centres": jnp.asarray(centres, jnp.float64), "v2": jnp.asarray(v2, jnp.float64)}


def test_prior_support_is_the_square_without_overlaps(problems):
    prior = SS.centre_prior(SIZE, RADIUS)  # centres in [4, 19], more than 6 apart
    assert (prior.low, prior.high, prior.min_distance) == (4.0, 19.0, 6.0)
    inside = prior.log_prob(jnp.array([[5.0, 5.0], [12.0, 5.0]]))
    p = SS.overlap_probability(15.0, 6.0)
    assert float(inside) == pytest.approx(-(4 * math.log(15.0) + math.log1p(-p)), rel=1e-12)
    for bad in ([[5.0, 5.0], [10.9, 5.0]],   # 5.9 apart: the discs overlap
                [[5.0, 5.0], [5.0, 5.0]],    # the same centre
                [[3.9, 5.0], [15.0, 15.0]],  # disc 1 reaches the ring
                [[5.0, 5.0], [15.0, 19.1]]):  # disc 2 reaches the ring
        assert float(prior.log_prob(jnp.array(bad))) == -np.inf
    # the samplers see the same: BASIS's prior density and the posterior's log density
    space = ParameterSpace(problems["exact"].posterior.params)
    rows = np.array([[5.0, 5.0, 12.0, 5.0, 0.5], [5.0, 5.0, 10.9, 5.0, 0.5], [5.0, 5.0, 12.0, 5.0, 1.2]])
    lp = space.log_prior(rows)
    assert np.isfinite(lp[0]) and lp[1] == -np.inf and lp[2] == -np.inf
    post = problems["surrogate"].posterior
    assert float(post.log_density({}, theta([[5.0, 5.0], [10.9, 5.0]], 0.5))) == -np.inf
    assert np.isfinite(float(post.log_density({}, theta([[5.0, 5.0], [12.0, 5.0]], 0.5))))


def test_prior_normaliser_and_draws():
    # overlap_probability's closed form against Monte Carlo: 4e5 pairs, z-bound at false-alarm rate 1e-4
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 1, (2, 400_000, 2))
    for t in (0.1, 0.4, 1.0):
        hits = np.mean(np.hypot(*(a - b).T) <= t)
        p = SS.overlap_probability(1.0, t)
        assert abs(hits - p) < stats.norm.isf(1e-4 / 6) * math.sqrt(p * (1 - p) / len(a))
    # prior draws: all valid; their mean is the square's centre within Monte Carlo error (4 coordinates)
    prior = SS.centre_prior(SIZE, RADIUS)
    x = np.asarray(prior.sample(jax.random.key(1), (4000,)))
    assert np.all((x >= 4) & (x <= 19)) and np.all(np.hypot(*(x[:, 0] - x[:, 1]).T) > 6)
    z = (x.reshape(-1, 4).mean(axis=0) - 11.5) / (x.reshape(-1, 4).std(axis=0) / math.sqrt(len(x)))
    assert np.all(np.abs(z) < stats.norm.isf(1e-4 / 8))


def test_exact_forward_is_the_sparse_solve_and_refuses_gradients():
    field = SS.forward_field("exact", size=SIZE, radius=RADIUS)
    configs = [([[8.0, 9.0], [16.5, 14.0]], 0.7), ([[5.2, 17.7], [15.0, 6.3]], 0.25)]
    expected = [S.steady_state(S.Geometry(np.array(c), np.array([1.0, v]), SIZE, RADIUS)) for c, v in configs]
    assert np.array_equal(np.asarray(field(theta(*configs[0]))), expected[0])
    batched = jax.jit(jax.vmap(field))({"centres": jnp.array([c for c, _ in configs]),
                                        "v2": jnp.array([v for _, v in configs])})
    assert np.array_equal(np.asarray(batched), np.stack(expected))
    with pytest.raises(ValueError, match="no useful gradient"):
        jax.grad(lambda t: field(t).sum())(theta(*configs[0]))


def test_data_come_from_the_finer_lattice(problems):
    pb = problems["exact"]
    coarse = S.steady_state(S.Geometry(np.array(TRUTH["centres"]), np.array([1.0, TRUTH["v2"]]), SIZE, RADIUS))
    fine = pb.truth["field"]
    rows, cols = pb.data["sensors"].T
    assert np.array_equal(pb.data["clean"], fine[rows, cols])
    assert np.array_equal(problems["surrogate"].data["y"], pb.data["y"])  # one data set for both forward models
    # another discretisation of the same equation: not the coarse solve, and refining once more (spacing 1/4)
    # moves the field less than the step from 1 to 1/2 did (the discs' pixel outlines converge)
    finer = S.SteadySolver(S.Geometry(4 * np.array(TRUTH["centres"]), np.array([1.0, TRUTH["v2"]]), 4 * SIZE - 3,
                                      4 * RADIUS), diffusivity=16.0).solve()[::4, ::4]
    assert 0 < np.abs(fine - finer).max() < 0.5 * np.abs(fine - coarse).max()
    assert np.all(fine[0] == 0) and np.all(fine[:, -1] == 0)


def test_likelihood_is_the_gaussian_formula(problems):
    pb = problems["exact"]
    th = theta([[7.5, 10.0], [15.0, 15.5]], 0.4)
    y, sigma, (rows, cols) = pb.data["y"], pb.data["sigma"], pb.data["sensors"].T
    c = S.steady_state(S.Geometry(np.asarray(th["centres"]), np.array([1.0, 0.4]), SIZE, RADIUS))[rows, cols]
    m = len(y)
    hand = -np.sum((y - c) ** 2) / (2 * sigma**2) - m * math.log(sigma) - 0.5 * m * math.log(2 * math.pi)
    assert float(SS.log_likelihood(pb)(th)) == pytest.approx(hand, rel=1e-12)
    # the posterior adds the prior's constant log density, nothing else
    prior = float(SS.centre_prior(SIZE, RADIUS).log_prob(th["centres"]))
    assert float(pb.posterior.log_density({}, th)) == pytest.approx(hand + prior, rel=1e-12)


def test_surrogate_forward_and_its_gradient(problems, tiny_surrogate):
    pb = problems["surrogate"]
    th = theta([[7.7, 9.4], [15.3, 14.55]], 0.55)  # no pixel centre exactly on a rim
    field = SS.forward_field("surrogate", size=SIZE, radius=RADIUS, surrogate=tiny_surrogate)
    masks = SS.disc_indicators(th["centres"], SIZE, RADIUS)
    image = masks[0] + 0.55 * masks[1]
    # the hosted network (a callback) gives the network's prediction off the discs and the source values on them
    net = tiny_surrogate.predict(image)
    expected = image + (1 - masks[0] - masks[1]) * net
    assert np.abs(np.asarray(field(th)) - np.asarray(expected)).max() < 1e-6
    # under vmap the callback gets the whole batch (how VmapExecutor runs BASIS's likelihoods)
    other = theta([[12.2, 5.1], [6.4, 17.3]], 0.3)
    both = jax.vmap(field)(jax.tree.map(lambda a, b: jnp.stack([a, b]), th, other))
    assert np.abs(np.asarray(both) - np.stack([field(th), field(other)])).max() < 1e-6
    # the smooth discs tend to the hard ones: with a narrow rim the image is source_image of the hard discs
    hard = S.source_image(S.Geometry(np.asarray(th["centres"]), np.array([1.0, 0.55]), SIZE, RADIUS))
    narrow = SS.disc_indicators(th["centres"], SIZE, RADIUS, width=1e-3)
    assert np.abs(np.asarray(narrow[0] + 0.55 * narrow[1]) - hard).max() < 1e-6

    # gradient of log L (through the callback's pullback): finite and equal to central differences (step 1e-2
    # pixel; the rim is 0.25 wide, so the truncation error is at most about (0.01/0.25)^2 = 1.6e-3 relative)
    log_l = SS.log_likelihood(pb)
    grad = jax.grad(log_l)(th)
    g = np.concatenate([np.ravel(grad["centres"]), [float(grad["v2"])]])
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0

    flat = np.concatenate([np.ravel(th["centres"]), [0.55]])
    f = jax.jit(lambda v: log_l({"centres": v[:4].reshape(2, 2), "v2": v[4]}))
    h, fd = 1e-2, []
    for k in range(5):
        e = np.zeros(5)
        e[k] = h
        fd.append((float(f(flat + e)) - float(f(flat - e))) / (2 * h))
    assert np.abs(np.array(fd) - g).max() < 2e-3 * np.abs(g).max(), (fd, g)


def test_bad_input(tiny_surrogate):
    with pytest.raises(InputError, match="overlap"):
        SS.steady_sources("exact", truth={"centres": ((8.0, 9.0), (12.0, 9.0)), "v2": 0.5}, size=SIZE,
                          radius=RADIUS)
    with pytest.raises(InputError, match="outside the domain"):
        SS.steady_sources("exact", truth={"centres": ((2.0, 9.0), (16.0, 9.0)), "v2": 0.5}, size=SIZE,
                          radius=RADIUS)
    with pytest.raises(InputError, match="24 lattice"):
        SS.forward_field("surrogate", size=32, radius=RADIUS, surrogate=tiny_surrogate)
    with pytest.raises(ValueError, match="forward"):
        SS.steady_sources("fem", size=SIZE, radius=RADIUS)
    with pytest.raises(ValueError, match="v2"):
        SS.steady_sources("exact", truth={"centres": TRUTH["centres"], "v2": 1.5}, size=SIZE, radius=RADIUS)
