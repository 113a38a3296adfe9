"""An independent reference for the oscillator of ``bodil.cases.oscillator`` (Amoudruz et al., B-ODIL, sec. 3.1).

For a fixed ``omega^2`` the log posterior is quadratic in the field ``u = (x_0..x_N, v_0..v_N)``:

    -log p(u, omega^2 | D) = (beta / N) |A u|^2 + beta_IC (x_0^2 + v_0^2) + |C x - y|^2 / (2 sigma^2)
                             + (n_D / 2) log(2 pi sigma^2) - log p(omega^2),

with ``A`` the midpoint rows of eq. 15 (``N`` for ``x``, ``N`` for ``v``; ``L_PDE`` is their mean square, so
the weight per row is ``beta / N``), ``C`` linear interpolation at the measurement times, and
``beta_IC = 1 / (2 s_IC^2)`` when the case has an initial-condition prior of width ``s_IC`` (else 0). The
integral over ``u`` is then a Gaussian integral, written here with dense numpy matrices built from the
equations, not from bodil's residuals, Hessians or solvers:

    log int exp(-1/2 u^T Q u + b^T u - c) du = -c + 1/2 b^T Q^{-1} b + (d / 2) log(2 pi) - 1/2 log det Q.

``log_marginal`` is that integral (the exact ``log p(omega^2 | D)`` up to the evidence); ``log_prior_mass``
is the same integral without the data, ``log Z(omega^2)`` of the field prior.
"""

from __future__ import annotations

import functools

import numpy as np
from threadpoolctl import threadpool_limits


def _one_thread(method):
    """Run on one BLAS thread: these matrices are 130 x 130, and with the test workers already using every
    core, OpenBLAS's threads make each call 15 times slower. The previous limits are restored on return."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return method(*args, **kwargs)
    return wrapper


class OscillatorReference:
    def __init__(self, problem, ic_sigma: float | None = None):
        s = problem.settings
        self.n, self.beta, self.sigma = s["n"], s["beta"], problem.data["sigma"]
        self.t = np.linspace(0.0, s["t_final"], self.n + 1)
        self.dt = self.t[1] - self.t[0]
        self.y = np.asarray(problem.data["y"], float)
        t_data = np.asarray(problem.data["t"], float)
        n1 = self.n + 1
        self.C = np.zeros((len(t_data), 2 * n1))  # x is the first half of u
        for j, tj in enumerate(t_data):
            k = min(int(tj // self.dt), self.n - 1)
            a = (tj - self.t[k]) / self.dt
            self.C[j, k], self.C[j, k + 1] = 1.0 - a, a
        self.ic = np.zeros(2 * n1)
        if ic_sigma is not None:
            self.ic[0] = self.ic[n1] = 1.0 / ic_sigma**2  # curvature of (x_0^2 + v_0^2) / (2 s^2)

    def pde_rows(self, omega2: float) -> np.ndarray:
        """``A``: row i is ``(x_{i+1} - x_i)/dt - (v_{i+1} + v_i)/2``, row N + i is
        ``(v_{i+1} - v_i)/dt + omega^2 (x_{i+1} + x_i)/2``."""
        n, n1, dt = self.n, self.n + 1, self.dt
        A = np.zeros((2 * n, 2 * n1))
        i = np.arange(n)
        A[i, i], A[i, i + 1], A[i, n1 + i], A[i, n1 + i + 1] = -1 / dt, 1 / dt, -0.5, -0.5
        A[n + i, n1 + i], A[n + i, n1 + i + 1], A[n + i, i], A[n + i, i + 1] = -1 / dt, 1 / dt, 0.5 * omega2, 0.5 * omega2
        return A

    def prior_precision(self, omega2: float) -> np.ndarray:
        A = self.pde_rows(omega2)
        return 2.0 * self.beta / self.n * A.T @ A + np.diag(self.ic)

    @staticmethod
    def _gaussian_integral(Q, b, c) -> float:
        chol = np.linalg.cholesky(Q)
        z = np.linalg.solve(chol, b)
        return float(-c + 0.5 * z @ z + 0.5 * len(b) * np.log(2 * np.pi) - np.sum(np.log(np.diag(chol))))

    @_one_thread
    def log_marginal(self, omega2: float) -> float:
        """``log int p(D | u) exp(-beta L_PDE - beta_IC L_IC) du`` at ``omega^2`` (no parameter prior)."""
        s2 = self.sigma**2
        Q = self.prior_precision(omega2) + self.C.T @ self.C / s2
        c = self.y @ self.y / (2 * s2) + 0.5 * len(self.y) * np.log(2 * np.pi * s2)
        return self._gaussian_integral(Q, self.C.T @ self.y / s2, c)

    @_one_thread
    def log_prior_mass(self, omega2: float) -> float:
        """``log Z(omega^2) = log int exp(-beta L_PDE - beta_IC L_IC) du`` (finite only with an IC prior)."""
        Q = self.prior_precision(omega2)
        return self._gaussian_integral(Q, np.zeros(Q.shape[0]), 0.0)

    @_one_thread
    def log_det_field_hessian(self, omega2: float) -> float:
        """``log det H(omega^2)`` of ``-log p`` in ``u`` (the term the mode approximation drops)."""
        Q = self.prior_precision(omega2) + self.C.T @ self.C / self.sigma**2
        return float(np.linalg.slogdet(Q)[1])
