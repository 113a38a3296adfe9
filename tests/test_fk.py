"""Fisher-Kolmogorov forward solver (bodil.forward.fk) against closed forms and invariants."""

import numpy as np
import pytest

from bodil.forward import fk_initial_condition, solve_fk


def _gaussian_diffusion_error(n, length=40.0, s0=3.0, d=1.0, t=4.0):
    """Max error of u_t = D lap u from exp(-r^2 / (2 s0^2)) against the exact Gaussian of variance s0^2 + 2 D t."""
    h = length / n
    x = (np.arange(n) + 0.5) * h - length / 2
    r2 = x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2
    u0 = np.exp(-r2 / (2 * s0**2))
    one = np.ones_like(u0)
    u = np.asarray(solve_fk(u0, one, 0 * one, h, dw=d, dg=0.0, rho=0.0, t_final=t)[-1])
    var = s0**2 + 2 * d * t
    exact = (s0**2 / var) ** 1.5 * np.exp(-r2 / (2 * var))
    return np.abs(u - exact).max()


def test_pure_diffusion_matches_the_spreading_gaussian_and_converges():
    # box half-width 20 mm = 4.9 final standard deviations: wall effects ~ exp(-12) are far below the errors
    errors = [_gaussian_diffusion_error(n) for n in (20, 40, 80)]
    assert errors[-1] < 1e-3  # peak is (9 / 17)^1.5 = 0.39
    # second order in h (dt ~ h^2 from the CFL step): halving h divides the error by about 4
    assert errors[0] / errors[1] > 2.8 and errors[1] / errors[2] > 3.4


def test_mass_is_conserved_without_reaction_and_with_no_flux_walls():
    rng = np.random.default_rng(0)
    shape = (10, 9, 8)
    wm = rng.uniform(0, 1, shape)
    gm = (1 - wm) * rng.uniform(0, 1, shape)
    wm[:3, :, :4] = gm[:3, :, :4] = 0.0  # a CSF pocket: internal no-flux walls
    u0 = rng.uniform(0, 1, shape)
    u = np.asarray(solve_fk(u0, wm, gm, (1.0, 1.5, 2.0), dw=0.8, dg=0.1, rho=0.0, t_final=20.0,
                            times=[0.0, 5.0, 20.0]))
    np.testing.assert_array_equal(u[0], u0)
    np.testing.assert_allclose(u.sum(axis=(1, 2, 3)), u0.sum(), rtol=1e-13)
    assert np.abs(u[-1] - u0).max() > 0.1  # it did move


def test_no_flux_into_csf_while_the_tumour_grows_next_to_it():
    shape = (16, 12, 12)
    wm = np.ones(shape)
    wm[10:] = 0.05  # below the 0.1 tissue threshold: CSF
    gm = np.zeros(shape)
    u0 = np.array(fk_initial_condition(shape, 1.0, (7.0, 6.0, 6.0)))
    u0[10:] = 0.0  # tumour cells only in tissue
    assert u0[9].max() > 0.1
    u = np.asarray(solve_fk(u0, wm, gm, 1.0, dw=0.5, dg=0.0, rho=0.1, t_final=30.0)[-1])
    assert u[9].max() > 0.5  # the tumour reached the tissue layer touching the CSF
    assert np.all(u[10:] == 0.0)  # exactly nothing crossed


def test_logistic_growth_without_diffusion_matches_the_closed_form():
    rho, t = 0.2, np.array([0.0, 5.0, 10.0, 25.0])
    u0 = np.linspace(0.01, 0.9, 24).reshape(2, 3, 4)
    one = np.ones_like(u0)
    exact = u0 * np.exp(rho * t[:, None, None, None]) / (1 - u0 + u0 * np.exp(rho * t[:, None, None, None]))
    errs = []
    for max_rho_dt in (0.04, 0.01):
        u = np.asarray(solve_fk(u0, one, one * 0, 1.0, dw=0.0, dg=0.0, rho=rho, t_final=t[-1], times=t,
                                max_rho_dt=max_rho_dt))
        errs.append(np.abs(u - exact).max())
    # Euler's global error is about (rho dt / 2) rho t max u (1 - u) = 0.02 * 5 * 0.25 at t = 25
    assert errs[0] < 0.025
    # forward Euler is first order: a 4 times smaller step gives a 4 times smaller error
    assert 3.5 < errs[0] / errs[1] < 4.5
    # diffusion does nothing to a uniform state: same answer with D > 0
    flat = np.full((4, 4, 4), 0.1)
    u = np.asarray(solve_fk(flat, np.ones_like(flat), 0 * flat, 1.0, dw=2.0, dg=0.0, rho=rho, t_final=10.0,
                            max_rho_dt=1e-3)[-1])
    e = 0.1 * np.exp(2.0) / (0.9 + 0.1 * np.exp(2.0))
    np.testing.assert_allclose(u, e, rtol=2e-3)


def test_axes_are_treated_alike_under_transpose_and_flip():
    rng = np.random.default_rng(1)
    shape, spacing = (7, 8, 9), (1.0, 1.25, 1.5)
    wm = rng.uniform(0, 1, shape)
    gm = (1 - wm) * rng.uniform(0, 1, shape)
    wm[0, :4, 2:5] = gm[0, :4, 2:5] = 0.0
    u0 = np.asarray(fk_initial_condition(shape, spacing, (4.0, 5.0, 6.0), mass=80.0, dt2=2.0))
    kw = dict(dw=0.6, dg=0.06, rho=0.1, t_final=12.0)
    ref = np.asarray(solve_fk(u0, wm, gm, spacing, **kw)[-1])
    for perm in [(2, 0, 1), (1, 2, 0), (0, 2, 1)]:
        t = lambda a: np.transpose(a, perm)  # noqa: E731
        got = np.asarray(solve_fk(t(u0), t(wm), t(gm), tuple(spacing[p] for p in perm), **kw)[-1])
        np.testing.assert_allclose(got, t(ref), rtol=1e-12, atol=1e-14)
    for axis in range(3):
        f = lambda a: np.flip(a, axis)  # noqa: E731
        got = np.asarray(solve_fk(f(u0), f(wm), f(gm), spacing, **kw)[-1])
        np.testing.assert_allclose(got, f(ref), rtol=1e-12, atol=1e-14)


def test_initial_condition_is_gliodil_eq_27_28():
    shape, h, x0 = (20, 22, 24), (2.0, 1.5, 1.0), np.array([19.0, 16.0, 12.5])
    u0 = np.asarray(fk_initial_condition(shape, h, x0))
    x = [(np.arange(n) + 0.5) * hk for n, hk in zip(shape, h)]
    r2 = (x[0][:, None, None] - x0[0]) ** 2 + (x[1][None, :, None] - x0[1]) ** 2 + (x[2][None, None] - x0[2]) ** 2
    g = 1500.0 / (4 * np.pi * 15.0) ** 1.5 * np.exp(-r2 / 60.0)
    np.testing.assert_allclose(u0, np.where(g <= 0.1, 0.0, np.minimum(g, 1.0)), rtol=1e-6, atol=1e-7)
    assert u0.max() == pytest.approx(1500.0 / (4 * np.pi * 15.0) ** 1.5, rel=0.02)


def test_bad_inputs_are_refused_with_clear_messages():
    u0 = np.zeros((4, 4, 4))
    one = np.ones_like(u0)
    with pytest.raises(ValueError, match="wm has shape"):
        solve_fk(u0, np.ones((4, 4, 5)), one, 1.0, dw=1, dg=0.1, rho=0.1, t_final=1)
    with pytest.raises(ValueError, match="spacing_mm must be positive"):
        solve_fk(u0, one, one * 0, (1.0, 0.0, 1.0), dw=1, dg=0.1, rho=0.1, t_final=1)
    with pytest.raises(ValueError, match="dw must be a non-negative"):
        solve_fk(u0, one, one * 0, 1.0, dw=-1, dg=0.1, rho=0.1, t_final=1)
    with pytest.raises(ValueError, match="u0 must lie in"):
        solve_fk(u0 + 2, one, one * 0, 1.0, dw=1, dg=0.1, rho=0.1, t_final=1)
    with pytest.raises(ValueError, match="times must be increasing"):
        solve_fk(u0, one, one * 0, 1.0, dw=1, dg=0.1, rho=0.1, t_final=1, times=[0.5, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        solve_fk(u0, one * np.nan, one * 0, 1.0, dw=1, dg=0.1, rho=0.1, t_final=1)


@pytest.mark.parametrize("shape", [(9, 7, 5), (6, 1, 4), (3, 8, 6, 5)])  # a one-point axis; a leading batch axis
def test_the_sliced_step_is_the_flux_difference_step_bit_for_bit(shape):
    """``fk._euler`` (neighbours by slicing, faces on both sides of each point) computes the same numbers as
    ``v + dt (stencil.diffusion_operator(v) + rho v (1 - v))`` from the interior faces, walls and non-tissue
    faces included."""
    import jax.numpy as jnp

    from bodil import stencil
    from bodil.forward.fk import _euler, _faces

    rng = np.random.default_rng(5)
    space = shape[-3:]
    wm = rng.random(space)
    gm = rng.random(space) * (1 - wm)
    wm[0] = gm[0] = 0.02  # a non-tissue slab: its faces carry no flux
    sides, _ = _faces(jnp.asarray(wm), jnp.asarray(gm), 0.7, 0.07, 0.1, (1.5, 2.0, 2.5))
    faces = stencil.face_diffusivities(0.7 * wm + 0.07 * gm, space, (1.5, 2.0, 2.5), (False,) * 3,
                                       (wm + gm) >= 0.1)
    v = jnp.asarray(rng.random(shape))
    want = v + 0.3 * (stencil.diffusion_operator(v, faces, (False,) * 3) + 0.05 * v * (1.0 - v))
    np.testing.assert_array_equal(np.asarray(_euler(v, sides, 0.05, 0.3)), np.asarray(want))
