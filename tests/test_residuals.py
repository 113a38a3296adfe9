"""Discrete operators: convergence order on exact and manufactured solutions, symmetry, conservation."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bodil import Grid, residuals, stencil
from bodil.cases.oscillator import exact_solution


def observed_order(errors, ratio=2.0):
    return np.log(errors[:-1] / errors[1:]) / np.log(ratio)


def test_oscillator_midpoint_rule_is_second_order():
    errs = []
    for n in (32, 64, 128, 256):
        g = Grid((n + 1,), 0.0, 10.0, ("t",))
        x, v = exact_solution(g.coordinates("t"), 0.5, 0.2, 1.3)
        r = residuals.harmonic_oscillator("omega2")({"x": jnp.asarray(x), "v": jnp.asarray(v)}, {"omega2": 1.69}, g)
        errs.append(max(float(jnp.max(jnp.abs(r["x"]))), float(jnp.max(jnp.abs(r["v"])))))
    order = observed_order(np.array(errs))
    assert np.all(np.abs(order - 2.0) < 0.05), order


def test_heat_equation_periodic_is_second_order_in_space_and_time():
    d, k = 0.1, 2 * np.pi
    errs = []
    for n in (16, 32, 64, 128):
        g = Grid((n + 1, n), 0.0, (1.0, 1.0), ("t", "x"), ("node", "periodic"))
        t, x = g.mesh()
        u = jnp.asarray(np.exp(-d * k**2 * t) * np.cos(k * x))
        errs.append(float(jnp.max(jnp.abs(residuals.heat_equation(d)(u, {}, g)["pde"]))))
    order = observed_order(np.array(errs))
    assert np.all(np.abs(order - 2.0) < 0.1), order


def _manufactured(ndim, layout):
    """Smooth u(t, x), D(x) with zero normal derivative on [0, 1] walls, and the source that makes u exact."""
    rho = 1.5
    base = 2 * np.pi if layout == "periodic" else np.pi  # periodic on [0, 1], or zero slope at the walls

    def u_fn(t, xs):
        return 0.5 + 0.3 * jnp.exp(-0.5 * t) * jnp.prod(jnp.stack([jnp.cos(base * x) for i, x in
                                                                     enumerate(xs)]), axis=0)

    def d_fn(xs):
        return 0.05 + 0.02 * jnp.prod(jnp.stack([jnp.cos(2 * np.pi * x) for x in xs]), axis=0)

    def source_point(t, xs):
        ut = jax.grad(u_fn, argnums=0)(t, xs)
        div = sum(jax.grad(lambda y, i=i: d_fn(xs.at[i].set(y)) *
                           jax.grad(lambda w: u_fn(t, xs.at[i].set(w)))(y))(xs[i]) for i in range(ndim))
        u = u_fn(t, xs)
        return ut - div - rho * u * (1 - u)

    return u_fn, d_fn, source_point, rho


@pytest.mark.parametrize("ndim, layout", [(1, "periodic"), (2, "cell"), (3, "cell"), (2, "periodic")])
def test_reaction_diffusion_manufactured_solution_second_order(ndim, layout):
    u_fn, d_fn, source_point, rho = _manufactured(ndim, layout)
    errs = []
    sizes = {1: (32, 64, 128), 2: (16, 32, 64), 3: (8, 16, 32)}[ndim]
    for n in sizes:
        g = Grid((n + 1,) + (n,) * ndim, 0.0, 1.0, ("t",) + tuple("xyz"[:ndim]), ("node",) + (layout,) * ndim)
        mesh = g.mesh()
        t = np.broadcast_to(mesh[0], g.shape).reshape(-1)
        xs = np.stack([np.broadcast_to(m, g.shape).reshape(-1) for m in mesh[1:]], axis=0)
        space_x = jnp.asarray(np.stack([np.broadcast_to(m[0], g.shape[1:]) for m in mesh[1:]]))

        @jax.jit  # one compilation per grid instead of one per operation
        def residual(t, xs, space_x, g=g):
            u = jax.vmap(u_fn, in_axes=(0, 1))(t, xs).reshape(g.shape)
            src = jax.vmap(source_point, in_axes=(0, 1))(t, xs).reshape(g.shape)
            return residuals.reaction_diffusion(d_fn(space_x), rho, source=src)(u, {}, g)["pde"]

        r = residual(jnp.asarray(t), jnp.asarray(xs), space_x)
        errs.append(float(jnp.max(jnp.abs(r))))
    order = observed_order(np.array(errs))
    assert order[-1] > 1.85, (errs, order)  # the coarsest 3-D grid (8^3) is not yet asymptotic


def _random_3d(shape, seed=0):
    rng = np.random.default_rng(seed)
    u = jnp.asarray(rng.uniform(size=shape))
    d = jnp.asarray(rng.uniform(0.01, 0.2, size=shape[1:]))
    tissue = jnp.asarray(rng.uniform(size=shape[1:]))
    return u, d, tissue


@pytest.mark.parametrize("layout", ["cell", "periodic"])
def test_3d_operator_is_symmetric_under_axis_permutation(layout):
    nx, ny, nz = 6, 7, 8
    lengths = (1.2, 1.4, 1.6)  # equal spacing 0.2 on every axis
    u, d, tissue = _random_3d((5, nx, ny, nz))
    names = ("x", "y", "z")
    base = Grid((5, nx, ny, nz), 0.0, (1.0, *lengths), ("t", *names), ("node",) + (layout,) * 3)

    def residual(u, d, tissue, g):  # compiled whole: eager mode compiles every operation for every shape
        return jax.jit(lambda u, d, tissue: residuals.fisher_kpp(d, 2.0, tissue=tissue)(u, {}, g)["pde"])(u, d, tissue)

    ref = residual(u, d, tissue, base)
    for perm in itertools.permutations(range(3)):
        p = (0,) + tuple(i + 1 for i in perm)
        g = Grid(tuple(base.shape[i] for i in p), 0.0, (1.0,) + tuple(lengths[i] for i in perm),
                 ("t",) + tuple(names[i] for i in perm), ("node",) + (layout,) * 3)
        r = residual(jnp.transpose(u, p), jnp.transpose(d, perm), jnp.transpose(tissue, perm), g)
        np.testing.assert_allclose(r, jnp.transpose(ref, p), rtol=1e-13, atol=1e-13)


def test_anisotropic_spacing_is_permuted_with_the_axes():
    u, d, _ = _random_3d((3, 4, 5, 6))
    g = Grid((3, 4, 5, 6), 0.0, (1.0, 0.4, 1.0, 1.8), ("t", "x", "y", "z"), ("node", "cell", "cell", "cell"))
    ref = residuals.fisher_kpp(d, 0.0)(u, {}, g)["pde"]
    gp = Grid((3, 6, 4, 5), 0.0, (1.0, 1.8, 0.4, 1.0), ("t", "z", "x", "y"), ("node", "cell", "cell", "cell"))
    r = residuals.fisher_kpp(jnp.transpose(d, (2, 0, 1)), 0.0)(jnp.transpose(u, (0, 3, 1, 2)), {}, gp)["pde"]
    np.testing.assert_allclose(r, jnp.transpose(ref, (0, 3, 1, 2)), rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("layout, with_tissue", [("cell", False), ("cell", True), ("periodic", False)])
def test_zero_reaction_conserves_mass(layout, with_tissue):
    u, d, tissue = _random_3d((6, 8, 8, 8), seed=1)
    g = Grid(u.shape, 0.0, (1.0, 1.0, 1.0, 1.0), ("t", "x", "y", "z"), ("node",) + (layout,) * 3)
    r = residuals.fisher_kpp(d, 0.0, tissue=tissue if with_tissue else None)(u, {}, g)["pde"]
    dt = g.spacing[0]
    mass = jnp.sum(u, axis=(1, 2, 3))
    # sum_x r^n = (M^{n+1} - M^n) / dt exactly: the diffusion part sums to zero (flux form, no-flux walls)
    np.testing.assert_allclose(jnp.sum(r, axis=(1, 2, 3)), jnp.diff(mass) / dt, rtol=1e-12, atol=1e-9)


def test_no_flux_into_non_tissue():
    g = Grid((2, 10), 0.0, (1.0, 1.0), ("t", "x"), ("node", "cell"))
    tissue = jnp.asarray([1.0] * 5 + [0.05] * 5)
    faces = stencil.face_diffusivities(1.0, (10,), g.spacing[1:], (False,), tissue >= 0.1)
    u = jnp.asarray(np.r_[np.linspace(1, 2, 5), np.zeros(5)])
    rate = stencil.diffusion_operator(u, faces, (False,))
    np.testing.assert_allclose(rate[5:], 0.0)  # nothing flows into the CSF side
    assert abs(float(jnp.sum(rate))) < 1e-12


def test_initial_conditions():
    g = Grid((3, 32, 32), 0.0, (1.0, 1.0, 1.0), ("t", "x", "y"), ("node", "periodic", "periodic"))
    theta = {"x0": 0.5, "y0": 0.25}
    prof = residuals.gaussian_profile(theta, g, ("x0", "y0"), 1 / 16)
    assert float(prof[16, 8]) == pytest.approx(1.0)
    assert float(prof[16, 9]) == pytest.approx(np.exp(-(1 / 32) ** 2 / (2 / 16**2)))
    u = jnp.zeros(g.shape).at[0].set(prof)
    np.testing.assert_allclose(residuals.gaussian_bump(("x0", "y0"), 1 / 16)(u, theta, g)["ic"], 0.0, atol=1e-15)

    g3 = Grid((2, 40, 40, 40), 0.0, (1.0, 40.0, 40.0, 40.0), ("t", "x", "y", "z"), ("node", "cell", "cell", "cell"))
    th = {"x0": 20.0, "y0": 20.0, "z0": 20.0}
    c = residuals.clipped_gaussian_profile(th, g3, ("x0", "y0", "z0"), mass=1500.0, dt2=15.0)
    _, x, y, z = g3.mesh()
    raw = 1500.0 / (4 * np.pi * 15.0) ** 1.5 * np.exp(-((x - 20) ** 2 + (y - 20) ** 2 + (z - 20) ** 2) / 60.0)[0]
    want = np.where(raw <= 0.1, 0.0, np.minimum(raw, 1.0))
    np.testing.assert_allclose(c, want, rtol=1e-12)
    assert float(jnp.max(c)) <= 1.0 and float(jnp.min(c[c > 0])) > 0.1
    big = residuals.clipped_gaussian_profile(th, g3, ("x0", "y0", "z0"), mass=1e5, dt2=15.0)
    assert float(jnp.max(big)) == 1.0
    # a seed scaled before the clip: the same support (cut where the reference is <= 0.1), s times the height
    for s in (0.01, 0.5, 3.0):
        scaled = residuals.clipped_gaussian_profile({**th, "s": s}, g3, ("x0", "y0", "z0"), 1500.0, 15.0, scale="s")
        np.testing.assert_allclose(scaled, np.where(raw <= 0.1, 0.0, np.minimum(s * raw, 1.0)), rtol=1e-12)


def test_missing_parameter_message():
    g = Grid((3, 4), 0.0, 1.0, ("t", "x"), ("node", "periodic"))
    with pytest.raises(KeyError, match="needs parameter 'D'"):
        residuals.heat_equation("D")(jnp.zeros(g.shape), {}, g)


@pytest.mark.parametrize("layout", ["periodic", "cell"])
def test_operator_diagonal_matches_the_dense_operator(layout):
    shape = (5, 4)
    d = jnp.asarray(np.random.default_rng(3).uniform(0.1, 1.0, size=shape))
    periodic = (layout == "periodic",) * 2
    faces = stencil.face_diffusivities(d, shape, (0.5, 0.25), periodic)
    dense = jax.jacfwd(lambda v: stencil.diffusion_operator(v.reshape(shape), faces, periodic).reshape(-1))(
        jnp.zeros(20))
    np.testing.assert_allclose(stencil.operator_diagonal(faces, periodic).reshape(-1), jnp.diag(dense), rtol=1e-12)
    np.testing.assert_allclose(dense, dense.T, atol=1e-12)  # flux form with averaged faces is symmetric
