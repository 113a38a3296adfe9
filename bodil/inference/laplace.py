"""The Laplace approximation of ``p(u, theta | D)`` around the MAP (Amoudruz et al. 2025, eq. 10).

With ``v = (u, theta)`` (theta on its constrained scale) and ``f(v) = -log p(v | D)``,

    p(v | D) ~ N(v*, H^{-1}),   H = d^2 f / dv^2 at the MAP v*.

Two paths share one result type, ``Laplace``:

* ``"dense"`` (up to a few thousand unknowns): ``H`` by automatic differentiation (the exact Hessian, or
  its Gauss-Newton part with ``hessian="gauss-newton"``), a Cholesky factor, the full covariance.
* ``"low-rank"`` (fields of millions of unknowns; hIPPYlib's low-rank posterior, Bui-Thanh et al. 2013):
  split the field block ``H_uu = P + M`` into the PDE-prior curvature ``P = G^T G`` (``G`` the Jacobian of
  the scaled PDE and initial-condition residuals) and the data-misfit curvature ``M`` (Gauss-Newton for
  least-squares data, exact for the others), and solve the generalised eigenproblem

      M v_i = lambda_i P v_i,   v_i^T P v_j = delta_ij,   lambda_1 >= ... >= lambda_k

  by the randomised double-pass algorithm (Saibaba, Lee & Kitanidis 2016). Then

      H_uu^{-1} ~ P^{-1} - V diag(lambda / (1 + lambda)) V^T,

  exact when the ``k`` eigenpairs cover the nonzero spectrum. We write the double pass (40 lines) instead
  of using ``matfree``: the eigenproblem is generalised, needs ``P``-orthogonalisation and ``P^{-1}``
  solves (exact time marches for Crank-Nicolson problems), and the batched solves map onto ``vmap``.
  The few parameters enter through the Schur complement ``S = H_tt - H_ut^T H_uu^{-1} H_ut``:
  ``Cov(theta) = S^{-1}``, ``Cov(u) = H_uu^{-1} + W S^{-1} W^T`` with ``W = H_uu^{-1} H_ut``.

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

from ..optimize.cg import truncated_cg
from ..optimize.objective import Objective
from ..optimize.preconditioner import applies_time_marching, capped_points, time_march
from ..terms import Squares
from .prior_normaliser import field_prior_normaliser

PRIOR_GROUPS = ("pde", "ic")
DENSE_MAX = 4000


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

    def sample(self, key: jax.Array, num_samples: int):
        """``num_samples`` draws ``(u, theta)``, each leaf with a leading sample axis."""
        flat = self._gauss.sample(key, num_samples) + self._x
        return jax.vmap(self._unravel)(flat)


def laplace(posterior, fit, theta=None, *, method: str = "auto", hessian: str | None = None, rank: int = 50,
            oversampling: int = 10, prior_variance: str | int = "auto", seed: int = 0,
            solver_rtol: float = 1e-12, normaliser_draws: int = 64) -> Laplace:
    """Laplace approximation of ``posterior`` at the MAP ``fit`` (a ``MAPResult`` or a field ``u`` with ``theta``).

    Args:
        method: ``"dense"``, ``"low-rank"`` or ``"auto"`` (dense up to 4000 unknowns).
        hessian: ``"exact"`` (default for dense) or ``"gauss-newton"`` (the only choice for low-rank; the
            two agree when the residuals vanish or are linear).
        rank, oversampling: low-rank: eigenpairs kept and extra random probes.
        prior_variance: low-rank: ``"exact"`` (``n`` solves with ``P``), an integer ``K`` (estimate
            ``diag(P^{-1})`` from ``K`` exact prior samples, relative error about ``sqrt(2/K)``) or
            ``"auto"`` (exact up to 20000 field unknowns, else 256 samples).
        seed: random probes of the low-rank path, prior-variance samples and the normaliser's points.
        solver_rtol: relative tolerance of the ``P^{-1}`` solves.
        normaliser_draws: points of the parameter prior (scrambled Sobol) at which ``det P(theta)`` is evaluated
            when the field prior's curvature depends on theta (dense path; see the module doc).
    """
    start = time.perf_counter()
    if hasattr(fit, "u") and hasattr(fit, "theta"):
        u, theta = fit.u, fit.theta
    else:
        u, theta = fit, ({} if theta is None else theta)
    posterior.check(u, theta)
    theta = {k: jnp.asarray(v) for k, v in theta.items()}
    x, unravel = ravel_pytree((u, theta))
    n_field = sum(leaf.size for leaf in jax.tree.leaves(u))
    n = x.size
    if method == "auto":
        method = "dense" if n <= DENSE_MAX else "low-rank"
    if method not in ("dense", "low-rank"):
        raise ValueError(f"laplace: method must be 'dense', 'low-rank' or 'auto', got {method!r}.")
    hessian = hessian or ("exact" if method == "dense" else "gauss-newton")
    if hessian not in ("exact", "gauss-newton"):
        raise ValueError(f"laplace: hessian must be 'exact' or 'gauss-newton', got {hessian!r}.")
    if method == "low-rank" and hessian != "gauss-newton":
        raise ValueError("laplace: the low-rank path uses the Gauss-Newton Hessian; pass hessian='gauss-newton' "
                         "or method='dense'.")
    ops = _Operators(posterior, unravel, x, n_field)
    f_star = float(jax.jit(ops.value)(x))
    if not math.isfinite(f_star):
        raise ValueError("laplace: -log p is not finite at the given point; pass a MAP from bodil.map_estimate.")
    p = n - n_field
    if method == "dense":
        gauss = _Dense(ops, hessian)
        spectrum, var_method = None, "exact"
    else:
        gauss = _LowRank(ops, posterior, rank, oversampling, prior_variance, seed, solver_rtol)
        spectrum, var_method = gauss.spectrum(), gauss.variance_method
    norm = field_prior_normaliser(ops, posterior.params, method, hessian, seed, normaliser_draws)
    note = norm.note
    if method == "dense":
        log_det_h_over_p = gauss.log_det - norm.log_det_p
    else:  # det H = det P(theta*) prod(1 + lambda_i) det S
        log_det_h_over_p = float(jnp.sum(jnp.log1p(gauss.eigenvalues))) + gauss.log_det_schur
    log_ev = -f_star + 0.5 * p * math.log(2 * math.pi) - 0.5 * log_det_h_over_p - norm.log_mean_ratio
    if note:
        log_ev = float("nan")
    info = {"n_field": n_field, "n_theta": p, "wall_time": time.perf_counter() - start, "neg_log_density": f_star,
            "prior_normaliser": norm.info}
    return Laplace(method=method, hessian=hessian, log_evidence=float(log_ev), evidence_note=note, spectrum=spectrum,
                   variance_method=var_method, info=info, _x=x, _unravel=unravel,
                   _theta_names=tuple(theta), _gauss=gauss)


class _Operators:
    """Curvature operators of ``f(v) = -log p(v | D)`` at ``v*`` in flat constrained coordinates."""

    def __init__(self, posterior, unravel, x, n_field):
        self.posterior, self.unravel, self.x, self.n_field = posterior, unravel, x, n_field

        def blocks(v):
            return posterior.blocks(*unravel(v))

        def residuals(v, prior: bool):
            return {k: jnp.sqrt(2.0 * b.weight) * b.residual for k, b in blocks(v).items()
                    if isinstance(b, Squares) and (k.split("/", 1)[0] in PRIOR_GROUPS) == prior}

        def scalar(v, prior: bool):
            return sum((b.value() for k, b in blocks(v).items()
                        if not isinstance(b, Squares) and (k.split("/", 1)[0] in PRIOR_GROUPS) == prior),
                       jnp.zeros((), v.dtype))

        self.blocks = blocks
        self.value = lambda v: sum((b.value() for b in blocks(v).values()), jnp.zeros((), v.dtype))
        self._residuals = residuals
        self.grad_scalar_prior = jax.grad(lambda v: scalar(v, True))
        self.grad_scalar_data = jax.grad(lambda v: scalar(v, False))

    @functools.cached_property
    def jvp_prior(self):
        return jax.linearize(lambda v: self._residuals(v, True), self.x)[1]

    @functools.cached_property
    def vjp_prior(self):
        return jax.linear_transpose(self.jvp_prior, self.x)

    @functools.cached_property
    def jvp_data(self):
        return jax.linearize(lambda v: self._residuals(v, False), self.x)[1]

    @functools.cached_property
    def vjp_data(self):
        return jax.linear_transpose(self.jvp_data, self.x)

    def at(self, x):
        """The same operators linearised at ``x`` (use inside a ``jit``: linearisations must not leak out)."""
        return _Operators(self.posterior, self.unravel, x, self.n_field)

    def embed(self, v_u):
        return jnp.concatenate([v_u, jnp.zeros(self.x.size - self.n_field, v_u.dtype)])

    def prior_curvature(self, v):
        """``G^T G v + H_{S,prior} v`` (the PDE prior's Gauss-Newton curvature), full space."""
        return self.vjp_prior(self.jvp_prior(v))[0] + jax.jvp(self.grad_scalar_prior, (self.x,), (v,))[1]

    def data_curvature(self, v):
        """Data and parameter-prior curvature (Gauss-Newton for least squares, exact for scalars)."""
        return self.vjp_data(self.jvp_data(v))[0] + jax.jvp(self.grad_scalar_data, (self.x,), (v,))[1]

    def curvature(self, v):
        return self.prior_curvature(v) + self.data_curvature(v)

    def field(self, op):
        """Restrict a full-space operator to the field block."""
        return lambda v_u: op(self.embed(v_u))[: self.n_field]

    def prior_logdet(self, hessian: str):
        """A compiled ``x -> log det P(x)`` of the field's PDE-prior curvature at the point ``x`` (``nan`` where
        ``P`` is not positive definite): the exact Hessian of the prior terms in ``u`` or their Gauss-Newton part."""
        eye = jnp.eye(self.n_field, dtype=self.x.dtype)

        def logdet(x):
            if hessian == "exact":
                def prior_value(v_u):
                    v = self.embed(v_u) + x
                    return sum((b.value() for k, b in self.blocks(v).items() if k.split("/", 1)[0] in PRIOR_GROUPS),
                               jnp.zeros((), v.dtype))
                P = jax.hessian(prior_value)(jnp.zeros(self.n_field, x.dtype))
            else:
                P = jax.vmap(_field_prior(self.at(x)))(eye)
            chol = jnp.linalg.cholesky(0.5 * (P + P.T))
            return jnp.where(jnp.all(jnp.isfinite(chol)), 2.0 * jnp.sum(jnp.log(jnp.diag(chol))), jnp.nan)
        return jax.jit(logdet)

    def prior_products(self):
        """A compiled ``(x, vs) -> P(x) v`` for the rows ``v`` of ``vs`` (the field block)."""
        return jax.jit(lambda x, vs: jax.vmap(_field_prior(self.at(x)))(vs))


def _cholesky(matrix, what: str):
    chol = jnp.linalg.cholesky(0.5 * (matrix + matrix.T))
    if not bool(jnp.all(jnp.isfinite(chol))):
        raise ValueError(f"laplace: the {what} is not positive definite at this point, so it is not a strict "
                         "maximum of the posterior; solve the MAP to convergence (bodil.map_estimate), or use "
                         "hessian='gauss-newton'.")
    return chol


class _Dense:
    def __init__(self, ops: _Operators, hessian: str):
        self.ops = ops
        if hessian == "exact":
            H = jax.jit(jax.hessian(ops.value))(ops.x)
        else:
            eye = jnp.eye(ops.x.size, dtype=ops.x.dtype)
            H = jax.jit(lambda x: jax.vmap(ops.at(x).curvature)(eye))(ops.x)
        self.chol = _cholesky(H, "Hessian")
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


class _LowRank:
    """The low-rank Gaussian. Operators are applied to blocks of ``CHUNK`` vectors by jitted functions of the
    MAP (each rebuilds the linearisation inside its trace), so each compiles once whatever the batch."""

    CHUNK = 32

    def __init__(self, ops: _Operators, posterior, rank, oversampling, prior_variance, seed, rtol):
        self.ops, self.x = ops, ops.x
        n_u, dtype = ops.n_field, ops.x.dtype
        self.n_u, self.p = n_u, ops.x.size - n_u
        self.posterior, self.rtol = posterior, rtol
        obj = Objective(posterior, *ops.unravel(ops.x))
        self.x_unc = obj.x0
        self._march_obj = obj if (_has_initial_block(ops) and applies_time_marching(obj)) else None
        # The march is P^{-1} exactly only where no block was capped (rho (1 - 2u) dt <= REACTION_CAP); elsewhere it
        # preconditions a CG solve with P instead.
        self._march_exact = self._march_obj is not None and int(capped_points(obj, self.x_unc)) == 0
        self._jitted = {name: jax.jit(self._batch_op(name)) for name in ("P", "M", "P_inv", "H")}
        self._prior_rhs = jax.jit(self._prior_rhs_fn)
        k = min(rank, n_u)
        probes = min(k + oversampling, n_u)
        key_probe, key_rest, self.key_var = jax.random.split(jax.random.key(seed), 3)
        omega = jax.random.normal(key_probe, (probes, n_u), dtype)
        y = self.apply("P_inv", self.apply("M", omega))
        if not bool(jnp.all(jnp.isfinite(y))):
            raise ValueError("laplace: the PDE prior on the field is singular (no initial-condition term?), so "
                             "the low-rank split H = P + M does not apply; use method='dense'.")
        for _ in range(2):  # P-orthonormalise the rows by Cholesky QR, twice for stability
            gram = y @ self.apply("P", y).T
            gram = 0.5 * (gram + gram.T) + 1e-14 * jnp.trace(gram) / probes * jnp.eye(probes, dtype=dtype)
            y = jax.scipy.linalg.solve_triangular(jnp.linalg.cholesky(gram), y, lower=True)
        t = y @ self.apply("M", y).T
        lam, vecs = jnp.linalg.eigh(0.5 * (t + t.T))
        order = jnp.argsort(lam)[::-1][:k]
        self.eigenvalues = jnp.maximum(lam[order], 0.0)
        self.V = vecs[:, order].T @ y  # (k, n_u), P-orthonormal rows
        # Hutchinson estimate of the trace the rank left out: tr(P^{-1} M (I - V^T V P)).
        omega_rest = jax.random.normal(key_rest, (max(oversampling, 1), n_u), dtype)
        deflated = omega_rest - (self.apply("P", omega_rest) @ self.V.T) @ self.V
        self.trace_rest = float(jnp.mean(jnp.sum(omega_rest * self.apply("P_inv", self.apply("M", deflated)), 1)))
        self.trace_kept = float(jnp.sum(self.eigenvalues))
        self._setup_theta()
        self._prior_variance_option = prior_variance
        self._variance = None

    # ---------------------------------------------------------------- operators on blocks of vectors
    def _make(self, x, x_unc):
        ops = self.ops.at(x)
        _ = ops.vjp_prior, ops.vjp_data  # linearise here, not inside the first loop that uses them
        shape = self.posterior.grid.shape
        march = None
        if self._march_obj is not None:
            forward, backward = time_march(self._march_obj, x_unc, self.rtol)
            march = lambda v: forward(backward(v.reshape(shape))).reshape(-1)  # noqa: E731
        if self._march_exact:
            p_inv = march
        else:
            P = ops.field(ops.prior_curvature)

            def p_inv(v):
                sol, info = truncated_cg(P, v, self.rtol * jnp.linalg.norm(v), 10 * self.n_u, march)
                bad = info.negative_curvature | (info.residual_norm > 1e3 * self.rtol * jnp.linalg.norm(v))
                return jnp.where(bad, jnp.nan, sol)
        return ops, p_inv

    def _batch_op(self, name):
        def op(x, x_unc, vs):
            ops, p_inv = self._make(x, x_unc)
            fn = {"P": ops.field(ops.prior_curvature), "M": ops.field(ops.data_curvature), "P_inv": p_inv,
                  "H": ops.curvature}[name]
            return jax.vmap(fn)(vs)
        return op

    def apply(self, name: str, vs):
        """Apply operator ``name`` to the rows of ``vs``, in padded blocks of ``CHUNK`` rows."""
        count = vs.shape[0]
        pad = (-count) % self.CHUNK
        vs = jnp.concatenate([vs, jnp.zeros((pad,) + vs.shape[1:], vs.dtype)]) if pad else vs
        out = [self._jitted[name](self.x, self.x_unc, vs[i:i + self.CHUNK]) for i in range(0, vs.shape[0], self.CHUNK)]
        return jnp.concatenate(out)[:count]

    def _setup_theta(self):
        n_u, p, dtype = self.n_u, self.p, self.x.dtype
        if p == 0:
            self.W = jnp.zeros((0, n_u), dtype)
            self.schur_chol = jnp.zeros((0, 0), dtype)
            self.log_det_schur = 0.0
            return
        eye_t = jnp.concatenate([jnp.zeros((p, n_u), dtype), jnp.eye(p, dtype=dtype)], axis=1)
        cols = self.apply("H", eye_t)  # (p, n): the parameters' columns of H
        h_ut, h_tt = cols[:, :n_u], cols[:, n_u:]
        self.W = self.h_uu_inv(h_ut)  # (p, n_u) = (H_uu^{-1} H_ut)^T
        self.schur_chol = _cholesky(h_tt - h_ut @ self.W.T, "Schur complement of the parameters")
        self.log_det_schur = float(2.0 * jnp.sum(jnp.log(jnp.diag(self.schur_chol))))

    def h_uu_inv(self, vs):
        """``H_uu^{-1} v ~ P^{-1} v - V D V^T v`` (rows of ``vs``), ``D = lambda / (1 + lambda)``."""
        d = self.eigenvalues / (1.0 + self.eigenvalues)
        return self.apply("P_inv", vs) - ((vs @ self.V.T) * d) @ self.V

    def _prior_rhs_fn(self, x, keys):
        """``G^T xi`` with ``xi ~ N(0, I)`` over the prior residuals, one row per key."""
        ops = self.ops.at(x)
        leaves, treedef = jax.tree.flatten(jax.eval_shape(ops.jvp_prior, x))
        vjp = ops.vjp_prior

        def one(k):
            ks = jax.random.split(k, len(leaves))
            xi = jax.tree.unflatten(treedef, [jax.random.normal(kk, s.shape, s.dtype) for kk, s in zip(ks, leaves)])
            return vjp(xi)[0][: self.n_u]
        return jax.vmap(one)(keys)

    def _prior_samples(self, key, num):
        """Exact draws from ``N(0, P^{-1})``: ``P^{-1} G^T xi`` (``P = G^T G``)."""
        return self.apply("P_inv", self._prior_rhs(self.x, jax.random.split(key, num)))

    # ---------------------------------------------------------------- public interface of a Gaussian
    def _schur_inv_factor(self):
        """``L_S^{-T}``, so that ``Cov(theta) = L_S^{-T} L_S^{-1}``."""
        eye = jnp.eye(self.p, dtype=self.W.dtype)
        return jax.scipy.linalg.solve_triangular(self.schur_chol.T, eye, lower=False)

    @property
    def variance_method(self) -> str:
        opt = self._prior_variance_option
        if opt == "auto":
            opt = "exact" if self.n_u <= 20000 else 256
        return "exact" if opt == "exact" else f"sampled ({int(opt)} prior samples)"

    def _prior_variance(self):
        if self.variance_method == "exact":
            diag = [jnp.diagonal(self.apply("P_inv", jnp.eye(self.n_u, dtype=self.x.dtype)[i:i + 256]), offset=i)
                    for i in range(0, self.n_u, 256)]
            return jnp.concatenate(diag)
        count = int(self.variance_method.split("(")[1].split()[0])
        return jnp.mean(self._prior_samples(self.key_var, count) ** 2, axis=0)

    def variance(self):
        if self._variance is None:
            d = self.eigenvalues / (1.0 + self.eigenvalues)
            var_u = self._prior_variance() - jnp.sum(d[:, None] * self.V**2, axis=0)
            var_t = jnp.zeros(0, var_u.dtype)
            if self.p:
                z = self._schur_inv_factor().T @ self.W  # rows of L_S^{-1} W^T
                var_u = var_u + jnp.sum(z**2, axis=0)
                var_t = jnp.diag(self.theta_covariance())
            self._variance = jnp.concatenate([var_u, var_t])
        return self._variance

    def theta_covariance(self):
        f = self._schur_inv_factor()
        return f @ f.T

    def covariance(self):
        if self.n_u > 20000:
            raise ValueError(f"Laplace.cov: the low-rank path does not form the {self.n_u}x{self.n_u} covariance; "
                             "use std() and sample().")
        c_uu = self.h_uu_inv(jnp.eye(self.n_u, dtype=self.x.dtype))
        if not self.p:
            return 0.5 * (c_uu + c_uu.T)
        c_tt = self.theta_covariance()
        c_ut = -self.W.T @ c_tt
        c_uu = c_uu + self.W.T @ c_tt @ self.W
        top = jnp.concatenate([0.5 * (c_uu + c_uu.T), c_ut], axis=1)
        return jnp.concatenate([top, jnp.concatenate([c_ut.T, c_tt], axis=1)], axis=0)

    def sample(self, key, num):
        key_u, key_t = jax.random.split(key)
        z = self._prior_samples(key_u, num)  # ~ N(0, P^{-1})
        shrink = 1.0 - 1.0 / jnp.sqrt(1.0 + self.eigenvalues)
        du = z - ((self.apply("P", z) @ self.V.T) * shrink) @ self.V  # ~ N(0, H_uu^{-1})
        if not self.p:
            return du
        dt = jax.random.normal(key_t, (num, self.p), du.dtype) @ self._schur_inv_factor().T
        return jnp.concatenate([du - dt @ self.W, dt], axis=1)

    def spectrum(self) -> dict:
        total = self.trace_kept + max(self.trace_rest, 0.0)
        return {"eigenvalues": np.asarray(self.eigenvalues), "rank": int(self.eigenvalues.size),
                "smallest_kept": float(self.eigenvalues[-1]) if self.eigenvalues.size else 0.0,
                "trace_kept": self.trace_kept, "trace_rest_estimate": self.trace_rest,
                "captured": self.trace_kept / total if total > 0 else 1.0}


def _has_initial_block(ops: _Operators) -> bool:
    return any(k.startswith("ic/") for k in ops.blocks(ops.x))


def _field_prior(ops: _Operators):
    return ops.field(ops.prior_curvature)
