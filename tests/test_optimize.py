import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import bodil
from bodil import Grid, Params, PDEPrior, Posterior, residuals
from bodil.cases import diffusion_1d, oscillator, reaction_diffusion_2d
from bodil.optimize import Objective
from bodil.optimize.cg import truncated_cg
from bodil.likelihood import Gaussian
from bodil.optimize.preconditioner import (REACTION_CAP, capped_points, reaction_for_blocks,
                                           time_marching_preconditioner)


def dense_least_squares(problem):
    """The oscillator loss is 0.5 |R(x)|^2 with R affine: solve the normal equations densely."""
    obj = Objective(problem.posterior, problem.u0, problem.theta0)
    x0 = obj.x0

    def flat(x):
        return ravel_pytree(obj.residual(x))[0]

    r0, jac = jax.jit(lambda x: (flat(x), jax.jacfwd(flat)(x)))(x0)  # one compiled call, not op by op
    a, b = np.asarray(jac), np.asarray(r0)
    step = np.linalg.solve(a.T @ a, -a.T @ b)
    return obj.position(x0 + step)[0]


def test_oscillator_gauss_newton_hits_the_exact_least_squares_solution():
    problem = oscillator(dtype=jnp.float64)
    exact = dense_least_squares(problem)
    fit = bodil.map_estimate(problem.posterior, problem.u0, problem.theta0, method="gauss-newton", eta_max=0.0,
                             cg_maxiter=1000, gtol=1e-10)
    assert fit.report.iterations <= 2
    for k in ("x", "v"):
        rel = np.linalg.norm(fit.u[k] - exact[k]) / np.linalg.norm(exact[k])
        assert rel < 1e-8, (k, rel)
    assert fit.report.converged
    assert set(fit.report.loss_terms) == {"pde", "data"}


def test_levenberg_marquardt_damping_falls_away_and_lands_on_the_least_squares_solution():
    """Adaptive damping on an affine least-squares problem: the model is exact (ratio 1), so mu is divided
    by 3 every step and the last steps are Gauss-Newton steps onto the exact solution."""
    problem = oscillator(dtype=jnp.float64)
    exact = dense_least_squares(problem)
    fit = bodil.map_estimate(problem.posterior, problem.u0, problem.theta0, method="gauss-newton", eta_max=0.0,
                             cg_maxiter=1000, gtol=1e-10, damping=1e3, adaptive_damping=True, max_iter=100)
    mus = np.asarray(fit.report.extra["damping"])
    assert fit.report.converged, fit.report
    assert mus[0] == 1e3 and len(mus) > 5 and np.allclose(mus[1:] / mus[:-1], 1 / 3)
    for k in ("x", "v"):
        rel = np.linalg.norm(fit.u[k] - exact[k]) / np.linalg.norm(exact[k])
        assert rel < 1e-8, (k, rel)
    with pytest.raises(ValueError, match="positive starting damping"):
        bodil.map_estimate(problem.posterior, problem.u0, problem.theta0, adaptive_damping=True)


def test_diffusion_map_with_unknown_initial_state_is_the_least_squares_solution():
    """Amoudruz et al. 2025, sec. 3.2: quadratic in u, no initial-condition block; the preconditioner's stand-in row
    must not change the answer, only the speed."""
    problem = diffusion_1d(dtype=jnp.float64)
    exact = dense_least_squares(problem)
    fit = bodil.map_estimate(problem.posterior, problem.u0, problem.theta0, gtol=1e-9)
    assert fit.report.converged and fit.report.iterations <= 10
    rel = float(jnp.linalg.norm(fit.u - exact) / jnp.linalg.norm(exact))
    assert rel < 1e-8, rel
    assert sum(fit.report.extra["cg_iterations"]) < 500  # unpreconditioned CG needs > 20000 here


def test_solvers_agree_on_the_oscillator_with_unknown_frequency():
    problem = oscillator(infer_omega=True, dtype=jnp.float64)
    fits = {m: bodil.map_estimate(problem.posterior, problem.u0, problem.theta0, method=m, gtol=1e-7)
            for m in ("gauss-newton", "newton-krylov", "lbfgs")}
    ref = fits["gauss-newton"]
    assert ref.report.converged and 0.9 < float(ref.theta["omega2"]) < 1.2
    for m, fit in fits.items():
        assert fit.report.loss == pytest.approx(ref.report.loss, rel=1e-8, abs=1e-7), m
        assert float(fit.theta["omega2"]) == pytest.approx(float(ref.theta["omega2"]), rel=1e-5), m
        np.testing.assert_allclose(fit.u["x"], ref.u["x"], atol=1e-5)
    # the gradient is zero at the MAP of the joint posterior
    g = jax.grad(lambda u, th: problem.posterior.log_density(u, th), argnums=(0, 1))(ref.u, ref.theta)
    assert max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(g)) < 1e-5


def test_adam_recipe_halves_the_learning_rate_on_plateaus():
    from bodil.optimize import adam_recipe

    opt = adam_recipe()  # lr 1e-3, halve after 50 epochs without progress, min 1e-4
    x = jnp.full(3, 1e-2)

    def step(carry, _):
        x, state = carry
        loss, g = jax.value_and_grad(lambda v: 1.0 + jnp.sum(v**2))(x)
        updates, state = opt.update(g, state, x, value=loss)
        return (x + updates, state), state[1].scale

    _, scales = jax.lax.scan(step, (x, opt.init(x)), None, length=1500)
    scales = np.asarray(scales)
    assert scales[0] == 1.0 and scales[-1] == pytest.approx(0.1)  # floored at 1e-4 / 1e-3
    seen = sorted(set(np.round(scales, 12)), reverse=True)
    assert seen == [1.0, 0.5, 0.25, 0.125, 0.1]
    first_drop = int(np.argmax(scales < 1.0))
    assert first_drop >= 50  # never before 50 epochs have passed


def test_adam_map_estimate_reports_epochs():
    problem = oscillator(infer_omega=True, dtype=jnp.float64)
    fit = bodil.map_estimate(problem.posterior, problem.u0, problem.theta0, method="adam", epochs=1000,
                             throw=False)
    rep = fit.report
    assert rep.iterations == 1000 and rep.evaluations == {"fun": 1000, "grad": 1000}
    assert rep.history[-1] < 0.1 * rep.history[0]


def test_report_and_errors():
    problem = oscillator(dtype=jnp.float64)
    fit = bodil.map_estimate(problem.posterior, problem.u0, method="lbfgs", max_iter=5, throw=False)
    assert not fit.report.converged and "NOT converged" in str(fit.report)
    with pytest.raises(ValueError, match="unknown method"):
        bodil.map_estimate(problem.posterior, problem.u0, method="sgd")
    with pytest.raises(ValueError, match="has shape"):
        bodil.map_estimate(problem.posterior, {"x": jnp.zeros(3), "v": jnp.zeros(3)})


def test_map_estimate_raises_when_not_converged_and_refuses_unknown_options():
    problem = oscillator(dtype=jnp.float64)
    with pytest.raises(bodil.optimize.MAPNotConverged, match="did not converge.*throw=False") as err:
        bodil.map_estimate(problem.posterior, problem.u0, method="lbfgs", max_iter=5)
    assert err.value.result.report.iterations == 5 and not err.value.result.report.converged
    with pytest.raises(TypeError, match="unknown option.*'max_iters'.*epochs"):
        bodil.map_estimate(problem.posterior, problem.u0, method="adam", max_iters=5)
    with pytest.raises(TypeError, match="unknown option.*'inner_max_iter'"):
        bodil.map_estimate(problem.posterior, problem.u0, strategy="joint", inner_max_iter=5)


def test_levenberg_marquardt_update():
    from bodil.optimize import levenberg_marquardt

    assert levenberg_marquardt(3.0, 1.0, 0.9, True, True) == (1.0, False)  # good model: divide by 3
    assert levenberg_marquardt(3.0, 1.0, 0.1, True, True) == (6.0, False)  # poor model: double
    assert levenberg_marquardt(3.0, 1.0, 0.5, True, True) == (3.0, False)
    assert levenberg_marquardt(3.0, 1.0, 0.9, False, True) == (3.0, False)  # ratio below rounding: keep
    assert levenberg_marquardt(3.0, 1.0, 0.9, True, False) == (6.0, True)  # rejected: retry with twice mu
    assert levenberg_marquardt(2e12, 1.0, 0.1, True, False) == (4e12, False)  # at the ceiling: give up
    assert levenberg_marquardt(1e-12, 1.0, 0.9, True, True) == (1e-12, False)  # floor


def test_truncated_cg_solves_spd_and_stops_on_negative_curvature():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 20))
    spd = jnp.asarray(a @ a.T + 20 * np.eye(20))
    b = jnp.asarray(rng.normal(size=20))
    x, info = truncated_cg(lambda v: spd @ v, b, 1e-12, 100)
    np.testing.assert_allclose(spd @ x, b, atol=1e-9)
    assert not bool(info.negative_curvature)
    indefinite = jnp.diag(jnp.asarray([1.0, -1.0]))
    x, info = truncated_cg(lambda v: indefinite @ v, jnp.asarray([0.0, 1.0]), 1e-12, 10)
    assert bool(info.negative_curvature)
    np.testing.assert_allclose(x, [0.0, 1.0])  # falls back to the right-hand side (steepest descent)


@pytest.mark.parametrize("layout, rho", [("periodic", 0.0), ("cell", 8.0)])
def test_time_marching_preconditioner_inverts_the_pde_and_ic_curvature(layout, rho):
    grid = Grid((9, 8, 6), 0.0, (0.5, 1.0, 1.0), ("t", "x", "y"), ("node", layout, layout))
    d = jnp.asarray(np.random.default_rng(2).uniform(0.005, 0.1, size=(8, 6)))
    prior = PDEPrior(residuals.fisher_kpp(d, rho), grid, 10.0, initial=residuals.gaussian_bump(("x0", "y0"), 0.1),
                     beta_initial=100.0, reduction="sum")
    post = Posterior(prior, None, Params(x0=0.5, y0=0.5))
    u0 = jnp.asarray(np.random.default_rng(1).uniform(size=grid.shape))
    obj = Objective(post, u0, {})
    x = obj.x0
    _, jvp = jax.linearize(obj.residual, x)
    vjp = jax.linear_transpose(jvp, x)

    def matvec(p):
        return vjp(jvp(p))[0]

    precondition = time_marching_preconditioner(obj, x, matvec)
    b = jnp.asarray(np.random.default_rng(0).normal(size=x.size))
    rel = jnp.linalg.norm(precondition(matvec(b)) - b) / jnp.linalg.norm(b)
    assert float(rel) < 1e-7


def coarse_fisher_kpp(beta, nt=12):
    """Fisher-KPP on a tumour's time step, dt = 100/11 = 9.1 days (``nt`` nodes), 16 cells over 40 mm,
    D = 0.3 mm^2/day, rho = 0.5/day: rho (1 - 2u) dt = 4.5 > 2 where u ~ 0. Data: the whole field, sigma 0.1.
    Returns the posterior and a widening bump ``u_ref``."""
    grid = Grid((nt, 16), 0.0, ((nt - 1) * 100.0 / 11, 40.0), ("t", "x"), ("node", "cell"))
    t, x = grid.mesh()
    u_ref = jnp.broadcast_to(jnp.exp(-(x - 20.0) ** 2 / (2 * (4.0 + 0.1 * t) ** 2)), grid.shape)
    prior = PDEPrior(residuals.fisher_kpp(0.3, 0.5), grid, beta, initial=residuals.gaussian_bump(("x0",), 4.0),
                     beta_initial=200.0, reduction="sum")
    y = u_ref + 0.1 * np.random.default_rng(0).normal(size=grid.shape)
    return Posterior(prior, Gaussian(None, y, 0.1), Params(x0=20.0)), u_ref


def test_time_marching_preconditioner_stays_positive_definite_beyond_the_stable_step():
    """Issue 15: with rho (1 - 2u) dt > 2 the blocks L_m = I/dt - F'/2 are indefinite; built as they were, P was
    asymmetric and indefinite (eigenvalues of its symmetric part in [-6e6, 6e6] here). With the reaction of
    ``reaction_for_blocks`` it is SPD (eigenvalues in [1.3e-4, 2.2e3]; capping at 1.8 alone gives [1.3e-4, 2e9])."""
    post, u_ref = coarse_fisher_kpp(1e4, nt=6)
    obj = Objective(post, u_ref, {})
    x = obj.x0
    dt = post.grid.spacing[0]
    expected = int(np.sum(0.5 * (1 - 2 * np.asarray(u_ref)) * dt > REACTION_CAP))
    assert expected > 0 and int(capped_points(obj, x)) == expected
    _, jvp = jax.linearize(obj.residual, x)
    vjp = jax.linear_transpose(jvp, x)
    precondition = time_marching_preconditioner(obj, x, lambda p: vjp(jvp(p))[0])
    dense = np.asarray(jax.jit(jax.vmap(precondition))(jnp.eye(x.size)))
    assert np.all(np.isfinite(dense))
    assert np.max(np.abs(dense - dense.T)) < 1e-8 * np.max(np.abs(dense))
    assert np.linalg.eigvalsh(0.5 * (dense + dense.T)).min() > 0
    # exact below the cap; beyond 4 / cap the reaction's growth per step keeps its magnitude
    xs = np.array([-3.0, 0.5, REACTION_CAP, 2.0, 4.5, 9.0])
    xt = np.asarray(reaction_for_blocks(jnp.asarray(xs), 1.0))
    np.testing.assert_allclose(xt, [-3.0, 0.5, REACTION_CAP, REACTION_CAP, 4 / 4.5, 4 / 9.0])
    growth = lambda v: np.abs((1 + v / 2) / (1 - v / 2))  # noqa: E731
    np.testing.assert_allclose(growth(xt[4:]), growth(xs[4:]))


def test_gauss_newton_with_the_capped_preconditioner_converges_and_says_so():
    """At rho (1 - 2u) dt > 2 the time-marching preconditioner is approximate but SPD: Gauss-Newton reaches the
    MAP found without a preconditioner (before the cap, CG hit its limit every step and it did not), and the
    report counts the capped points."""
    post, u_ref = coarse_fisher_kpp(1e2, nt=6)
    fits = {pc: bodil.optimize.gauss_newton(Objective(post, u_ref, {}), fix_theta=True, preconditioner=pc,
                                            max_iter=30) for pc in ("time-marching", None)}
    (x, rep), (x_none, rep_none) = fits["time-marching"], fits[None]
    assert rep.converged and rep_none.converged, (rep, rep_none)
    assert rep.loss == pytest.approx(rep_none.loss, rel=1e-9)
    np.testing.assert_allclose(x, x_none, atol=1e-5)
    assert max(rep.extra["preconditioner_capped"]) > 0 and "approximate at up to" in rep.message
    assert max(rep_none.extra["preconditioner_capped"]) == 0 and "approximate" not in rep_none.message


@pytest.fixture(scope="module")
def reaction_diffusion_case_1():
    """Amoudruz et al. 2025, sec. 3.3, case 1, sigma = 0.05, on 24 x 24 x 25 (the notebook's grid; the paper:
    64 x 64 x 129, 37 times the unknowns and minutes here). Two tests share it, and so its compiled solves."""
    return reaction_diffusion_2d(case=1, sigma=0.05, n=24, nt=25, dtype=jnp.float64)


@pytest.mark.xla_optimized
def test_reaction_diffusion_map_recovers_the_initial_position(reaction_diffusion_case_1):
    """Start at the centre of the 1-pixels (0.74 grid spacings from the truth); the MAP lands 0.42 spacings from it."""
    problem = reaction_diffusion_case_1
    truth = np.array([2 / 3, 1 / 3])
    start = np.array([float(problem.theta0["x0"]), float(problem.theta0["y0"])])
    fit = bodil.map_estimate(problem.posterior, problem.u0, problem.theta0, method="gauss-newton")
    found = np.array([float(fit.theta["x0"]), float(fit.theta["y0"])])
    assert fit.report.converged, fit.report
    assert fit.report.method == "gauss-newton (profile)"
    h = 1 / 24
    assert np.linalg.norm(found - truth) < 1.5 * h, (found, start)
    assert np.linalg.norm(found - truth) < np.linalg.norm(start - truth)
    assert fit.report.loss < problem.posterior.log_density(problem.u0, problem.theta0) * -1


def test_profile_max_iter_bounds_the_outer_evaluations(reaction_diffusion_case_1):
    """max_iter bounds the profile strategy's work: at most 2 max_iter + 1 inner solves of at most inner_max_iter
    iterations each, even when L-BFGS-B's line search would go on evaluating (inexact inner solves)."""
    problem = reaction_diffusion_case_1
    fit = bodil.map_estimate(problem.posterior, problem.u0, problem.theta0, method="gauss-newton", strategy="profile",
                             max_iter=1, inner_max_iter=2, throw=False)
    extra = fit.report.extra
    assert extra["outer_evaluations"] <= 3
    assert len(extra["inner_iterations"]) <= 3 and max(extra["inner_iterations"]) <= 2
    assert not fit.report.converged
