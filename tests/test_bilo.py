"""BiLO and its PINN baseline (Zhang et al., "BiLO: Bilevel Local Operator Learning for PDE inverse problems").

Tiny networks on a coarse Fisher-KPP case; one pre-trained network (module fixture) serves the upper-level
gradient test and the tiny inverse run, and the compiled trainers are reused across tests.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bodil.bilo import (BiLOSettings, DivergenceError, PointwiseProblem, cases, fit, local_operator_net, losses,
                        trainer)
from bodil.bilo.train import save_checkpoint

N_RES, WIDTH, PRE_STEPS, FINE_STEPS, CHUNK = 9, 16, 900, 1000, 100


@pytest.fixture(scope="module")
def case():
    return cases.fisher_kpp(n_res=N_RES, nx_ref=40, dt_ref=1e-3)


@pytest.fixture(scope="module")
def net(case):
    return local_operator_net(0, 2, 2, width=WIDTH, transform=cases.hard_conditions)


@pytest.fixture(scope="module")
def tr(case, net):
    """One BiLO trainer (compiled once for CHUNK-step chunks) for pre-training and fine-tuning."""
    return trainer(case.problem, net, BiLOSettings(chunk=CHUNK, lr_net=5e-3, lr_theta=2e-2), reference=case.pretrain)


@pytest.fixture(scope="module")
def pretrained(case, tr):
    """BiLO pre-trained at theta_0 (residual + residual-gradient + fit to the reference solution there)."""
    return fit(tr, tr.init(case.theta0, pretrain=True), PRE_STEPS)


def test_residual_gradient_loss_matches_finite_differences(case):
    """d r / d p by autodiff (eq. 5) against central differences computed here (the Fisher-KPP residual, with its
    coordinate derivatives, through a small random network)."""
    prob = PointwiseProblem(case.problem.operator, case.problem.collocation[::7], case.problem.data_points,
                            case.problem.data_values, case.problem.names, case.problem.scale)
    small = local_operator_net(3, 2, 2, width=6, depth=1, transform=cases.hard_conditions)
    p, eps = jnp.asarray([1.3, 0.8]), 1e-6

    @jax.jit
    def both(p):
        shifted = jax.vmap(lambda q: losses.residuals(small, prob, q))(p + eps * jnp.asarray([[1, 0], [-1, 0], [0, 1],
                                                                                            [0, -1]]))
        fd = jnp.stack([shifted[0] - shifted[1], shifted[2] - shifted[3]], axis=1) / (2 * eps)
        return losses.residual_gradients(small, prob, p), fd

    auto, fd = both(p)
    assert auto.shape == (prob.collocation.shape[0], 2)
    assert float(jnp.max(jnp.abs(fd))) > 1e-2  # not trivially zero
    np.testing.assert_allclose(auto, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.xla_optimized  # trains the module's pre-trained network
def test_upper_level_gradient_matches_reference_solver(case, pretrained):
    """At a lower level converged at theta_0, d L_dat / d p through the network (BiLO's upper-level direction)
    equals the gradient of the same data loss through the finite-difference reference solver."""
    assert pretrained.history["residual"][-1] < 1e-3
    prob, p0 = case.problem, pretrained.state.p
    bilo = jax.jit(jax.grad(lambda q: losses.data_loss(pretrained.net, prob, q)))(p0)
    x = prob.data_points[:, 1]

    def ref_loss(q):
        u = cases.solve_fisher_kpp(prob.theta(q), [1.0], nx_ref=40, dt_ref=1e-3)
        return jnp.mean((cases.interpolate_x(u, x)[0] - prob.data_values) ** 2)

    ref = jax.jacfwd(ref_loss)(p0)  # forward mode: two directions through the solver
    assert float(jnp.linalg.norm(ref)) > 1e-3
    # 4.9% at this size; the same network pre-trained with w_rgrad = 0 is 94% off, with the wrong sign in D
    assert float(jnp.linalg.norm(bilo - ref) / jnp.linalg.norm(ref)) < 0.1, (bilo, ref)
    assert np.all(np.sign(bilo) == np.sign(ref))


def test_embedding_stays_fixed(net, pretrained):
    """The parameter embedding W_p is not trained (appendix B); the other weights are."""
    np.testing.assert_array_equal(pretrained.net.embedding, net.embedding)
    assert not np.allclose(pretrained.net.first.weight, net.first.weight)
    assert np.any(np.asarray(net.embedding) != 0)


@pytest.mark.xla_optimized  # trains the module's pre-trained network
def test_tiny_run_recovers_parameters_and_resumes(case, pretrained, tr, tmp_path):
    """A short fine-tuning moves (D, rho) closer to the truth than theta_0, and a run interrupted and resumed
    from its checkpoint ends exactly where the uninterrupted run ends."""
    state0 = tr.init(case.theta0, params=pretrained.state.params)
    full = fit(tr, state0, FINE_STEPS)
    for k, v in case.truth.items():  # each parameter at least halves its distance to the truth
        assert abs(full.theta[k] - v) < 0.5 * abs(case.theta0[k] - v), (full.theta, case.truth)
    path = tmp_path / "ck.npz"
    half = fit(tr, state0, FINE_STEPS // 2, checkpoint=path)
    assert int(half.state.step) == FINE_STEPS // 2 and path.exists()
    resumed = fit(tr, state0, FINE_STEPS, checkpoint=path)
    np.testing.assert_array_equal(resumed.state.p, full.state.p)
    assert resumed.history["loss"].shape == (FINE_STEPS,)
    np.testing.assert_array_equal(resumed.history["loss"], full.history["loss"])


@pytest.fixture(scope="module")
def toy():
    """A cheap problem without coordinate derivatives, ``r = u - 1e3 a^4``, and a PINN trainer on it."""
    col = np.stack([np.linspace(0, 1, 5), np.linspace(0, 1, 5)], axis=1)
    prob = PointwiseProblem(lambda u, z, th: u(z) - 1e3 * th["a"] ** 4, col, col[:2], np.zeros(2), ("a", "b"),
                            (1.0, 1.0))
    net = local_operator_net(1, 2, 2, width=4, depth=1, uses_params=False)
    return prob, net, trainer(prob, net, BiLOSettings(method="pinn", w_data=10.0, lr_theta=100.0, chunk=4))


def test_pinn_loss_is_eq_11(toy):
    """The PINN path: W and p minimise L_res + w L_dat together; the network ignores p."""
    prob, net, tr = toy
    p = jnp.ones(2)
    state, info = tr.run(tr.init(p), 4)
    expected = jax.jit(lambda q: losses.residual_loss(net, prob, q) + 10.0 * losses.data_loss(net, prob, q))(p)
    np.testing.assert_allclose(info.loss[0], expected, rtol=1e-12)
    assert float(info.rgrad[0]) == 0.0 and not np.allclose(info.p[0], p)
    assert float(jnp.abs(jax.grad(lambda q: net(jnp.asarray([0.5, 0.5]), q))(p)).sum()) == 0.0


def test_pretraining_loss_weights_the_reference_fit(toy):
    """Pre-training: L_res + w_reference mean (u - v)^2 against the reference values (the data term off)."""
    prob, net, _ = toy
    ref = (np.asarray(prob.collocation), np.linspace(0.2, 0.8, 5))
    p = jnp.ones(2)
    fit_ = jax.jit(lambda q: losses.fit_loss(net, q, *ref))(p)
    res = jax.jit(lambda q: losses.residual_loss(net, prob, q))(p)
    for w in (1.0, 30.0):
        tr = trainer(prob, net, BiLOSettings(method="pinn", w_data=10.0, chunk=1, w_reference=w), reference=ref)
        _, info = tr.step(tr.init(p, pretrain=True))
        np.testing.assert_allclose(info.loss, res + w * fit_, rtol=1e-12)
    with pytest.raises(ValueError, match="w_reference"):
        BiLOSettings(w_reference=0.0)


def test_log_parameters_stay_positive_and_take_relative_steps(toy):
    """``log_params``: Adam on ``log p``. Its first step moves each parameter with a non-zero gradient by the
    factor ``exp(-lr sign(p dL/dp))`` (Adam's first update is ``-lr g / (|g| + eps)``); with a step of 100 that
    drives plain Adam's ``a`` from 0.7 to -99.3, ``a`` stays positive."""
    prob, net, _ = toy
    p0 = jnp.asarray([0.7, 1.2])
    grad = jax.grad(lambda q: losses.residual_loss(net, prob, q) + 10.0 * losses.data_loss(net, prob, q))(p0)
    assert grad[0] != 0.0 and grad[1] == 0.0  # the operator reads a, not b; the network ignores p
    for lr in (0.5, 100.0):
        tr = trainer(prob, net, BiLOSettings(method="pinn", w_data=10.0, lr_theta=lr, chunk=1, log_params=True))
        p1 = tr.step(tr.init(p0))[0].p
        np.testing.assert_allclose(p1, [0.7 * np.exp(-lr * np.sign(float(grad[0]))), 1.2], rtol=1e-6)
        assert bool(jnp.all(p1 > 0))
    with pytest.raises(ValueError, match="must be positive"):
        tr.init(jnp.asarray([-0.1, 1.0]))


def test_residual_gradient_options_agree(toy):
    """The "fd" option of the residual-gradient loss agrees with autodiff, and the loss is mean_i ||d r_i / d p||^2."""
    prob, _, _ = toy
    net = local_operator_net(2, 2, 2, width=4, depth=1)
    p = jnp.asarray([0.7, 1.2])
    auto, fd, loss = jax.jit(lambda q: (losses.residual_gradients(net, prob, q),
                                        losses.residual_gradients(net, prob, q, method="fd", eps=1e-5),
                                        losses.residual_gradient_loss(net, prob, q, method="fd", eps=1e-5)))(p)
    assert float(jnp.min(jnp.abs(auto[:, 0]))) > 1.0  # d r / d a = d u / d a - 4e3 a^3
    np.testing.assert_allclose(fd, auto, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(loss, jnp.mean(jnp.sum(auto**2, axis=1)), rtol=1e-7)


def test_divergence_stops_with_clear_error(toy):
    """A NaN and an exploding loss (Adam steps of 100 on ``a``) stop training with DivergenceError."""
    _, _, tr = toy
    with pytest.raises(DivergenceError, match="step 1 with a NaN"):
        fit(tr, tr.init(jnp.asarray([jnp.nan, 1.0])), 4)
    with pytest.raises(DivergenceError, match="exploding loss") as err:
        fit(tr, tr.init(jnp.ones(2)), 4)
    assert err.value.step >= 2


def test_inner_loop_flags_unreached_tolerance(toy):
    """With an unreachable lower-level tolerance every step reports it, and fit warns (a flagged result)."""
    prob, _, _ = toy
    net = local_operator_net(1, 2, 2, width=4, depth=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = trainer(prob, net, BiLOSettings(inner_steps=2, inner_tol=0.0, chunk=2))
    with pytest.warns(UserWarning, match="missed inner_tol"):
        res = fit(tr, tr.init(jnp.ones(2)), 2)
    assert res.inner_unconverged == 2 and list(res.history["inner"]) == [2, 2]


def test_shape_mismatches_raise(case, pretrained, tr, tmp_path):
    prob = case.problem
    with pytest.raises(ValueError, match="ravel"):
        PointwiseProblem(prob.operator, prob.collocation, prob.data_points, prob.data_values[:, None],
                         prob.names, prob.scale)
    with pytest.raises(ValueError, match="coordinate column"):
        PointwiseProblem(prob.operator, prob.collocation, np.ones((3, 3)), np.ones(3), prob.names, prob.scale)
    with pytest.raises(ValueError, match="one scale per parameter"):
        PointwiseProblem(prob.operator, prob.collocation, prob.data_points, prob.data_values, prob.names, (1.0,))
    with pytest.raises(ValueError, match="p0 has shape"):
        tr.init(jnp.ones(3))
    with pytest.raises(ValueError, match="reference points"):
        trainer(prob, pretrained.net, reference=(np.ones((4, 3)), np.ones(4)))
    with pytest.raises(ValueError, match="n_params=2"):
        trainer(prob, local_operator_net(0, 2, 3, width=4))
    with pytest.raises(ValueError, match="takes 1 coordinate"):
        trainer(prob, local_operator_net(0, 1, 2, width=4))
    with pytest.raises(ValueError, match="never move"):
        trainer(prob, local_operator_net(0, 2, 2, width=4, uses_params=False))
    other = local_operator_net(0, 2, 2, width=WIDTH + 1, transform=cases.hard_conditions)
    path = save_checkpoint(tmp_path / "other.npz", trainer(prob, other).init(case.theta0), {})
    with pytest.raises(ValueError, match="another network"):
        fit(tr, tr.init(case.theta0), CHUNK, checkpoint=path)


def test_solve_lower_brings_the_network_to_the_pde_at_fixed_parameters(case, pretrained, tr):
    """``solve_lower`` (L-BFGS on L_LO with p held) after a short fine-tuning: the parameters do not move, L_LO
    falls (3.2-fold here), and the network comes closer to the reference solve at those parameters (the point of
    the lower level); a reachable ``tol`` stops early without a warning, an unreachable one is warned about and
    counted."""
    from bodil.bilo import solve_lower

    res = fit(tr, tr.init(case.theta0, params=pretrained.state.params), 2 * CHUNK)
    before = float(tr.lower(res.state.params, res.state.p))
    err_before = cases.metrics(case, res.theta, cases.network_field(res.net, case, res.state.p))["err_u"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = solve_lower(tr, res, 300, chunk=CHUNK)
    np.testing.assert_array_equal(out.state.p, res.state.p)
    assert out.theta == res.theta and out.history["loss"].shape == (300,) and out.inner_unconverged == 0
    after = float(out.history["final"])
    assert after == pytest.approx(float(tr.lower(out.state.params, out.state.p))) and after < before / 2
    err_after = cases.metrics(case, out.theta, cases.network_field(out.net, case, out.state.p))["err_u"]
    assert err_after < 0.5 * err_before, (err_before, err_after)  # 1.4e-2 -> 2.4e-3 here
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        early = solve_lower(tr, res, 300, tol=0.5 * before, chunk=CHUNK)
    assert 0 < len(early.history["loss"]) < 300 and float(early.history["final"]) <= 0.5 * before
    with pytest.warns(UserWarning, match="above tol"):
        missed = solve_lower(tr, res, 5, tol=1e-14, chunk=CHUNK)
    assert missed.inner_unconverged == 1
    with pytest.raises(ValueError, match="pre-training"):
        solve_lower(tr, pretrained, 5)
