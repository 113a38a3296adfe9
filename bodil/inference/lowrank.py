"""A Gaussian whose field precision is a prior plus a low-rank data update (hIPPYlib's low-rank posterior).

With the field precision ``H_uu = P + M`` (``P`` the prior's, ``M`` the data's), the generalised eigenpairs

    M v_i = lambda_i P v_i,   v_i^T P v_j = delta_ij,   lambda_1 >= ... >= lambda_k

give (Sherman-Morrison-Woodbury, exact when the ``k`` pairs cover the nonzero spectrum of ``P^{-1} M``)

    H_uu^{-1} ~ P^{-1} - V D V^T,   D = diag(lambda / (1 + lambda)),   V = [v_1 ... v_k]

(Villa, Petra & Ghattas 2021, hIPPYlib, sec. 4; Bui-Thanh et al. 2013). ``double_pass`` finds the pairs by the
randomised double-pass algorithm for generalised Hermitian eigenproblems (Saibaba, Lee & Kitanidis 2016,
alg. 6; hIPPYlib's ``doublePassG``). ``LowRankGaussian`` uses only its result and the prior's operators.

Parameters ``theta`` enter through the Schur complement ``S = H_tt - H_ut^T H_uu^{-1} H_ut``:
``Cov(theta) = S^{-1}``, ``Cov(u) = H_uu^{-1} + W^T S^{-1} W`` with ``W^T = H_uu^{-1} H_ut``.

The field's pointwise variance is hIPPYlib's split (``GaussianLRPosterior.pointwise_variance``)

    var(u_i) = diag(P^{-1})_i - diag(V D V^T)_i + diag(W^T S^{-1} W)_i,

the last two exact from ``V`` and ``W``, the first either exact (``n`` solves with ``P``) or estimated from
``K`` exact prior draws ``z = P^{-1} G^T xi`` (``P = G^T G``, ``xi ~ N(0, I)``) as ``mean(z^2)``, relative error
``sqrt(2 / K)`` per point. Both stream blocks of ``batch`` vectors and keep only the running diagonal, so memory
is ``O(n (k + batch))``, never ``O(n^2)`` or ``O(n K)``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class GeneralizedEigen(NamedTuple):
    """Leading generalised eigenpairs of ``A v = lambda B v``: ``eigenvalues`` (k,) in decreasing order and
    ``eigenvectors`` (k, n), the rows ``B``-orthonormal."""

    eigenvalues: jax.Array
    eigenvectors: jax.Array


def double_pass(apply_a: Callable, apply_b: Callable, apply_b_inv: Callable, omega: jax.Array, k: int,
                power_iterations: int = 1, batch: int | None = None) -> GeneralizedEigen:
    """The randomised double-pass algorithm for ``A v = lambda B v`` (Saibaba, Lee & Kitanidis 2016, alg. 6;
    Villa, Petra & Ghattas 2021, hIPPYlib's ``doublePassG``).

    ``Y = (B^{-1} A)^q Omega`` (``q = power_iterations``), ``B``-orthonormalised by Cholesky QR (twice, for
    stability); then the eigenpairs ``(d, s)`` of ``T = Y A Y^T`` give ``lambda = d`` and ``v = s^T Y``.

    Args:
        apply_a, apply_b, apply_b_inv: ``A``, ``B`` (symmetric, ``B`` positive definite) and ``B^{-1}``
            applied to the rows of an ``(m, n)`` array.
        omega: ``(m, n)`` random probes (rows), ``m >= k``; ``m - k`` is the oversampling.
        k: the number of eigenpairs returned.
        power_iterations: ``q >= 1``.
        batch: apply the operators to blocks of this many rows (``None``: all at once), so that besides
            ``Omega`` and ``Y`` only one block of ``A Y`` or ``B Y`` is held.

    Returns:
        ``GeneralizedEigen`` with the ``k`` largest eigenvalues. They are ``nan`` where ``B^{-1}`` failed
        (returned ``nan``), so callers check ``jnp.isfinite``.
    """
    m = omega.shape[0]
    if not 1 <= k <= m:
        raise ValueError(f"double_pass: k must be in [1, {m}] (the number of probes), got {k}.")
    step = m if batch is None else batch
    blocks = range(0, m, step)
    y = omega
    for _ in range(power_iterations):
        y = jnp.concatenate([apply_b_inv(apply_a(y[i:i + step])) for i in blocks])

    def gram(apply):  # y apply(y)^T, a block of columns at a time
        return jnp.concatenate([y @ apply(y[i:i + step]).T for i in blocks], axis=1)

    eye = jnp.eye(m, dtype=y.dtype)
    for _ in range(2):  # B-orthonormalise the rows by Cholesky QR, twice for stability
        g = gram(apply_b)
        g = 0.5 * (g + g.T) + 1e-14 * jnp.trace(g) / m * eye
        y = jax.scipy.linalg.solve_triangular(jnp.linalg.cholesky(g), y, lower=True)
    t = gram(apply_a)
    lam, vecs = jnp.linalg.eigh(0.5 * (t + t.T))
    order = jnp.argsort(lam)[::-1][:k]
    return GeneralizedEigen(lam[order], vecs[:, order].T @ y)


def deflated_trace(apply_a: Callable, apply_b: Callable, apply_b_inv: Callable, vectors: jax.Array,
                   omega: jax.Array) -> float:
    """Hutchinson estimate of the trace ``double_pass`` left out, ``tr(B^{-1} A (I - V^T V B))``, from the
    probe rows of ``omega`` (``V`` the ``B``-orthonormal rows of ``vectors``)."""
    deflated = omega - (apply_b(omega) @ vectors.T) @ vectors
    return float(jnp.mean(jnp.sum(omega * apply_b_inv(apply_a(deflated)), axis=1)))


def cholesky_factor(matrix, what: str):
    """The lower Cholesky factor of the symmetric part of ``matrix``; raises if it is not positive definite."""
    chol = jnp.linalg.cholesky(0.5 * (matrix + matrix.T))
    if not bool(jnp.all(jnp.isfinite(chol))):
        raise ValueError(f"laplace: the {what} is not positive definite at this point, so it is not a strict "
                         "maximum of the posterior; solve the MAP to convergence (bodil.map_estimate), or use "
                         "hessian='gauss-newton'.")
    return chol


class FieldPrior(NamedTuple):
    """The Gaussian ``N(0, P^{-1})`` on the field, by its operators on the rows of an ``(m, n)`` array:
    ``precision`` (``P``), ``solve`` (``P^{-1}``) and ``sample`` (one exact draw per key of a ``(m,)`` batch)."""

    precision: Callable
    solve: Callable
    sample: Callable


class PointwiseVariance(NamedTuple):
    """The field's pointwise variance (flat) and its parts: ``posterior = prior - correction``, with
    ``correction = diag(V D V^T) - diag(W^T S^{-1} W)`` exact and ``prior = diag(P^{-1})`` exact or estimated."""

    posterior: jax.Array
    prior: jax.Array
    correction: jax.Array


class LowRankGaussian:
    """``N(mean, H^{-1})`` over ``v = (u, theta)`` (flat) with ``H_uu^{-1} ~ P^{-1} - V D V^T`` (module doc).

    Args:
        mean: the flat mean, field first (``n``) then parameters (``p``).
        eig: ``GeneralizedEigen`` of ``M v = lambda P v`` on the field; negative eigenvalues (round-off of a
            positive semi-definite ``M``) count as 0.
        prior: the field's ``FieldPrior``.
        h_ut, h_tt: the parameters' rows of ``H``: ``(p, n)`` and ``(p, p)`` (``None`` without parameters).
        prior_variance: ``"exact"`` or the number ``K`` of prior draws that estimate ``diag(P^{-1})``.
        key: ``jax.random`` key of those draws.
        batch: vectors per streamed block of the prior variance and of the draws.

    Raises:
        ValueError: the Schur complement ``S`` is not positive definite.
    """

    def __init__(self, mean, eig: GeneralizedEigen, prior: FieldPrior, h_ut=None, h_tt=None, *,
                 prior_variance: str | int = "exact", key=None, batch: int = 16):
        if prior_variance != "exact" and key is None:
            raise ValueError("LowRankGaussian: a prior variance from draws needs a key; pass key=jax.random.key(0).")
        self.mean, self.prior, self.batch = mean, prior, batch
        self.eigenvalues = jnp.maximum(eig.eigenvalues, 0.0)
        self.V = eig.eigenvectors
        self.n_u = self.V.shape[1]
        self.p = mean.size - self.n_u
        self.prior_variance_option, self.key = prior_variance, key
        dtype = mean.dtype
        if self.p == 0:
            self.W = jnp.zeros((0, self.n_u), dtype)
            self.schur_chol = jnp.zeros((0, 0), dtype)
            self.log_det_schur = 0.0
        else:
            self.W = self.h_uu_inv(h_ut)  # (p, n_u) = (H_uu^{-1} H_ut)^T
            self.schur_chol = cholesky_factor(h_tt - h_ut @ self.W.T, "Schur complement of the parameters")
            self.log_det_schur = float(2.0 * jnp.sum(jnp.log(jnp.diag(self.schur_chol))))
        self._variance = None

    @property
    def shrinkage(self):
        """``D = lambda / (1 + lambda)``."""
        return self.eigenvalues / (1.0 + self.eigenvalues)

    @property
    def log_det_ratio(self) -> float:
        """``log det H - log det P = sum_i log(1 + lambda_i) + log det S``."""
        return float(jnp.sum(jnp.log1p(self.eigenvalues))) + self.log_det_schur

    @property
    def variance_method(self) -> str:
        opt = self.prior_variance_option
        return "exact" if opt == "exact" else f"sampled ({int(opt)} prior samples)"

    def h_uu_inv(self, vs):
        """``H_uu^{-1} v ~ P^{-1} v - V D V^T v`` for the rows of ``vs``."""
        return self.prior.solve(vs) - ((vs @ self.V.T) * self.shrinkage) @ self.V

    def _schur_inv_factor(self):
        """``L_S^{-T}``, so that ``Cov(theta) = L_S^{-T} L_S^{-1}``."""
        eye = jnp.eye(self.p, dtype=self.W.dtype)
        return jax.scipy.linalg.solve_triangular(self.schur_chol.T, eye, lower=False)

    def theta_covariance(self):
        f = self._schur_inv_factor()
        return f @ f.T

    def prior_variance(self):
        """``diag(P^{-1})``: exact, or the mean of ``z^2`` over ``K`` prior draws, streamed in blocks."""
        dtype = self.mean.dtype
        if self.prior_variance_option == "exact":
            block = 256
            diag = [jnp.diagonal(self.prior.solve(jnp.eye(self.n_u, dtype=dtype)[i:i + block]), offset=i)
                    for i in range(0, self.n_u, block)]
            return jnp.concatenate(diag)
        count = int(self.prior_variance_option)
        keys = jax.random.split(self.key, count)
        total = jnp.zeros(self.n_u, dtype)
        for i in range(0, count, self.batch):
            total = total + jnp.sum(self.prior.sample(keys[i:i + self.batch]) ** 2, axis=0)
        return total / count

    def pointwise_variance(self) -> PointwiseVariance:
        """The field's pointwise variance split into the prior's and the exact correction (module doc)."""
        correction = self.shrinkage @ self.V**2
        if self.p:
            z = self._schur_inv_factor().T @ self.W  # rows of L_S^{-1} W^T
            correction = correction - jnp.sum(z**2, axis=0)
        prior = self.prior_variance()
        return PointwiseVariance(prior - correction, prior, correction)

    def variance(self):
        """The pointwise variance of the flat vector (field, then parameters)."""
        if self._variance is None:
            var_t = jnp.diag(self.theta_covariance()) if self.p else jnp.zeros(0, self.mean.dtype)
            self._variance = jnp.concatenate([self.pointwise_variance().posterior, var_t])
        return self._variance

    def covariance(self, max_field: int = 20000):
        """The full covariance (``n <= max_field`` only: it is ``(n + p)^2`` numbers)."""
        if self.n_u > max_field:
            raise ValueError(f"Laplace.cov: the low-rank path does not form the {self.n_u}x{self.n_u} covariance; "
                             "use std() and sample().")
        c_uu = self.h_uu_inv(jnp.eye(self.n_u, dtype=self.mean.dtype))
        if not self.p:
            return 0.5 * (c_uu + c_uu.T)
        c_tt = self.theta_covariance()
        c_ut = -self.W.T @ c_tt
        c_uu = c_uu + self.W.T @ c_tt @ self.W
        top = jnp.concatenate([0.5 * (c_uu + c_uu.T), c_ut], axis=1)
        return jnp.concatenate([top, jnp.concatenate([c_ut.T, c_tt], axis=1)], axis=0)

    def sample(self, key, num: int):
        """``num`` draws from ``N(0, H^{-1})`` (rows; add ``mean``): ``z ~ N(0, P^{-1})`` mapped by
        ``z - V diag(1 - 1/sqrt(1 + lambda)) V^T P z`` to ``N(0, H_uu^{-1})``, then the parameters' part."""
        key_u, key_t = jax.random.split(key)
        keys = jax.random.split(key_u, num)
        shrink = 1.0 - 1.0 / jnp.sqrt(1.0 + self.eigenvalues)
        parts = []
        for i in range(0, num, self.batch):
            z = self.prior.sample(keys[i:i + self.batch])
            parts.append(z - ((self.prior.precision(z) @ self.V.T) * shrink) @ self.V)
        du = jnp.concatenate(parts) if parts else jnp.zeros((0, self.n_u), self.mean.dtype)
        if not self.p:
            return du
        dt = jax.random.normal(key_t, (num, self.p), du.dtype) @ self._schur_inv_factor().T
        return jnp.concatenate([du - dt @ self.W, dt], axis=1)
