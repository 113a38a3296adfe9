"""The GliODIL posterior on a box (bodil.tumor.model): consistency with the forward solver, the forward fit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bodil.tumor.model import ORIGIN, fit_forward, initial_guess, tumor_model

jax.config.update("jax_enable_x64", True)

TRUTH = dict(Dw=0.4, ratio=10.0, rho=0.05, x0=27.0, y0=31.0, z0=29.0, tau_lo=0.25, tau_up=0.675)


def phantom(n, side=60.0):
    h = side / n
    x = (np.arange(n) + 0.5) * h
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    brain = (X - 30) ** 2 + (Y - 30) ** 2 + (Z - 30) ** 2 < 28**2
    wm = np.where(brain, 0.6 + 0.3 * np.sin(X / 9.0), 0.0)
    gm = np.where(brain, 0.95 - wm, 0.0)
    return wm, gm, side


def synthetic(n=16, nt=16, **kw):
    wm, gm, side = phantom(n)
    seed_classes = np.zeros((n,) * 3, np.int8)
    seed_classes[n // 2, n // 2, n // 2] = 2
    probe = tumor_model(wm, gm, seed_classes, side, nt=nt)
    u_final = np.asarray(probe.forward(TRUTH)[-1])
    classes = np.where(u_final >= 0.675, 2, np.where(u_final >= 0.25, 1, 0)).astype(np.int8)
    return tumor_model(wm, gm, classes, side, nt=nt, **kw), u_final


def test_forward_solution_satisfies_the_odil_residual_to_discretisation_error():
    # the explicit solver and the Crank-Nicolson residual discretise the same operator (D = Dw c_w + Dg c_g,
    # no flux into non-tissue): the residual of the forward solution is a small fraction of the rate u_t and
    # falls as the ODIL time step shrinks, down to the explicit solver's own error. With a different
    # operator (e.g. Dg = Dw) the residual would be of the order of u_t itself.
    norms, rates = [], []
    for nt in (9, 17):
        model, _ = synthetic(n=12, nt=nt)
        u = model.forward(TRUTH)
        r = model.posterior.prior.residual(u, model.posterior.params.merge(TRUTH), model.grid)["pde"]
        norms.append(float(jnp.sqrt(jnp.mean(r**2))))
        rates.append(float(jnp.sqrt(jnp.mean((jnp.diff(u, axis=0) / model.grid.spacing[0]) ** 2))))
    assert norms[0] > norms[1]
    assert norms[1] < 0.02 * rates[1]
    wrong = dict(TRUTH, ratio=1.0)
    model, _ = synthetic(n=12, nt=17)
    u = model.forward(TRUTH)
    r = model.posterior.prior.residual(u, model.posterior.params.merge(wrong), model.grid)["pde"]
    assert float(jnp.sqrt(jnp.mean(r**2))) > 5 * norms[1]


def test_seed_of_mass_m_is_the_papers_seed_scaled_and_smaller_seeds_grow_less():
    wm, gm, side = phantom(12)
    classes = np.zeros((12,) * 3, np.int8)
    classes[6, 6, 6] = 2
    model = tumor_model(wm, gm, classes, side, nt=5)
    ref = np.asarray(model.initial_condition(TRUTH))  # no M: the paper's seed (M = 1500)
    np.testing.assert_allclose(model.initial_condition({**TRUTH, "M": 1500.0}), ref, rtol=1e-14)
    np.testing.assert_allclose(model.initial_condition({**TRUTH, "M": 150.0}), 0.1 * ref, rtol=1e-12)
    small, paper = (float(np.sum(model.forward({**TRUTH, "M": m})[-1])) for m in (15.0, 1500.0))
    assert 0 < small < paper
    fixed = model.with_fixed(TRUTH, infer=ORIGIN)  # M not in TRUTH: the paper's 1500
    assert fixed.posterior.params.fixed["M"] == 1500.0


def test_the_default_seed_is_a_ball_of_about_5_mm_and_the_surrogate_keeps_its_own():
    """``CTVSettings.seed_dt2``: ``None`` resolves to 4 mm^2 (15, the surrogate's training seed, with
    ``inner="surrogate"``); the model's seed at ``Dt^2 = 4`` is ``min(1, g)`` with ``g = 1500 (16 pi)^{-3/2}
    exp(-r^2 / 16)``: height 1 out to ``r = 4 sqrt(ln(1500 / (16 pi)^{3/2})) = 4.8 mm`` and cut where
    ``g <= 0.1``, ``r = 7.7 mm``."""
    from bodil.io import InputError
    from bodil.tumor import CTVSettings

    assert CTVSettings().effective_seed_dt2 == 4.0
    assert CTVSettings(inner="surrogate").effective_seed_dt2 == 15.0
    assert CTVSettings(seed_dt2=2.5).effective_seed_dt2 == 2.5
    with pytest.raises(ValueError, match="trained with the paper's seed"):
        CTVSettings(inner="surrogate", seed_dt2=4.0)
    with pytest.raises(InputError, match="seed_dt2"):
        CTVSettings(seed_dt2=0.0)
    n, side = 41, 41.0  # 1 mm points, the origin on the middle one
    wm, gm = np.ones((n,) * 3), np.zeros((n,) * 3)
    classes = np.zeros((n,) * 3, np.int8)
    classes[20, 20, 20] = 2
    model = tumor_model(wm, gm, classes, side, nt=4, dt2=4.0)
    mid = float(model.grid.coordinates("x")[20])
    u0 = np.asarray(model.initial_condition({**TRUTH, **dict.fromkeys(ORIGIN, mid)}))
    r = np.sqrt(sum(np.square(c - mid) for c in model.grid.mesh("x", "y", "z")))[0]  # the time axis: size 1
    plateau, cut = 4 * np.sqrt(np.log(1500 / (16 * np.pi) ** 1.5)), 4 * np.sqrt(np.log(15000 / (16 * np.pi) ** 1.5))
    assert np.all(u0[r < plateau - 0.01] == 1.0) and np.all(u0[r > plateau + 0.01] < 1.0)
    assert np.all(u0[r > cut + 0.01] == 0.0) and np.all(u0[r < cut - 0.01] > 0.1)


def test_no_tumour_grows_outside_tissue():
    model, u_final = synthetic(n=12, nt=9)
    outside = (model.wm + model.gm) < 0.1
    assert np.all(u_final[outside] == 0.0)
    assert np.all(model.classes[outside] == -1)  # the likelihood ignores points without tissue


def test_forward_fit_recovers_the_origin_and_growth():
    model, _ = synthetic(n=16, nt=12, infer=("Dw", "rho", "x0", "y0", "z0"))
    guess = initial_guess(model)
    result = fit_forward(model, guess)
    assert result.converged, result.message
    fit = result.theta
    err = np.linalg.norm([fit[c] - TRUTH[c] for c in ORIGIN])
    assert err < model.spacing  # within one grid spacing (3.75 mm)
    assert np.linalg.norm([guess[c] - TRUTH[c] for c in ORIGIN]) > err  # the fit improved on the centroid
    # only D T and rho T are identifiable and the data are thresholded: the front speed 2 sqrt(D rho) is
    # what a single image pins down
    assert np.sqrt(fit["Dw"] * fit["rho"]) == pytest.approx(np.sqrt(TRUTH["Dw"] * TRUTH["rho"]), rel=0.15)


def test_bad_box_inputs():
    wm, gm, side = phantom(8)
    with pytest.raises(ValueError, match="no core"):
        tumor_model(wm, gm, np.zeros((8,) * 3, np.int8), side)
    with pytest.raises(ValueError, match="same cube"):
        tumor_model(wm, gm[:-1], np.zeros((8,) * 3, np.int8), side)
    with pytest.raises(ValueError, match="unknown parameters"):
        tumor_model(wm, gm, np.full((8,) * 3, 2, np.int8), side, infer=("Dx",))


def test_likelihood_weight_counts_one_observation_per_correlation_volume():
    from bodil.tumor.pipeline import likelihood_weight

    assert likelihood_weight(2.5, 10.0) == pytest.approx(2.5**3 / 1000.0)
    assert likelihood_weight(2.5, None) == 1.0
    assert likelihood_weight(12.0, 10.0) == 1.0  # never more than one observation per voxel
    # the same physical length gives the same total weight whatever the resolution: w * n^3 is constant
    assert likelihood_weight(60.0 / 24, 10.0) * 24**3 == pytest.approx(likelihood_weight(60.0 / 64, 10.0) * 64**3)


@pytest.mark.xla_optimized
def test_tempered_posterior_weighs_the_likelihood_by_w_and_is_wider():
    from bodil.tumor.model import ForwardLikelihood
    from bodil.tumor.pipeline import MapFit, sample_posterior
    from bodil.tumor.settings import CTVSettings

    model, _ = synthetic(n=12, nt=9)
    mf = MapFit(crop=None, model=model, fit=None, theta=TRUTH)
    runs = {}
    for ell in (None, 10.0):
        idata, _ = sample_posterior(mf, CTVSettings(num_samples=24, error_correlation_mm=ell, thresholds="fixed",
                                                    posterior_parameters=ORIGIN))
        runs[ell] = idata
    w = runs[10.0].attrs["likelihood_weight"]
    assert w == pytest.approx((60.0 / 12 / 10.0) ** 3) and runs[None].attrs["likelihood_weight"] == 1.0
    # what BASIS weighed is w times the segmentation's log-likelihood of the forward run at the sample
    untempered = ForwardLikelihood(model.with_fixed(TRUTH, infer=ORIGIN))
    post, stats = runs[10.0].posterior, runs[10.0].sample_stats
    for k in range(3):
        theta = {c: float(post[c].values.ravel()[k]) for c in ORIGIN}
        assert float(stats["log_likelihood"].values.ravel()[k]) == pytest.approx(w * untempered(theta)[0], rel=1e-9)
    # w = 1/8: the origin's variance grows (about 8 times for a Gaussian posterior; 24 samples)
    var = {ell: sum(float(np.var(r.posterior[c].values)) for c in ORIGIN) for ell, r in runs.items()}
    assert var[10.0] > 3 * var[None]


# ---------------------------------------------------------------- non-negative concentrations (docs/maths.md)
def test_projected_gauss_newton_solves_a_box_constrained_least_squares_problem_exactly():
    # 0.5 |A u - b|^2 on [0, 1]^n, a smoothing prior and data outside [0, 1]: the bounded Gauss-Newton solve
    # must land on the constrained minimiser (scipy's lsq_linear, an active-set QP solver), with its
    # active set at the bounds, and the unbounded solve (bounds=None) must leave the box
    import scipy.optimize
    from jax.flatten_util import ravel_pytree

    from bodil import Grid, Params, PDEPrior, Posterior
    from bodil.likelihood import Gaussian
    from bodil.optimize import Objective, map_estimate

    n = 40
    grid = Grid(shape=(n,), lower=0.0, upper=1.0, names=("x",))
    xs = np.asarray(grid.coordinates(0))
    y = 1.6 * np.sin(2 * np.pi * xs) + 0.3  # from -1.3 to 1.9
    prior = PDEPrior(lambda u, th, g: (u[2:] - 2 * u[1:-1] + u[:-2]) * n, grid, beta=1e-3, reduction="sum")
    post = Posterior(prior, Gaussian(None, y, sigma=0.1), Params())
    u0 = jnp.full(n, 0.5)
    obj = Objective(post, u0, {})
    jac = np.asarray(jax.jacfwd(lambda x: ravel_pytree(obj.residual(x))[0])(obj.x0))
    r0 = np.asarray(ravel_pytree(obj.residual(obj.x0))[0])
    exact = scipy.optimize.lsq_linear(jac, jac @ np.asarray(obj.x0) - r0, bounds=(0.0, 1.0), tol=1e-14,
                                      lsmr_tol="auto").x
    fit = map_estimate(post, u0, {}, bounds=(0.0, 1.0), gtol=1e-9, max_iter=50)
    u = np.asarray(fit.u)
    assert fit.report.converged and u.min() >= 0.0 and u.max() <= 1.0
    assert np.max(np.abs(u - exact)) < 1e-7
    assert np.sum(u == 0.0) >= 5 and np.sum(u == 1.0) >= 5  # both bounds active
    free = np.asarray(map_estimate(post, u0, {}, bounds=None, gtol=1e-9).u)
    assert free.min() < -0.1 and free.max() > 1.1


def _odil_fields(model, bounds, theta_map, joint=True, shifts=(1.5,)):
    """The joint MAP field (``joint``) and inner (field-only) solves at origins shifted by ``shifts`` mm."""
    from bodil.inference import ModeApproximation
    from bodil.optimize import map_estimate

    names = model.settings["infer"]
    theta0 = {k: jnp.asarray(theta_map[k]) for k in names}
    start = model.forward(theta0)
    fields = []
    if joint:
        fit = map_estimate(model.posterior, start, theta0, strategy="joint", max_iter=4, throw=False,
                           cg_maxiter=100, bounds=bounds)
        start = fit.u
        fields.append(fit.u)
    inner = model.with_fixed(TRUTH, infer=ORIGIN)
    mode = ModeApproximation(inner.posterior, (start, {c: jnp.asarray(TRUTH[c]) for c in ORIGIN}), max_iter=4,
                             ftol=1e-6, damping=10.0, adaptive_damping=True, on_failure="lower-bound",
                             initial=lambda th: inner.forward(th), bounds=bounds, cg_maxiter=100)
    for shift in shifts:
        fields.append(mode.solve({c: jnp.asarray(TRUTH[c] + shift) for c in ORIGIN})[0])
    return [np.asarray(u) for u in fields]


@pytest.mark.parametrize("likelihood", ["sigmoid", "interval"])
def test_odil_fields_of_the_tumour_posterior_stay_in_0_1(likelihood):
    # the three-class sigmoid keeps rewarding a lower u in healthy voxels and the hinge penalises u < 0 only
    # softly: unbounded, the MAP and the inner solves go below zero. The tumour posterior is restricted to
    # 0 <= u <= 1 (TumorPosterior.field_bounds, read by Gauss-Newton's default bounds="auto"). The joint MAP
    # is checked with the sigmoid (the likelihood that drives u lowest), inner solves with both.
    model, _ = synthetic(n=8, nt=5, infer=("Dw", "rho", "x0", "y0", "z0"), likelihood=likelihood)
    assert model.posterior.field_bounds == (0.0, 1.0)
    assert model.with_fixed(TRUTH).posterior.field_bounds == (0.0, 1.0)
    for u in _odil_fields(model, "auto", TRUTH, joint=likelihood == "sigmoid"):
        assert u.min() >= -1e-10 and u.max() <= 1.0 + 1e-10
    if likelihood == "sigmoid":  # what the bounds prevent (one unbounded inner solve suffices to show it)
        assert min(u.min() for u in _odil_fields(model, None, TRUTH, joint=False, shifts=(1.5,))) < -1e-3


def test_inner_solve_at_the_bound_is_a_constrained_minimum():
    # KKT conditions of min f over 0 <= u <= 1 at a converged bounded inner solve: zero gradient at the free
    # values, a gradient pushing outwards (g >= 0 at u = 0) at the active ones
    from bodil.inference import ModeApproximation

    model, _ = synthetic(n=8, nt=5, infer=ORIGIN, fixed=TRUTH, likelihood="sigmoid")
    theta = {c: jnp.asarray(TRUTH[c]) for c in ORIGIN}
    mode = ModeApproximation(model.posterior, (model.forward(theta), theta), max_iter=60, ftol=1e-13, gtol=1e-7,
                             damping=10.0, adaptive_damping=True)
    u, ev = mode.solve(theta)
    assert ev.converged
    x = mode.objective.x0.at[: mode.n_field].set(jnp.ravel(u))
    g = np.asarray(mode.solver.gradient(x))[: mode.n_field]
    u = np.ravel(np.asarray(u))
    at_zero, inside = u <= 0.0, (u > 0.0) & (u < 1.0)
    assert at_zero.sum() > 0.1 * u.size  # the healthy region sits at the bound
    scale = np.max(np.abs(g))
    assert np.all(g[at_zero] >= -1e-6 * scale)
    assert np.max(np.abs(g[inside])) <= 1e-6 * scale


def test_settings_refuse_a_free_seed_mass_with_the_surrogate():
    from bodil.tumor import CTVSettings

    assert CTVSettings(map_parameters=("Dw", "rho", "M", *ORIGIN)).map_parameters[2] == "M"
    for where in ("inner", "initializer"):
        with pytest.raises(ValueError, match="seed's mass M"):
            CTVSettings(map_parameters=("Dw", "rho", "M", *ORIGIN), **{where: "surrogate"})


def test_default_parameters_sample_the_ratio_except_with_the_surrogate():
    """``None`` resolves to the MAP fitting ``Dw``, ``rho``, ``Dw / Dg`` and the origin and BASIS sampling the
    origin and the ratio; without ``ratio`` where the surrogate (trained at ``Dw / Dg = 10``) is used, and the
    ratio is sampled only where the MAP fits it. A ratio with the surrogate is refused."""
    from bodil.tumor import CTVSettings

    s = CTVSettings()
    assert s.map_parameters == ("Dw", "rho", "ratio", *ORIGIN) and s.posterior_parameters == (*ORIGIN, "ratio")
    for where in ("inner", "initializer"):
        s = CTVSettings(**{where: "surrogate"})
        assert s.map_parameters == ("Dw", "rho", *ORIGIN) and s.posterior_parameters == ORIGIN
        with pytest.raises(ValueError, match="trained at Dw / Dg = 10"):
            CTVSettings(map_parameters=("Dw", "rho", "ratio", *ORIGIN), **{where: "surrogate"})
    assert CTVSettings(map_parameters=("Dw", "rho", *ORIGIN)).posterior_parameters == ORIGIN
    assert CTVSettings(posterior_parameters=ORIGIN).map_parameters == ("Dw", "rho", "ratio", *ORIGIN)


def test_max_spacing_gives_a_large_tumour_box_more_points():
    """``CTVSettings.max_spacing_mm``: a box whose ``side / grid`` exceeds it gets ``ceil(side / max)`` points
    per axis (never fewer than ``grid``); without it every box has ``grid`` points."""
    from bodil.io import InputError
    from bodil.tumor import CTVSettings

    s = CTVSettings(max_spacing_mm=3.0)
    assert [s.box_points(side) for side in (60.0, 72.0, 72.3, 120.0)] == [24, 24, 25, 40]
    assert all(side / s.box_points(side) <= 3.0 for side in np.linspace(10.0, 300.0, 97))
    assert CTVSettings().box_points(120.0) == 24
    with pytest.raises(InputError, match="max_spacing_mm"):
        CTVSettings(max_spacing_mm=-1.0)
