"""The mode approximation of the parameter posterior (seed 003 eq. 12):

    log p(theta | D) ~ log p(u*(theta), theta | D),   u*(theta) = argmax_u log p(u, theta | D).

Each evaluation is an inner MAP solve over the field with theta held fixed (preconditioned Gauss-Newton,
``bodil.optimize.gauss_newton.GaussNewton``, compiled once), warm-started from the stored solution whose
parameters are nearest (in unconstrained coordinates). Every evaluation is recorded with its inner
iterations, gradient norm, converged flag and wall time; an inner solve that did not converge raises
(``on_failure="raise"``, default) or gives ``-inf`` with the reason recorded (``on_failure="-inf"``).

Where ``log p`` is quadratic in ``u`` (linear PDE, Gaussian likelihood) the marginal is exact with the
log-determinant term (seed 003, after eq. 14):

    log p(theta | D) = log p(u*(theta), theta | D) + (d / 2) log(2 pi) - 1/2 log det H(theta) + const,

``H(theta)`` the Hessian of ``-log p`` in ``u`` (``d`` unknowns) at ``u*(theta)``: ``exact_log_marginal``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ..optimize.gauss_newton import GaussNewton
from ..optimize.objective import Objective


class Evaluation(NamedTuple):
    """One evaluation of the mode approximation."""

    theta: dict
    log_density: float
    iterations: int
    grad_norm: float
    converged: bool
    message: str
    wall_time: float
    warm_start_distance: float


class ModeApproximation:
    """``theta -> max_u log p(u, theta | D)`` with warm starts and per-evaluation diagnostics.

    Args:
        posterior: a ``bodil.Posterior`` with at least one inferred parameter.
        u0: the first starting field (a forward solution or the MAP).
        theta0: the parameters ``u0`` belongs to (constrained; default: prior means).
        max_iter, gtol, ftol: inner Gauss-Newton stopping rules (``GaussNewton.run``).
        on_failure: ``"raise"`` or ``"-inf"`` for inner solves that did not converge.
        cache_size: how many previous solutions are kept for warm starts.
        keep: optional ``keep(u, theta) -> array``; then ``log_likelihood`` returns ``(value, keep(u*, theta))``
            so samplers can carry, say, the field at the final time with each sample.
        **solver_options: passed to ``GaussNewton`` (``preconditioner``, ``cg_maxiter``...).

    Example:
        >>> mode = ModeApproximation(post, fit.u, fit.theta)
        >>> mode.log_density({"omega2": 1.1})
        >>> idata = bodil.basis(mode.log_likelihood, post.params, n=256, seed=0)
    """

    def __init__(self, posterior, u0, theta0: dict | None = None, *, max_iter: int = 50, gtol: float = 1e-6,
                 ftol: float | None = None, on_failure: str = "raise", cache_size: int = 32,
                 keep: Callable | None = None, **solver_options: Any):
        if not posterior.params.priors:
            raise ValueError("ModeApproximation: the posterior has no inferred parameters; give Params a prior.")
        if on_failure not in ("raise", "-inf"):
            raise ValueError(f"ModeApproximation: on_failure must be 'raise' or '-inf', got {on_failure!r}.")
        if cache_size < 1:
            raise ValueError(f"ModeApproximation: cache_size must be at least 1, got {cache_size}.")
        theta0 = posterior.initial_theta() if theta0 is None else theta0
        self.posterior = posterior
        self.objective = Objective(posterior, u0, theta0)
        self.solver = GaussNewton(self.objective, **solver_options)
        self.n_field = self.solver.n_field
        self.run_options = dict(max_iter=max_iter, gtol=gtol, ftol=ftol)
        self.on_failure, self.cache_size, self.keep = on_failure, cache_size, keep
        self.records: list[Evaluation] = []
        x0 = self.objective.x0
        self._cache: list[tuple[np.ndarray, jax.Array]] = [(np.asarray(x0[self.n_field:]), x0)]
        self._hessian_logdet = None

    # ------------------------------------------------------------------ inner solve
    def solve(self, theta: dict):
        """``(u*(theta), Evaluation)``: the field maximising ``log p(u, theta | D)`` and its diagnostics."""
        theta = {k: jnp.asarray(v, self.objective.x0.dtype) for k, v in theta.items()}
        try:
            z = self.posterior.params.unconstrain(theta)
        except ValueError:  # outside the prior's support
            ev = Evaluation({k: np.asarray(v) for k, v in theta.items()}, -math.inf, 0, math.nan, True,
                            "outside the prior support", 0.0, math.nan)
            self.records.append(ev)
            return None, ev
        z_flat = ravel_pytree(z)[0]
        zn = np.asarray(z_flat)
        dists = [float(np.linalg.norm(zn - zc)) for zc, _ in self._cache]
        nearest = int(np.argmin(dists))
        x_start = jnp.concatenate([self._cache[nearest][1][: self.n_field], z_flat])
        x, rep = self.solver.run(x_start, fix_theta=True, **self.run_options)
        log_density = -rep.loss
        converged = rep.converged and math.isfinite(rep.loss)
        message = rep.message if math.isfinite(rep.loss) else "non-finite log density"
        if not converged:
            if self.on_failure == "raise":
                raise RuntimeError(f"ModeApproximation: the inner MAP solve at theta="
                                   f"{ {k: np.asarray(v).tolist() for k, v in theta.items()} } did not converge "
                                   f"({message}; {rep.iterations} iterations, |grad|_inf {rep.grad_norm:.3g}). "
                                   "Raise max_iter, loosen gtol, or pass on_failure='-inf' to give such points "
                                   "zero posterior weight.")
            log_density = -math.inf
        else:
            self._cache.append((zn, x))
            if len(self._cache) > self.cache_size:
                self._cache.pop(1)  # keep the starting point, drop the oldest solution
        ev = Evaluation({k: np.asarray(v) for k, v in theta.items()}, float(log_density), rep.iterations,
                        rep.grad_norm, converged, message, rep.wall_time, dists[nearest])
        self.records.append(ev)
        u, _ = self.objective.position(x)
        return u, ev

    # ------------------------------------------------------------------ densities
    def log_density(self, theta: dict) -> float:
        """``log p(u*(theta), theta | D)``: the mode approximation of ``log p(theta | D)`` (unnormalised)."""
        return self.solve(theta)[1].log_density

    def log_likelihood(self, theta: dict):
        """``log p(u*(theta), theta | D) - log p(theta)``: what a sampler that draws from the prior weighs.

        Returns ``(value, keep(u*, theta))`` when ``keep`` was given.
        """
        u, ev = self.solve(theta)
        value = ev.log_density
        if math.isfinite(value):
            value -= float(self.posterior.params.log_prob({k: jnp.asarray(v) for k, v in theta.items()}))
        if self.keep is None:
            return value
        if u is None:
            u = self.objective.unravel(self._cache[0][1])[0]
        return value, np.asarray(self.keep(u, theta))

    def exact_log_marginal(self, theta: dict) -> float:
        """``log p(theta | D)`` up to a constant, exact when ``log p`` is quadratic in ``u``: the mode value plus
        ``(d / 2) log(2 pi) - 1/2 log det H(theta)`` (dense Hessian in ``u``: small problems only)."""
        u, ev = self.solve(theta)
        if not math.isfinite(ev.log_density):
            return -math.inf
        u_flat, unravel_u = ravel_pytree(u)
        th = {k: jnp.asarray(v, u_flat.dtype) for k, v in theta.items()}
        if self._hessian_logdet is None:
            post = self.posterior

            def logdet(v_flat, th):
                H = jax.hessian(lambda v: -post.log_density(unravel_u(v), th))(v_flat)
                sign, value = jnp.linalg.slogdet(0.5 * (H + H.T))
                return jnp.where(sign > 0, value, jnp.nan)
            self._hessian_logdet = jax.jit(logdet)
        value = float(self._hessian_logdet(u_flat, th))
        if not math.isfinite(value):
            raise ValueError("ModeApproximation.exact_log_marginal: the Hessian in u is not positive definite; the "
                             "exact marginal needs log p quadratic (and concave) in u.")
        return ev.log_density + 0.5 * u_flat.size * math.log(2 * math.pi) - 0.5 * value

    # ------------------------------------------------------------------ diagnostics
    def summary(self) -> dict:
        """Counts and totals over all evaluations so far."""
        recs = self.records
        solved = [r for r in recs if r.message != "outside the prior support"]
        return {"evaluations": len(recs), "inner_solves": len(solved),
                "unconverged": sum(not r.converged for r in solved),
                "mean_inner_iterations": float(np.mean([r.iterations for r in solved])) if solved else 0.0,
                "max_grad_norm": float(np.max([r.grad_norm for r in solved])) if solved else 0.0,
                "wall_time": float(sum(r.wall_time for r in solved))}

    def __repr__(self) -> str:
        s = self.summary()
        return (f"ModeApproximation({s['evaluations']} evaluations, {s['unconverged']} unconverged, "
                f"mean inner iterations {s['mean_inner_iterations']:.3g})")
