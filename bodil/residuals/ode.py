"""ODE residuals on a time grid by the implicit midpoint (trapezoidal) rule, Amoudruz et al. 2025, eq. 15.

For ``du/dt = f(u, theta)`` on nodes ``t_0 .. t_N`` the residual at interval ``i`` is

    r_i = (u_{i+1} - u_i) / dt - (f(u_{i+1}) + f(u_i)) / 2,

which is second-order accurate in ``dt``. For the harmonic oscillator ``x' = v, v' = -omega^2 x`` this is
exactly Amoudruz et al. 2025, eq. 15.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from ._coefficients import Coefficient, resolve


def midpoint_ode(rhs: Callable, *, time_axis: str | int = 0) -> Callable:
    """Residual function of ``du/dt = rhs(u, theta, t)`` by the midpoint rule.

    Args:
        rhs: ``rhs(u, theta, t) -> du/dt`` with ``u`` a pytree of arrays whose leading axis is time and ``t``
            the node times (broadcast over any further axes); must act pointwise in time.
        time_axis: name or index of the grid's time axis (node layout).

    Returns:
        ``residual(u, theta, grid) -> dict`` with one residual array per leaf name of ``u``
        (each of length ``N`` along time).
    """

    def residual(u, theta, grid):
        axis = grid.axis(time_axis)
        if axis != 0:
            raise ValueError("midpoint_ode: time must be the first axis of the grid.")
        dt = grid.spacing[axis]
        t = jnp.asarray(grid.coordinates(axis))
        f = rhs(u, theta, t)
        res = jax.tree.map(lambda a, fa: (a[1:] - a[:-1]) / dt - 0.5 * (fa[1:] + fa[:-1]), u, f)
        return res if isinstance(res, Mapping) else {"ode": res}

    return residual


def harmonic_oscillator(omega2: Coefficient = "omega2", *, time_axis: str | int = 0) -> Callable:
    """Harmonic oscillator ``x' = v, v' = -omega^2 x`` (Amoudruz et al. 2025, eq. 13-15).

    The field is ``u = {"x": positions, "v": velocities}`` on the time nodes; ``omega2`` (``k/m``) is a
    parameter name (default ``"omega2"``), a number or a function ``(theta, grid) -> value``.
    """

    def rhs(u, theta, t):
        w2 = resolve(omega2, theta, None)
        return {"x": u["v"], "v": -w2 * u["x"]}

    return midpoint_ode(rhs, time_axis=time_axis)
