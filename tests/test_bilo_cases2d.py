"""The 2-D cases of BiLO (Zhang et al., "BiLO: Bilevel Local Operator Learning for PDE inverse problems", sec. 3.5
and 3.6): reference solvers against manufactured and closed-form solutions, the pointwise operators against
closed forms, the random fields against their covariance, and the segmentation data of the glioblastoma case."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bodil.bilo import cases_darcy as Dc
from bodil.bilo import cases_gbm as G
from bodil.grid import Grid
from bodil.likelihood import ABOVE, UNOBSERVED
from bodil.stencil import diffusion_operator, face_diffusivities

PI = np.pi


def _darcy_manufactured(n):
    """u = sin(pi x) sin(pi y), k = 1 + x + y^2: s = -div(k grad u) by hand."""
    x = np.linspace(0.0, 1.0, n + 1)
    X, Y = np.meshgrid(x, x, indexing="ij")
    k, u = 1 + X + Y**2, np.sin(PI * X) * np.sin(PI * Y)
    ux, uy = PI * np.cos(PI * X) * np.sin(PI * Y), PI * np.sin(PI * X) * np.cos(PI * Y)
    return k, u, -(ux + 2 * Y * uy - 2 * PI**2 * k * u)


def test_darcy_reference_converges_at_second_order():
    errors = []
    for n in (8, 16, 32):
        k, u, s = _darcy_manufactured(n)
        errors.append(np.max(np.abs(Dc.solve_darcy(k, s) - u)))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert errors[-1] < 1e-3
    np.testing.assert_allclose(ratios, 4.0, rtol=0.05)


def test_darcy_matrix_is_the_stencil_of_bodil():
    """The sparse matrix is -div(k grad) of bodil.stencil at the interior nodes (any u, any positive k)."""
    rng = np.random.default_rng(0)
    k, u = rng.uniform(1.0, 3.0, (7, 7)), rng.standard_normal((7, 7))
    faces = face_diffusivities(jnp.asarray(k), k.shape, (1 / 6, 1 / 6), (False, False))
    expected = -np.asarray(diffusion_operator(jnp.asarray(u), faces, (False, False)))
    np.testing.assert_allclose((Dc.stiffness(k) @ u.ravel()).reshape(7, 7)[1:-1, 1:-1], expected[1:-1, 1:-1],
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="positive"):
        Dc.solve_darcy(-k)


def test_random_field_has_its_covariance():
    """2000 samples on 11 x 11 nodes: variance sd^2 and correlation exp(-d^2 / (2 l^2)) at lag 0.2; the standard
    error of a sample covariance is at most sqrt(2 / 2000) sd^2 = 0.032 sd^2, the tolerance is 5 of them."""
    samples = np.stack([Dc.gaussian_random_field(s, 11, length=0.2, sd=2.0) for s in range(2000)])
    np.testing.assert_allclose(samples[:, 5, 5].var(), 4.0, atol=5 * 0.032 * 4)
    np.testing.assert_allclose(np.mean(samples[:, 5, 5] * samples[:, 7, 5]), 4.0 * np.exp(-0.5), atol=5 * 0.032 * 4)
    np.testing.assert_allclose(np.mean(samples[:, 5, 5] * samples[:, 5, 3]), 4.0 * np.exp(-0.5), atol=5 * 0.032 * 4)


@pytest.fixture(scope="module")
def darcy_case():
    return Dc.darcy(n_res=9, nx_ref=16, noise=1e-3, seed=3)


def test_darcy_case(darcy_case):
    c = darcy_case
    assert set(np.unique(c.k_true)) == {Dc.K_LOW, Dc.K_HIGH}
    assert np.all((c.function0 > Dc.K_LOW) & (c.function0 < Dc.K_HIGH))
    np.testing.assert_allclose(c.clean, Dc.solve_darcy(c.k_true)[::2, ::2].ravel(), rtol=1e-12)
    assert 0.5e-3 < np.std(c.problem.data_values - c.clean) < 2e-3
    np.testing.assert_allclose(c.pretrain[0], c.problem.collocation)
    again = Dc.darcy(n_res=9, nx_ref=16, noise=1e-3, seed=3)
    np.testing.assert_array_equal(again.problem.data_values, c.problem.data_values)
    with pytest.raises(ValueError, match="multiple"):
        Dc.darcy(n_res=9, nx_ref=20)
    m = Dc.metrics(c, c.k_true, c.reference(c.k_true))
    assert m["err_f"] == 0 and m["acc"] == 1 and m["err_u"] == 0


def test_darcy_operator_matches_the_closed_form():
    """r = div(k grad u) + 1 for u = sin(pi x) sin(pi y), k = 1 + x + y^2."""
    pts = np.array([[0.3, 0.6], [0.71, 0.2], [0.5, 0.5]])
    got = jax.vmap(lambda z: Dc.operator(lambda y: jnp.sin(PI * y[0]) * jnp.sin(PI * y[1]),
                                         lambda y: 1 + y[0] + y[1] ** 2, z))(jnp.asarray(pts))
    X, Y = pts[:, 0], pts[:, 1]
    k, u = 1 + X + Y**2, np.sin(PI * X) * np.sin(PI * Y)
    ux, uy = PI * np.cos(PI * X) * np.sin(PI * Y), PI * np.sin(PI * X) * np.cos(PI * Y)
    np.testing.assert_allclose(got, ux + 2 * Y * uy - 2 * PI**2 * k * u + 1, rtol=1e-10)


def test_darcy_odil_residual_is_the_reference_stencil(darcy_case):
    """The ODIL fields built from the reference solve on the collocation nodes satisfy its difference equation (the
    same stencil) up to the nesting of the grids: the PDE block is far smaller than at the initial guess."""
    c = darcy_case
    post, start = Dc.odil_posterior(c)
    n = c.settings["n_res"]
    k = np.clip(c.k_true[::2, ::2], 3 + 1e-9, 12 - 1e-9)
    truth = {"u": jnp.asarray(Dc.solve_darcy(k)), "a": jnp.asarray(np.log((k - 3) / (12 - k)))}
    pde = post.prior.residuals(truth, {})["pde/pde"]
    assert float(jnp.max(jnp.abs(pde))) < 1e-8
    assert float(jnp.max(jnp.abs(post.prior.residuals(start, {})["pde/pde"]))) > 1e-3
    assert start["u"].shape == (n, n)


# ---------------------------------------------------------------------------------------------- glioblastoma
def test_gbm_reference_is_the_heat_kernel():
    """m = 1, rho = 0: u(t) = a s^2 / (s^2 + 2 D t) exp(-r^2 / (2 (s^2 + 2 D t))) far from the walls; the error
    drops at least fourfold when the solver's nodes are refined twice (second order in h, dt ~ h^2)."""
    n, d, s = 17, 2e-3, 0.08
    grid = Grid(shape=(3, n, n), lower=0.0, upper=1.0, names=("t", "x", "y"), layout=("node",) * 3)
    pts = Dc.node_points(n)
    r2 = np.sum((pts - 0.5) ** 2, axis=1).reshape(n, n)
    errors = []
    for refine in (1, 2):
        settings = dict(refine=refine, safety=0.5, seed_width=s, tau_edema=0.25, tau_core=0.675)
        case = G.GBMCase(None, grid, np.ones((n, n)), {}, {}, None, None, None, settings)
        u = case.reference({"D": d, "rho": 0.0})[-1]
        w = s**2 + 2 * d
        errors.append(np.max(np.abs(u - G.AMPLITUDE * s**2 / w * np.exp(-0.5 * r2 / w))))
    assert errors[1] < 2e-3 * G.AMPLITUDE
    assert errors[0] / errors[1] > 3.5


def test_gbm_operator_matches_the_closed_form():
    """m = 1 + x + 2 y (bilinear interpolation is exact), u = t sin(pi x) sin(pi y) + 0.3."""
    n = 9
    pts = Dc.node_points(n)
    mob = (1 + pts[:, 0] + 2 * pts[:, 1]).reshape(n, n)
    op = G.make_operator(mob)
    theta = {"D": 0.3, "rho": 2.0}

    def u(z):
        return z[0] * jnp.sin(PI * z[1]) * jnp.sin(PI * z[2]) + 0.3

    z = np.array([[0.5, 0.33, 0.61], [0.9, 0.12, 0.77]])
    got = jax.vmap(lambda p: op(u, p, theta))(jnp.asarray(z))
    t, x, y = z.T
    s = np.sin(PI * x) * np.sin(PI * y)
    ux, uy = t * PI * np.cos(PI * x) * np.sin(PI * y), t * PI * np.sin(PI * x) * np.cos(PI * y)
    m = 1 + x + 2 * y
    div = ux + 2 * uy - 2 * PI**2 * m * t * s
    val = t * s + 0.3
    np.testing.assert_allclose(got, s - 0.3 * div - 2.0 * val * (1 - val), rtol=1e-10)


@pytest.fixture(scope="module")
def gbm_case():
    """A 16 x 16 slice: white matter in a disc of radius 0.35, grey matter around, background in the corners."""
    n = 16
    r = np.sqrt(np.sum((Dc.node_points(n) - 0.5) ** 2, axis=1)).reshape(n, n)
    wm = np.where(r < 0.35, 1.0, 0.0)
    gm = np.where((r >= 0.35) & (r < 0.6), 1.0, 0.0)
    return G.glioblastoma(tissue=(wm, gm), n=n, n_t=6, n_res=64, side_mm=48.0)


def test_gbm_segmentation_and_data_loss(gbm_case):
    c = gbm_case
    tissue = c.classes != UNOBSERVED
    np.testing.assert_array_equal(tissue, c.mobility >= 0.1)
    np.testing.assert_array_equal(c.classes == ABOVE, tissue & (c.clean >= 0.675))
    wt, tc = c.segment(c.clean)
    assert tc.sum() > 0 and wt.sum() > tc.sum()
    # the authors' loss (sum over the two thresholds of the normalised mean squared error), halved
    u = c.clean[tissue]
    by_hand = sum(np.mean((1 / (1 + np.exp(-20 * (u - tau))) - (u >= tau)) ** 2) / np.mean(u >= tau)
                  for tau in (0.25, 0.675)) / 2
    np.testing.assert_allclose(G.data_loss(c, c.clean), by_hand, rtol=1e-10)
    at_truth = G.metrics(c, c.truth, c.reference(c.truth))
    assert at_truth["dice"] == at_truth["dice_fd"] == at_truth["dice_core_fd"] == 1.0
    assert at_truth["err_u"] == 0.0
    at_start = G.metrics(c, c.theta0, c.reference(c.theta0))
    assert at_start["data"] > 3 * at_truth["data"] and at_start["dice_fd"] < 0.95


def test_gbm_network_data_loss_uses_the_link(gbm_case):
    """L.data_loss of a network that returns the reference field at the data points equals data_loss."""
    from bodil.bilo import losses as L
    c = gbm_case
    field = c.clean

    def net(z, p):  # nearest node of the final field
        i = jnp.round(z[1:] * (c.grid.shape[1] - 1)).astype(int)
        return jnp.asarray(field)[i[0], i[1]] + 0 * p[0]

    np.testing.assert_allclose(L.data_loss(net, c.problem, jnp.ones(2)), G.data_loss(c, field), rtol=1e-6)


def test_gbm_transforms_are_exact_at_t0_and_the_logistic_stays_in_0_1():
    """Both output transforms give u(x, 0) for any network output; the logistic one stays in (0, 1), and its logit
    of the seed is finite (float32) where the seed itself underflows, at the corners of the box."""
    sw = 3.0 / 64.0
    xy = jnp.asarray(Dc.node_points(9), jnp.float32)
    u0 = np.asarray(G.initial_profile(xy, sw))
    for kind in G.TRANSFORMS:
        tf = G.make_transform(sw, kind)
        at0 = jax.vmap(lambda p: tf(jnp.concatenate([jnp.zeros(1, p.dtype), p]), jnp.float32(-7.0)))(xy)
        np.testing.assert_allclose(at0, u0, rtol=1e-5, atol=1e-30)
    logistic = G.make_transform(sw, "logistic")
    later = jax.vmap(lambda p, r: logistic(jnp.concatenate([jnp.ones(1, p.dtype), p]), r))(
        xy, jnp.linspace(-300.0, 300.0, xy.shape[0], dtype=jnp.float32))
    assert np.all((np.asarray(later) >= 0) & (np.asarray(later) <= 1))
    corner = np.asarray(G.initial_logit(jnp.zeros(2, jnp.float32), sw))
    np.testing.assert_allclose(corner, np.log(0.1) - 0.5 * 0.5 / sw**2, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown kind"):
        G.make_transform(sw, "exponential")


def test_network_features_feed_the_first_layer():
    """features=phi: the first layer sees phi(z) (n_coords is z's length), and u's z-derivatives, which the
    residual takes, are those of the composition (against central differences)."""
    from bodil.bilo import local_operator_net
    from bodil.bilo.network import InputFeatures

    net = local_operator_net(0, 3, 2, width=8, depth=2, features=G.seed_features, dtype=jnp.float64)
    assert net.n_coords == 3 and net.first.weight.shape[1] == 4
    z, p = jnp.array([0.3, 0.2, 0.7]), jnp.array([0.5, -0.2])
    h = jnp.tanh(net.first(G.seed_features(z)) + net.embedding @ p)
    for layer in net.hidden:
        h = jnp.tanh(layer(h))
    np.testing.assert_allclose(net(z, p), net.out(h)[0], rtol=1e-12)
    grad = jax.grad(net)(z, p)
    eps = 1e-6
    fd = [(net(z + eps * e, p) - net(z - eps * e, p)) / (2 * eps) for e in jnp.eye(3)]
    np.testing.assert_allclose(grad, fd, rtol=1e-6)
    with pytest.raises(ValueError, match="features take 3"):
        local_operator_net(0, 2, 2, features=InputFeatures(G.seed_features, 3))
