"""The Crank-Nicolson march (``bodil.forward.crank_nicolson``) against closed forms of the scheme.

* Pure diffusion on a periodic line: a discrete Fourier mode ``cos(2 pi k x)`` is an eigenvector of the
  three-point Laplacian with eigenvalue ``-lambda = -(4 D / h^2) sin^2(pi k h)``, so each Crank-Nicolson step
  multiplies it by ``(1 - dt lambda / 2) / (1 + dt lambda / 2)``.
* Pure reaction (one point, no neighbours): each step solves the quadratic
  ``(rho dt / 2) y^2 + (1 - rho dt / 2) y - c = 0``, ``c = u + (rho dt / 2) u (1 - u)``, whose positive root is the
  next value.
* On a 2-D field with diffusion, reaction, a tissue mask and a source, the ODIL residual of the march is zero.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from bodil import Grid, residuals
from bodil.forward.crank_nicolson import crank_nicolson_march


def test_fourier_mode_decays_by_the_crank_nicolson_factor():
    n, nt, d, k = 32, 9, 0.3, 3
    grid = Grid(shape=(nt, n), lower=0.0, upper=(2.0, 1.0), names=("t", "x"), layout=("node", "periodic"))
    h, dt = grid.spacing[1], grid.spacing[0]
    x = (np.arange(n) + 0.5) * h
    u0 = jnp.asarray(np.cos(2 * np.pi * k * x))
    u = crank_nicolson_march(residuals.reaction_diffusion(d, 0.0), u0, {}, grid)
    lam = 4.0 * d / h**2 * np.sin(np.pi * k * h) ** 2
    factor = (1.0 - dt * lam / 2.0) / (1.0 + dt * lam / 2.0)
    expected = np.asarray(u0)[None] * factor ** np.arange(nt)[:, None]
    np.testing.assert_allclose(np.asarray(u), expected, atol=1e-10)


@pytest.mark.parametrize("rho_dt", [0.5, 1.5])
def test_logistic_step_is_the_positive_root_of_the_quadratic(rho_dt):
    nt, rho = 6, 0.2
    grid = Grid(shape=(nt, 1), lower=0.0, upper=((nt - 1) * rho_dt / rho, 1.0), names=("t", "x"),
                layout=("node", "cell"))
    u = np.asarray(crank_nicolson_march(residuals.fisher_kpp(0.0, rho), jnp.asarray([0.05]), {}, grid))[:, 0]
    k, expected = rho_dt / 2.0, [0.05]
    for _ in range(nt - 1):
        c = expected[-1] + k * expected[-1] * (1.0 - expected[-1])
        expected.append((-(1.0 - k) + np.sqrt((1.0 - k) ** 2 + 4.0 * k * c)) / (2.0 * k))
    np.testing.assert_allclose(u, expected, rtol=1e-10)


def test_residual_of_the_march_is_zero_with_tissue_and_source():
    grid = Grid(shape=(7, 16, 12), lower=0.0, upper=(3.0, 1.0, 0.75), names=("t", "x", "y"),
                layout=("node", "cell", "cell"))
    rng = np.random.default_rng(0)
    tissue = jnp.asarray(np.where(rng.random((16, 12)) < 0.15, 0.0, 1.0))
    source = jnp.asarray(0.1 * rng.random(grid.shape))
    res = residuals.reaction_diffusion(lambda th, g: th["D"] * (1.0 + tissue), "rho", tissue=tissue,
                                       source=source)
    theta = {"D": 0.02, "rho": 0.8}
    u0 = jnp.asarray(0.5 * rng.random((16, 12)))
    u = crank_nicolson_march(res, u0, theta, grid)
    r = res(u, theta, grid)["pde"]
    assert float(jnp.max(jnp.abs(r))) < 1e-9 * float(jnp.max(jnp.abs(u / grid.spacing[0])))
    np.testing.assert_array_equal(np.asarray(u[0]), np.asarray(u0))


def test_bounds_clip_the_march_and_bad_input_is_refused():
    grid = Grid(shape=(5, 1), lower=0.0, upper=(40.0, 1.0), names=("t", "x"), layout=("node", "cell"))
    u = crank_nicolson_march(residuals.fisher_kpp(0.0, 1.0), jnp.asarray([0.5]), {}, grid, bounds=(0.0, 1.0))
    assert float(u.min()) >= 0.0 and float(u.max()) <= 1.0  # rho dt = 10: unclipped CN overshoots 1
    with pytest.raises(ValueError, match="space shape"):
        crank_nicolson_march(residuals.fisher_kpp(0.0, 1.0), jnp.zeros(3), {}, grid)
    with pytest.raises(ValueError, match="reaction-diffusion residual"):
        crank_nicolson_march(lambda u, th, g: {"pde": u}, jnp.zeros(1), {}, grid)
