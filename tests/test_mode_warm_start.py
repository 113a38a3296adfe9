"""Warm starts of the mode approximation: a user-supplied ``initial(theta)`` field chosen by its objective,
the forward-solve start of the reaction-diffusion case, and ``on_failure="lower-bound"``.

(The reaction-diffusion notebook runs ``initial=forward_field(problem)`` end to end; an inner RD solve here
would cost 20 s of compilation.)"""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import bodil
from bodil.cases import linear_gaussian, oscillator, reaction_diffusion_2d, reaction_diffusion_3d
from bodil.cases.reaction_diffusion import forward_field
from bodil.forward import solve_reaction_diffusion
from bodil.residuals import gaussian_profile


@pytest.mark.parametrize("build", [lambda: reaction_diffusion_2d(n=12, nt=9, sigma=0.05),
                                   lambda: reaction_diffusion_3d(n=6, nt=5)], ids=["2d", "3d"])
def test_forward_field_matches_the_reference_solver(build):
    pb = build()
    field = forward_field(pb)
    # At theta0 it is the problem's own starting field (made by bodil.forward.solve_reaction_diffusion).
    np.testing.assert_allclose(np.asarray(field(pb.theta0)), np.asarray(pb.u0), rtol=0, atol=1e-13)
    # Elsewhere: the reference solver from the bump at that theta, on the ODIL time nodes.
    grid = pb.grid
    space = grid.subgrid(grid.names[1:])
    names = tuple(pb.posterior.params.priors)
    theta = {k: 0.3 + 0.1 * i for i, k in enumerate(names)}
    ref = solve_reaction_diffusion(gaussian_profile(theta, grid, names, pb.settings["radius"]), space,
                                   pb.truth["diffusivity"], pb.settings["rho"], pb.settings["t_final"],
                                   times=grid.coordinates(0))
    np.testing.assert_allclose(np.asarray(field(theta)), np.asarray(ref), rtol=0, atol=1e-13)
    assert field(theta).shape == grid.shape


def test_forward_field_needs_a_reaction_diffusion_problem():
    with pytest.raises(ValueError, match="reaction_diffusion_2d"):
        forward_field(linear_gaussian())


def _objective(mode, u, theta):
    th = {k: jnp.asarray(v) for k, v in theta.items()}
    x = jnp.concatenate([ravel_pytree(u)[0], ravel_pytree(mode.posterior.params.unconstrain(th))[0]])
    return float(mode.objective.value(x))


def test_initial_field_is_used_when_its_objective_is_lower():
    pb = linear_gaussian()
    # cache_size=1: only (u0, theta0) is ever stored, so every solve starts from it or from initial(theta).
    mode = bodil.ModeApproximation(pb.posterior, (pb.u0, pb.theta0), eta_max=0.0, cache_size=1, preconditioner=None)
    far = {"s": 2.0}
    u_far, ev = mode.solve(far)  # the exact optimum at s = 2 (quadratic in u: one Newton step)
    v_plain = ev.log_density
    good, bad = (lambda th: u_far), (lambda th: jnp.full_like(u_far, 50.0))
    assert _objective(mode, good(far), far) < _objective(mode, pb.u0, far) < _objective(mode, bad(far), far)
    mode.initial = good
    v_good = mode.log_density(far)
    assert mode.records[-1].start == "initial" and mode.records[-1].iterations <= 1  # started at the optimum
    mode.initial = bad
    v_bad = mode.log_density(far)
    assert mode.records[-1].start == "cache"
    # The start changes the path, not the optimum (log p is quadratic and concave in u).
    assert v_good == pytest.approx(v_plain, abs=1e-9) and v_bad == pytest.approx(v_plain, abs=1e-9)
    assert [r.start for r in mode.records] == ["cache", "initial", "cache"]
    assert mode.summary()["from_initial"] == 1
    mode.initial = lambda th: jnp.zeros(3)
    with pytest.raises(ValueError, match="initial\\(theta\\) returned a field with 3 values"):
        mode.log_density({"s": 0.1})
    with pytest.raises(TypeError, match="initial must be a function"):
        bodil.ModeApproximation(pb.posterior, (pb.u0, pb.theta0), initial=np.zeros(3))


def test_lower_bound_keeps_the_value_reached():
    pb = oscillator(infer_omega=True, omega2_prior=(0.4, 1.8))
    mode = bodil.ModeApproximation(pb.posterior, (pb.u0, pb.theta0), max_iter=1, gtol=1e-14, ftol=1e-300,
                                   on_failure="lower-bound")
    theta = {"omega2": 0.6}
    reached = mode.log_density(theta)
    rec = mode.records[-1]
    assert not rec.converged and rec.iterations == 1 and math.isfinite(reached)
    s = mode.summary()
    assert s["unconverged"] == 1 and s["max_unconverged_log_density"] == reached
    # The kept solution warm-starts the next solve at the same theta (distance 0), which gets closer.
    again = mode.log_density(theta)
    assert mode.records[-1].warm_start_distance == 0 and again > reached
    # The converged value max_u log p(u, theta) bounds every value reached from above.
    x_start = mode.objective.x0.at[mode.n_field:].set(
        ravel_pytree(pb.posterior.params.unconstrain({"omega2": jnp.asarray(0.6)}))[0])
    _, rep = mode.solver.run(x_start, fix_theta=True, max_iter=50)
    assert rep.converged
    assert reached < again <= -rep.loss + 1e-9
    assert mode.log_density({"omega2": 2.0}) == -math.inf  # outside the prior: still -inf
    with pytest.raises(ValueError, match="on_failure must be one of"):
        bodil.ModeApproximation(pb.posterior, (pb.u0, pb.theta0), on_failure="ignore")
