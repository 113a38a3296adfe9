"""Unknown functions in BiLO (Zhang et al., sec. 2.2, appendix A): the auxiliary-variable losses, the reference
solvers of the Poisson and heat cases, their ODIL posteriors, and a tiny training on one compiled trainer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bodil.bilo import BiLOSettings, cases_heat, cases_poisson, fit, local_operator_net
from bodil.bilo import functions as F

CHUNK = 50


@pytest.fixture(scope="module")
def case():
    return cases_poisson.variable_poisson(n_res=11, n_data=6, nx_ref=100, w_reg=1e-3)


@pytest.fixture(scope="module")
def nets():
    u_net = local_operator_net(0, 1, 1, width=8, transform=cases_poisson.u_transform)
    f_net = local_operator_net(1, 1, 0, width=6, transform=cases_poisson.d_transform, uses_params=False)
    return u_net, f_net


def test_regulariser_matches_hand_computation():
    """f(x) = 3 x + 2 x^2 on points x_k: h1 = mean (3 + 4 x_k)^2, tv = mean |3 + 4 x_k|, whatever the network."""
    x = np.linspace(-1.0, 0.5, 7)[:, None]
    f_net = local_operator_net(2, 1, 0, width=4, transform=lambda y, raw: 3 * y[0] + 2 * y[0] ** 2 + 0 * raw,
                               uses_params=False)
    slope = 3 + 4 * x[:, 0]
    for reg, expected in (("h1", np.mean(slope**2)), ("tv", np.mean(np.abs(slope)))):
        prob = F.FunctionProblem(lambda u, f, z: u(z), x, x[:2], np.zeros(2), x, (0,), reg=reg)
        np.testing.assert_allclose(jax.jit(F.regulariser, static_argnums=1)(f_net, prob), expected, rtol=1e-12)


def test_regulariser_of_a_network_matches_finite_differences(case, nets):
    _, f_net = nets
    x, eps = case.problem.reg_points, 1e-6

    @jax.jit
    def both(net):
        fd = (F.function_values(net, x + eps) - F.function_values(net, x - eps)) / (2 * eps)
        return F.regulariser(net, case.problem), fd

    reg, fd = both(f_net)
    assert float(jnp.max(jnp.abs(fd))) > 1e-2  # a non-trivial function
    np.testing.assert_allclose(reg, jnp.mean(fd**2), rtol=1e-6)


def test_residual_gradient_is_the_derivative_in_a_shift_of_the_function(case, nets):
    """d r / d delta (autodiff, eq. 14) against central differences of r with f replaced by f + delta, and the "fd"
    option against both; r(delta) recomputed here from the network and the Poisson operator written out."""
    u_net, f_net = nets

    def r(delta, x):  # (D u')' + s with D = f + delta and u(x) = u_net(x, D(x)), derivatives by hand-built jvp
        d = lambda y: f_net(y, jnp.zeros(0)) + delta  # noqa: E731
        u = lambda y: u_net(y, d(y)[None])  # noqa: E731
        flux = lambda y: d(y) * jax.jvp(u, (y,), (jnp.ones(1),))[1]  # noqa: E731
        return jax.jvp(flux, (x,), (jnp.ones(1),))[1] + np.pi**2 * jnp.sin(np.pi * x[0])

    pts, eps = jnp.asarray(case.problem.collocation), 1e-6

    @jax.jit
    def all_of_them(u_net, f_net):
        manual = (jax.vmap(lambda x: r(eps, x))(pts) - jax.vmap(lambda x: r(-eps, x))(pts)) / (2 * eps)
        return (jax.vmap(lambda x: r(0.0, x))(pts), F.residuals(u_net, f_net, case.problem), manual,
                F.residual_gradients(u_net, f_net, case.problem),
                F.residual_gradients(u_net, f_net, case.problem, method="fd", eps=1e-5))

    r0, res, manual, auto, fd_option = all_of_them(u_net, f_net)
    np.testing.assert_allclose(r0, res, rtol=1e-12)
    assert float(jnp.max(jnp.abs(auto))) > 1e-2
    np.testing.assert_allclose(auto, manual, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(fd_option, auto, rtol=1e-6, atol=1e-8)


def test_poisson_reference_converges_at_second_order():
    """-(D u')' = s with D = 1 + x and u = sin(pi x) (manufactured): errors shrink by 4 per halving of h."""
    errors = []
    for n in (40, 80, 160):
        x = np.linspace(0, 1, n + 1)
        s = np.pi**2 * (1 + x) * np.sin(np.pi * x) - np.pi * np.cos(np.pi * x)
        u = cases_poisson.solve_poisson(jnp.asarray(1 + x), jnp.asarray(s))
        errors.append(float(np.max(np.abs(u - np.sin(np.pi * x)))))
    rates = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    np.testing.assert_allclose(rates, 2.0, atol=0.05)
    assert errors[-1] < 1e-4


def test_heat_reference_matches_sine_modes():
    """u(x, 0) = sin(pi x) + sin(3 pi x) / 2 decays mode by mode as exp(-D k^2 pi^2 t), to O(h^2)."""
    d, t = 0.05, np.array([0.0, 0.3, 1.0])
    errors = []
    for n in (50, 100):
        x = np.linspace(0, 1, n + 1)
        exact = (np.exp(-d * np.pi**2 * t)[:, None] * np.sin(np.pi * x)
                 + 0.5 * np.exp(-9 * d * np.pi**2 * t)[:, None] * np.sin(3 * np.pi * x))
        u = cases_heat.solve_heat(jnp.asarray(exact[0]), t, d)
        errors.append(float(np.max(np.abs(u - exact))))
    assert errors[0] < 1e-3 and 3.8 < errors[0] / errors[1] < 4.2, errors


def test_odil_poisson_residual_is_the_reference_scheme(case):
    """ODIL's Poisson residual vanishes (to rounding) at the reference solve on the same nodes, with both blocks
    of boundary values, and the regulariser block is (n_data w_reg / (2 sigma^2)) mean D'^2 / beta per unit beta."""
    post, start = cases_poisson.odil_posterior(case, beta=1e6)
    x = case.problem.collocation[:, 0]
    d = np.asarray(cases_poisson.truth(x))
    fields = {"u": cases_poisson.solve_poisson(jnp.asarray(d)), "D": jnp.asarray(d)}
    res = post.prior.residuals(fields, {})
    assert float(jnp.max(jnp.abs(res["pde/pde"]))) < 1e-9
    assert float(jnp.max(jnp.abs(res["ic/walls"]))) == 0 and float(jnp.max(jnp.abs(res["ic/D_ends"]))) < 1e-15
    block = post.blocks(fields, {})["pde/smoothness"].value()
    expected = case.problem.data_points.shape[0] * 1e-3 / (2 * 1e-4) * np.mean((np.diff(d) / np.diff(x)) ** 2)
    np.testing.assert_allclose(block, expected, rtol=1e-10)


@pytest.fixture(scope="module")
def tr(case, nets):
    return F.function_trainer(case.problem, *nets, BiLOSettings(chunk=CHUNK, lr_net=5e-3, lr_theta=5e-3),
                              function0=case.function0, reference=case.pretrain)


def test_tiny_training_reduces_the_losses(case, nets, tr):
    """Pre-training lowers the local-operator loss and moves D to D_0 = 1; fine-tuning then lowers the data loss
    and moves D towards the hat; the parameter embedding of the local operator stays fixed."""
    pre = fit(tr, tr.init(pretrain=True), 4 * CHUNK)
    h = pre.history
    assert h["loss"][-1] < 0.1 * h["loss"][0]
    assert np.all(np.abs(np.asarray(pre.net.function(np.array([[0.25], [0.5]]))) - 1.0) < 0.05)
    res = fit(tr, tr.init(pre.state.p, pre.state.params), 4 * CHUNK)
    assert res.history["data"][-1] < 0.5 * res.history["data"][0]
    assert res.theta["D(x=0.50)"] > pre.theta["D(x=0.50)"] + 0.05  # the hat peaks at 1.5
    np.testing.assert_array_equal(res.net.u.embedding, nets[0].embedding)


def test_pinn_and_bilo_objectives(case, nets, tr):
    """BiLO's W-objective is L_res + w_rgrad L_rgrad (eq. 16, no data); the PINN's is L_res + w L_dat (eq. 11)."""
    u_net, f_net = nets
    pinn_net = local_operator_net(0, 1, 1, width=8, transform=cases_poisson.u_transform, uses_params=False)

    @jax.jit
    def expected(u_net, pinn_net, f_net):
        res = jnp.mean(F.residuals(u_net, f_net, case.problem) ** 2)
        rgrad = jnp.mean(F.residual_gradients(u_net, f_net, case.problem) ** 2)
        pinn = (jnp.mean(F.residuals(pinn_net, f_net, case.problem) ** 2)
                + 10 * F.data_loss(pinn_net, f_net, case.problem))
        return res + 0.1 * rgrad, F.data_loss(u_net, f_net, case.problem), pinn

    bilo_loss, data, pinn_loss = expected(u_net, pinn_net, f_net)
    _, info = tr.run(tr.init(), CHUNK)  # the compiled chunk of the training test
    np.testing.assert_allclose(info.loss[0], bilo_loss, rtol=1e-10)
    np.testing.assert_allclose(info.data[0], data, rtol=1e-10)
    pinn = F.function_trainer(case.problem, pinn_net, f_net, BiLOSettings(method="pinn", w_data=10.0, chunk=1),
                              function0=case.function0)
    _, info = pinn.run(pinn.init(), 1)
    np.testing.assert_allclose(info.loss[0], pinn_loss, rtol=1e-10)
    assert float(info.rgrad[0]) == 0.0


def test_wrong_networks_raise(case, nets):
    u_net, f_net = nets
    with pytest.raises(ValueError, match="one auxiliary variable"):
        F.function_trainer(case.problem, local_operator_net(0, 1, 2, width=4), f_net, function0=case.function0)
    with pytest.raises(ValueError, match="no parameters"):
        F.function_trainer(case.problem, u_net, local_operator_net(0, 2, 0, width=4, uses_params=False),
                           function0=case.function0)
    with pytest.raises(ValueError, match="inner_steps"):
        F.function_trainer(case.problem, u_net, f_net, BiLOSettings(inner_steps=2, inner_tol=1e-3),
                           function0=case.function0)
    with pytest.raises(ValueError, match="function0"):
        F.function_trainer(case.problem, u_net, f_net, function0=np.ones(3))
    with pytest.raises(ValueError, match="axes"):
        F.FunctionProblem(case.problem.operator, case.problem.collocation, case.problem.data_points,
                          case.problem.data_values, case.problem.reg_points, (1,))


def test_solve_lower_holds_the_function_and_lowers_the_local_operator_loss(case, nets, tr):
    """``solve_lower`` on an unknown function: the function network's weights (and so ``D``) are held, ``L_LO``
    (eq. 16 at fixed ``V``) falls (285-fold here, at least 2-fold asserted); the PINN has no lower level and is
    refused."""
    from bodil.bilo import solve_lower

    pre = fit(tr, tr.init(pretrain=True), 2 * CHUNK)
    res = fit(tr, tr.init(pre.state.p, pre.state.params), 2 * CHUNK)
    out = solve_lower(tr, res, CHUNK, chunk=CHUNK)
    for a, b in zip(jax.tree_util.tree_leaves(out.state.p), jax.tree_util.tree_leaves(res.state.p)):
        np.testing.assert_array_equal(a, b)
    assert out.theta == res.theta
    assert float(out.history["final"]) < 0.5 * float(tr.lower(res.state.params, res.state.p))
    pinn = F.function_trainer(case.problem, *nets, BiLOSettings(method="pinn", chunk=CHUNK),
                              function0=case.function0)
    with pytest.raises(ValueError, match="no lower level"):
        solve_lower(pinn, res, 1)
