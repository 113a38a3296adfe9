"""The Laplace approximation of ``p(u, theta | D)`` around the MAP (Amoudruz et al. 2025, eq. 10).

With ``v = (u, theta)`` (theta on its constrained scale) and ``f(v) = -log p(v | D)``,

    p(v | D) ~ N(v*, H^{-1}),   H = d^2 f / dv^2 at the MAP v*.

Two paths share one result type, ``Laplace``:

* ``"dense"`` (up to a few thousand unknowns): ``H`` by automatic differentiation (the exact Hessian, or
  its Gauss-Newton part with ``hessian="gauss-newton"``), a Cholesky factor, the full covariance.
* ``"low-rank"`` (fields of millions of unknowns; hIPPYlib's low-rank posterior, Villa, Petra & Ghattas 2021;
  Bui-Thanh et al. 2013): split the field block ``H_uu = P + M`` into the PDE-prior curvature ``P = G^T G``
  (``G`` the Jacobian of the scaled PDE and initial-condition residuals, the blocks of ``terms.FIELD_PRIOR``)
  and the data-misfit curvature ``M`` (Gauss-Newton for least-squares data, exact for the others;
  ``bodil.inference.curvature``), and solve the generalised eigenproblem

      M v_i = lambda_i P v_i,   v_i^T P v_j = delta_ij,   lambda_1 >= ... >= lambda_k

  by the randomised double-pass algorithm (Saibaba, Lee & Kitanidis 2016; ``lowrank.double_pass``). Then

      H_uu^{-1} ~ P^{-1} - V diag(lambda / (1 + lambda)) V^T,

  exact when the ``k`` eigenpairs cover the nonzero spectrum (``lowrank.LowRankGaussian``). The double pass
  is written here rather than taken from ``matfree``: the eigenproblem is generalised, needs
  ``P``-orthogonalisation and ``P^{-1}`` solves (exact time marches for Crank-Nicolson problems), and the
  batched solves map onto ``jax.lax.map``. The few parameters enter through the Schur complement
  ``S = H_tt - H_ut^T H_uu^{-1} H_ut``: ``Cov(theta) = S^{-1}``, ``Cov(u) = H_uu^{-1} + W S^{-1} W^T`` with
  ``W = H_uu^{-1} H_ut``. The pointwise variance is the prior's (exact, or estimated from streamed exact
  prior draws) minus the exact low-rank correction, in ``O(n k)`` memory.

The log-evidence uses the same density as the MAP, the samplers and the Hessian (Amoudruz et al., B-ODIL,
eq. 7: the PDE prior's normaliser ``Z`` depends on neither u nor theta), so the joint prior is

    p(u, theta) = exp(-beta L_PDE(u, theta) - beta_IC L_IC(u, theta)) p(theta) / Z,
    Z = int int exp(-beta L_PDE - beta_IC L_IC) p(theta) du dtheta = E_p(theta)[Z(theta)],

with ``Z(theta) = (2 pi)^{n/2} det P(theta)^{-1/2}`` (exact for residuals linear in ``u`` that can vanish;
``P`` taken at the MAP field otherwise). With ``r(theta) = det P(theta)^{-1/2} / det P(theta*)^{-1/2}``:

    log p(D) ~ -f(v*) + (p / 2) log(2 pi) - 1/2 log det H + 1/2 log det P(theta*) - log E_p(theta)[r(theta)]
             = -f(v*) + (p / 2) log(2 pi) - 1/2 sum_i log(1 + lambda_i) - 1/2 log det S - log E[r],

with ``p`` the number of parameters (``bodil.inference.prior_normaliser``). Where ``P`` does not depend on
theta (theta only in sources, data or initial-state targets) ``E[r] = 1``; otherwise the dense path
evaluates it at scrambled Sobol points of the parameter prior and the low-rank path, which cannot form
``det P(theta)``, gives ``nan``. It needs a proper field prior (``P`` positive definite, e.g. an
initial-condition term); otherwise ``log_evidence`` is ``nan`` and ``evidence_note`` says why.

Everything runs in the dtype of the MAP; use float64 (``jax.config.update("jax_enable_x64", True)``)
for Hessians of stiff problems.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro import distributions as dist

from .. import _checks
from .curvature import Curvature, FieldOperators
from .lowrank import FieldPrior, LowRankGaussian, cholesky_factor, deflated_trace, double_pass
from .prior_normaliser import field_prior_normaliser

DENSE_MAX = 4000
"""``method="auto"`` is dense up to this many unknowns (field and parameters)."""
EXACT_PRIOR_VARIANCE_MAX = 20000
"""``prior_variance="auto"`` is exact up to this many field unknowns, else ``AUTO_PRIOR_DRAWS`` draws."""
AUTO_PRIOR_DRAWS = 256


@dataclasses.dataclass
class Laplace:
    """A Gaussian approximation ``N(v*, Cov)`` of the posterior, from ``bodil.laplace``.

    Attributes:
        method: ``"dense"`` or ``"low-rank"``: which path ran.
        hessian: ``"exact"`` or ``"gauss-newton"``.
        log_evidence: Laplace estimate of ``log p(D)`` (``nan`` with an ``evidence_note`` when undefined).
        spectrum: low-rank only: the kept eigenvalues ``lambda_i``, the rank, a Hutchinson estimate of
            ``trace(P^{-1} M) = sum of all lambda`` and the fraction of it the rank kept.
        variance_method: how the field's pointwise variance is computed (``"exact"`` or ``"sampled (K)"``).
        info: sizes and wall times.
    """

    method: str
    hessian: str
    log_evidence: float
    evidence_note: str
    spectrum: dict | None
    variance_method: str
    info: dict
    _x: Any = dataclasses.field(repr=False)
    _unravel: Any = dataclasses.field(repr=False)
    _theta_names: tuple = dataclasses.field(repr=False)
    _gauss: Any = dataclasses.field(repr=False)

    @property
    def mean(self):
        """``(u, theta)`` at the MAP: the mean of the Gaussian."""
        return self._unravel(self._x)

    def std(self):
        """Pointwise standard deviations ``(u_std, theta_std)`` in the shapes of ``mean``."""
        return self._unravel(jnp.sqrt(jnp.maximum(self._gauss.variance(), 0.0)))

    def variance_split(self):
        """Low-rank only: the field's pointwise variance and its two parts, each in the field's shape:
        ``PointwiseVariance(posterior, prior, correction)`` with ``posterior = prior - correction``
        (``prior = diag(P^{-1})``, ``correction`` what the data and the parameters remove; hIPPYlib's split)."""
        if self.method != "low-rank":
            raise ValueError("Laplace.variance_split: only the low-rank path splits the variance; the dense path "
                             "has the exact posterior variance (std() ** 2).")
        split = self._gauss.pointwise_variance()
        pad = jnp.zeros(self._x.size - split.posterior.size, self._x.dtype)
        return type(split)(*(self._unravel(jnp.concatenate([part, pad]))[0] for part in split))

    def cov(self) -> jax.Array:
        """The full covariance of the flat vector ``ravel((u, theta))`` (low-rank: only small problems)."""
        return self._gauss.covariance()

    @property
    def theta_names(self) -> tuple[str, ...]:
        return self._theta_names

    def theta_cov(self) -> jax.Array:
        """Covariance of the flattened parameters (in ``theta_names`` order)."""
        return self._gauss.theta_covariance()

    def marginal(self, name: str) -> dist.Normal:
        """The Gaussian marginal of a scalar parameter as a numpyro ``Normal``."""
        _, theta = self.mean
        if name not in theta:
            raise KeyError(f"Laplace.marginal: unknown parameter {name!r}; inferred: {list(theta)}.")
        _, theta_std = self.std()
        return dist.Normal(theta[name], theta_std[name])

    def sample(self, seed, num_samples: int):
        """``num_samples`` draws ``(u, theta)``, each leaf with a leading sample axis; ``seed`` is an integer
        or a ``jax.random`` key."""
        key = _checks.as_key("Laplace.sample", seed)
        num_samples = _checks.integer("Laplace.sample", "num_samples", num_samples, low=1)
        flat = self._gauss.sample(key, num_samples) + self._x
        return jax.vmap(self._unravel)(flat)


def laplace(posterior, fit, *, method: str = "auto", hessian: str | None = None, rank: int = 50,
            oversampling: int = 10, prior_variance: str | int = "auto", seed=0, solver_rtol: float = 1e-12,
            normaliser_draws: int = 64) -> Laplace:
    """Laplace approximation of ``posterior`` at the MAP ``fit`` (a ``MAPResult`` or a pair ``(u, theta)``).

    Args:
        method: ``"dense"``, ``"low-rank"`` or ``"auto"`` (dense up to ``DENSE_MAX`` unknowns).
        hessian: ``"exact"`` (default for dense) or ``"gauss-newton"`` (the only choice for low-rank; the
            two agree when the residuals vanish or are linear).
        rank, oversampling: low-rank: eigenpairs kept and extra random probes.
        prior_variance: low-rank: ``"exact"`` (``n`` solves with ``P``), an integer ``K`` (estimate
            ``diag(P^{-1})`` from ``K`` exact prior draws, streamed; relative error about ``sqrt(2/K)``) or
            ``"auto"`` (exact up to 20000 field unknowns, else 256 draws).
        seed: an integer or a ``jax.random`` key: random probes of the low-rank path, prior-variance samples
            and the normaliser's points.
        solver_rtol: relative tolerance of the ``P^{-1}`` solves.
        normaliser_draws: points of the parameter prior (scrambled Sobol) at which ``det P(theta)`` is evaluated
            when the field prior's curvature depends on theta (dense path; see the module doc).

    Returns:
        A ``Laplace``.

    Raises:
        ValueError: an unknown option; ``-log p`` not finite at ``fit``; a Hessian or Schur complement that is
            not positive definite; a singular PDE prior on the low-rank path.
    """
    where = "laplace"
    start = time.perf_counter()
    u, theta = _checks.starting_point(where, fit)
    posterior.check(u, theta)
    theta = {k: jnp.asarray(v) for k, v in theta.items()}
    x, unravel = ravel_pytree((u, theta))
    n_field = sum(leaf.size for leaf in jax.tree.leaves(u))
    n = x.size
    method, hessian = _method(method, hessian, n)
    rank = _checks.integer(where, "rank", rank, low=1)
    oversampling = _checks.integer(where, "oversampling", oversampling)
    prior_variance = _prior_variance(prior_variance, n_field)
    solver_rtol = _checks.positive(where, "solver_rtol", solver_rtol)
    normaliser_draws = _checks.integer(where, "normaliser_draws", normaliser_draws, low=1)
    key = _checks.as_key(where, seed)

    curv = Curvature(posterior, unravel, x, n_field)
    f_star = float(jax.jit(curv.value)(x))
    if not math.isfinite(f_star):
        raise ValueError("laplace: -log p is not finite at the given point; pass a MAP from bodil.map_estimate.")
    p = n - n_field
    if method == "dense":
        gauss = _Dense(curv, hessian)
        spectrum, var_method = None, "exact"
    else:
        gauss, spectrum = _low_rank(curv, rank, oversampling, prior_variance, key, solver_rtol)
        var_method = gauss.variance_method
    norm = field_prior_normaliser(curv, posterior.params, method, hessian, seed, normaliser_draws)
    note = norm.note
    # dense: log det H - log det P(theta*); low-rank: det H = det P(theta*) prod(1 + lambda_i) det S
    log_det_h_over_p = gauss.log_det - norm.log_det_p if method == "dense" else gauss.log_det_ratio
    log_ev = -f_star + 0.5 * p * math.log(2 * math.pi) - 0.5 * log_det_h_over_p - norm.log_mean_ratio
    if note:
        log_ev = float("nan")
    info = {"n_field": n_field, "n_theta": p, "wall_time": time.perf_counter() - start, "neg_log_density": f_star,
            "prior_normaliser": norm.info}
    return Laplace(method=method, hessian=hessian, log_evidence=float(log_ev), evidence_note=note, spectrum=spectrum,
                   variance_method=var_method, info=info, _x=x, _unravel=unravel,
                   _theta_names=tuple(theta), _gauss=gauss)


def _method(method: str, hessian: str | None, n: int) -> tuple[str, str]:
    """The path (``"auto"``: dense up to ``DENSE_MAX`` unknowns) and the Hessian it uses."""
    method = _checks.choice("laplace", "method", method, ("dense", "low-rank", "auto"))
    if method == "auto":
        method = "dense" if n <= DENSE_MAX else "low-rank"
    hessian = _checks.choice("laplace", "hessian", hessian or ("exact" if method == "dense" else "gauss-newton"),
                             ("exact", "gauss-newton"))
    if method == "low-rank" and hessian != "gauss-newton":
        raise ValueError("laplace: the low-rank path uses the Gauss-Newton Hessian; pass hessian='gauss-newton' "
                         "or method='dense'.")
    return method, hessian


def _prior_variance(option, n_field: int):
    """``"exact"`` or a number of prior draws (``"auto"``: exact up to ``EXACT_PRIOR_VARIANCE_MAX``)."""
    if option == "auto":
        return "exact" if n_field <= EXACT_PRIOR_VARIANCE_MAX else AUTO_PRIOR_DRAWS
    if option == "exact":
        return option
    return _checks.integer("laplace", "prior_variance ('exact', 'auto' or a number of draws)", option, low=1)


def _low_rank(curv: Curvature, rank: int, oversampling: int, prior_variance, key, rtol: float):
    """The ``LowRankGaussian`` at the MAP of ``curv`` and its spectrum report."""
    ops = FieldOperators(curv, rtol)
    n_u, p, dtype = curv.n_field, curv.x.size - curv.n_field, curv.x.dtype
    k = min(rank, n_u)
    key_probe, key_rest, key_var = jax.random.split(key, 3)
    apply_p, apply_m, apply_p_inv = (functools.partial(ops.apply, name) for name in ("P", "M", "P_inv"))
    omega = jax.random.normal(key_probe, (min(k + oversampling, n_u), n_u), dtype)
    eig = double_pass(apply_m, apply_p, apply_p_inv, omega, k, batch=ops.CHUNK)
    if not bool(jnp.all(jnp.isfinite(eig.eigenvalues))):
        raise ValueError("laplace: the PDE prior on the field is singular (no initial-condition term?), so "
                         "the low-rank split H = P + M does not apply; use method='dense'.")
    h_ut = h_tt = None
    if p:
        eye_t = jnp.concatenate([jnp.zeros((p, n_u), dtype), jnp.eye(p, dtype=dtype)], axis=1)
        cols = ops.apply("H", eye_t)  # (p, n): the parameters' columns of H
        h_ut, h_tt = cols[:, :n_u], cols[:, n_u:]
    prior = FieldPrior(apply_p, apply_p_inv, ops.prior_sample)
    gauss = LowRankGaussian(curv.x, eig, prior, h_ut, h_tt, prior_variance=prior_variance, key=key_var,
                            batch=ops.CHUNK)
    # Hutchinson estimate of the trace the rank left out: tr(P^{-1} M (I - V^T V P)).
    omega_rest = jax.random.normal(key_rest, (max(oversampling, 1), n_u), dtype)
    trace_rest = deflated_trace(apply_m, apply_p, apply_p_inv, gauss.V, omega_rest)
    lam = gauss.eigenvalues
    trace_kept = float(jnp.sum(lam))
    total = trace_kept + max(trace_rest, 0.0)
    spectrum = {"eigenvalues": np.asarray(lam), "rank": int(lam.size),
                "smallest_kept": float(lam[-1]) if lam.size else 0.0, "trace_kept": trace_kept,
                "trace_rest_estimate": trace_rest, "captured": trace_kept / total if total > 0 else 1.0}
    return gauss, spectrum


class _Dense:
    """``N(0, H^{-1})`` from the Cholesky factor of the full Hessian (exact or Gauss-Newton)."""

    def __init__(self, ops: Curvature, hessian: str):
        self.ops = ops
        if hessian == "exact":
            H = jax.jit(jax.hessian(ops.value))(ops.x)
        else:
            eye = jnp.eye(ops.x.size, dtype=ops.x.dtype)
            H = jax.jit(lambda x: jax.vmap(ops.at(x).curvature)(eye))(ops.x)
        self.chol = cholesky_factor(H, "Hessian")
        self.log_det = float(2.0 * jnp.sum(jnp.log(jnp.diag(self.chol))))

    def covariance(self):
        eye = jnp.eye(self.chol.shape[0], dtype=self.chol.dtype)
        return jax.scipy.linalg.cho_solve((self.chol, True), eye)

    def variance(self):
        inv_l = jax.scipy.linalg.solve_triangular(self.chol, jnp.eye(self.chol.shape[0], dtype=self.chol.dtype),
                                                  lower=True)
        return jnp.sum(inv_l**2, axis=0)

    def theta_covariance(self):
        return self.covariance()[self.ops.n_field:, self.ops.n_field:]

    def sample(self, key, num):
        xi = jax.random.normal(key, (num, self.chol.shape[0]), self.chol.dtype)
        return jax.scipy.linalg.solve_triangular(self.chol.T, xi.T, lower=False).T


