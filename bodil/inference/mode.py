"""The mode approximation of the parameter posterior (Amoudruz et al. 2025, eq. 12):

    log p(theta | D) ~ log p(u*(theta), theta | D),   u*(theta) = argmax_u log p(u, theta | D).

Each evaluation is an inner MAP solve over the field with theta held fixed (preconditioned Gauss-Newton,
``bodil.optimize.gauss_newton.GaussNewton``, compiled once). It starts from the stored solution whose
parameters are nearest (in unconstrained coordinates) or, when an ``initial(theta)`` field is given (for
example a forward solve from the initial condition at theta), from whichever of the two has the lower
objective ``-log p(u, theta | D)``. ``warm_log_likelihood(theta, start)`` instead starts from a solution the
caller carries (a sampler's particle: its last inner solution) and returns the new one, so the value does
not depend on the order of evaluations or on which worker runs them. Every evaluation is recorded with its
start, inner iterations, gradient norm, converged flag and wall time (``records``); ``log_likelihood`` also
returns the converged flag and the iterations with its value, so a sampler keeps them with each particle
(``idata.sample_stats["converged"]`` after ``bodil.basis``). An inner solve that did not converge
raises (``on_failure="raise"``, default), gives ``-inf`` (``"-inf"``), or keeps the value it reached
(``"lower-bound"``): any field gives ``log p(u, theta | D) <= max_u log p(u, theta | D)``, so the kept value
is a lower bound of the mode value, useful where such points lie far below the mode and only need to be
ranked low (annealed samplers).

The inner solve stops on the Newton decrement: ``-g.p <= ftol * max(|f|, 1)``, with ``-g.p`` about twice
the remaining ``f - f*`` near the solution, so ``ftol * |f|`` is the accuracy of the log density in nats (the
default ``ftol = 1e-12`` of ``GaussNewton`` is far tighter than a sampler needs; ``1e-9`` is plenty where
``|f|`` is in the hundreds). ``gtol`` is an absolute bound on ``|grad f|_inf``, a secondary stop.

Where ``log p`` is quadratic in ``u`` (linear PDE, Gaussian likelihood) the marginal is exact with the
log-determinant term (Amoudruz et al. (2025), after eq. 14):

    log p(theta | D) = log p(u*(theta), theta | D) + (d / 2) log(2 pi) - 1/2 log det H(theta) + const,

``H(theta)`` the Hessian of ``-log p`` in ``u`` (``d`` unknowns) at ``u*(theta)``: ``exact_log_marginal``.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .. import _checks
from ..optimize.gauss_newton import GaussNewton
from ..optimize.objective import Objective


ON_FAILURE = ("raise", "-inf", "lower-bound")
_CACHE = object()  # start from the nearest stored solution


class Evaluation(NamedTuple):
    """One evaluation of the mode approximation.

    ``start`` says where the inner solve began: ``"cache"`` (the nearest stored solution), ``"particle"``
    (the warm start given to ``warm_log_likelihood``), ``"u0"`` (``u0``, for ``warm_log_likelihood`` without
    a start), ``"initial"`` (the ``initial(theta)`` field) or ``"none"`` (outside the prior support, not solved).
    ``warm_start_distance`` is the distance, in unconstrained parameters, to the stored or given solution.
    """

    theta: dict
    log_density: float
    iterations: int
    grad_norm: float
    converged: bool
    message: str
    wall_time: float  # seconds, choosing the start included
    warm_start_distance: float
    start: str = "cache"


class ModeApproximation:
    """``theta -> max_u log p(u, theta | D)`` with warm starts and per-evaluation diagnostics.

    Args:
        posterior: a ``bodil.Posterior`` with at least one inferred parameter.
        init: the first starting point: a ``MAPResult`` (``fit``) or a pair ``(u0, theta0)``, ``u0`` a field
            (a forward solution or the MAP) and ``theta0`` the constrained parameters it belongs to.
        max_iter, gtol, ftol: inner Gauss-Newton stopping rules (``GaussNewton.run``; see the module doc).
        on_failure: ``"raise"``, ``"-inf"`` or ``"lower-bound"`` (keep the value reached) for inner solves
            that did not converge.
        cache_size: how many previous solutions are kept for warm starts (each is one field: for an annealed
            sampler a few times its number of particles lets every proposal start next to its seed).
        keep: optional ``keep(u, theta) -> pytree of arrays``; ``log_likelihood`` returns it as its ``extras`` so
            samplers carry, say, the field at the final time with each sample (return ``{"field": u[-1]}``:
            ``bodil.basis`` stores it as ``idata.posterior["field"]``).
        initial: optional ``initial(theta) -> u``, a field of ``u0``'s structure (e.g. a forward solve started
            at theta, ``bodil.cases.reaction_diffusion.forward_field``); each solve starts from it instead of
            the nearest stored solution when its objective is lower.
        **solver_options: passed to ``GaussNewton`` (``preconditioner``, ``cg_maxiter``...).

    Attributes:
        records: one ``Evaluation`` per call, in order.
        run_options: the inner stopping rules ``{"max_iter", "gtol", "ftol"}``; they may be changed between
            evaluations (e.g. a higher ``max_iter`` to re-solve chosen points) without recompiling.

    Example:
        >>> mode = ModeApproximation(post, fit)
        >>> mode.log_density({"omega2": 1.1})
        >>> idata = bodil.basis(mode.log_likelihood, post.params, num_samples=256, seed=0)
        >>> idata.sample_stats["converged"].mean()  # the inner solves of the final particles
    """

    def __init__(self, posterior, init, *, max_iter: int = 50, gtol: float = 1e-6,
                 ftol: float | None = None, on_failure: str = "raise", cache_size: int = 32,
                 keep: Callable | None = None, initial: Callable | None = None, **solver_options: Any):
        if not posterior.params.priors:
            raise ValueError("ModeApproximation: the posterior has no inferred parameters; give Params a prior.")
        if on_failure not in ON_FAILURE:
            raise ValueError(f"ModeApproximation: on_failure must be one of {ON_FAILURE}, got {on_failure!r}.")
        if cache_size < 1:
            raise ValueError(f"ModeApproximation: cache_size must be at least 1, got {cache_size}.")
        if initial is not None and not callable(initial):
            raise TypeError(f"ModeApproximation: initial must be a function theta -> u, got {type(initial).__name__}.")
        u0, theta0 = _checks.starting_point("ModeApproximation", init)
        self.posterior = posterior
        self.objective = Objective(posterior, u0, theta0)
        self.solver = GaussNewton(self.objective, **solver_options)
        self.n_field = self.solver.n_field
        self.run_options = dict(max_iter=max_iter, gtol=gtol, ftol=ftol)
        self.on_failure, self.cache_size, self.keep, self.initial = on_failure, cache_size, keep, initial
        self.records: list[Evaluation] = []
        x0 = self.objective.x0
        self._cache: list[tuple[np.ndarray, jax.Array]] = [(np.asarray(x0[self.n_field:]), x0)]
        self._value = jax.jit(self.objective.value)
        self._hessian_logdet = None

    # ------------------------------------------------------------------ inner solve
    def _initial_start(self, theta: dict, z_flat) -> jax.Array:
        u = self.initial({k: np.asarray(v) for k, v in theta.items()})
        u_flat = ravel_pytree(u)[0]
        if u_flat.size != self.n_field:
            raise ValueError(f"ModeApproximation: initial(theta) returned a field with {u_flat.size} values; the "
                             f"posterior's field has {self.n_field} (give a field of u0's shape).")
        return jnp.concatenate([u_flat.astype(z_flat.dtype), z_flat])

    def solve(self, theta: dict):
        """``(u*(theta), Evaluation)``: the field maximising ``log p(u, theta | D)`` and its diagnostics."""
        u, ev, _ = self._solve(theta, _CACHE)
        return u, ev

    def _solve(self, theta: dict, start: Any):
        """``(u*, Evaluation, x*)``, started from the nearest stored solution (``start = _CACHE``; the solution
        is stored), from ``u0`` (``None``) or from ``start``, a flat ``x*`` of an earlier solve (nothing stored)."""
        t0 = time.perf_counter()
        theta = {k: jnp.asarray(v, self.objective.x0.dtype) for k, v in theta.items()}
        try:
            z = self.posterior.params.unconstrain(theta)
        except ValueError:  # outside the prior's support
            ev = Evaluation({k: np.asarray(v) for k, v in theta.items()}, -math.inf, 0, math.nan, True,
                            "outside the prior support", 0.0, math.nan, "none")
            self.records.append(ev)
            return None, ev, None
        z_flat = ravel_pytree(z)[0]
        zn = np.asarray(z_flat)
        if start is _CACHE:
            dists = np.linalg.norm(np.stack([zc for zc, _ in self._cache]) - zn, axis=1)
            nearest = int(np.argmin(dists))
            x_from, distance, label = self._cache[nearest][1], float(dists[nearest]), "cache"
        else:
            x_from = self._cache[0][1] if start is None else jnp.asarray(start, self.objective.x0.dtype)
            if x_from.shape != self.objective.x0.shape:
                raise ValueError(f"ModeApproximation: a warm start must be the flat solution of an earlier solve "
                                 f"({self.objective.x0.size} values), got shape {x_from.shape}.")
            distance = float(np.linalg.norm(np.asarray(x_from[self.n_field:]) - zn))
            label = "u0" if start is None else "particle"
        x_start = jnp.concatenate([x_from[: self.n_field], z_flat])
        if self.initial is not None:
            x_init = self._initial_start(theta, z_flat)
            f_start, f_init = float(self._value(x_start)), float(self._value(x_init))
            if f_init < f_start or not math.isfinite(f_start):
                x_start, label = x_init, "initial"
        x, rep = self.solver.run(x_start, fix_theta=True, **self.run_options)
        log_density = -rep.loss
        converged = rep.converged and math.isfinite(rep.loss)
        message = rep.message if math.isfinite(rep.loss) else "non-finite log density"
        if not converged:
            if self.on_failure == "raise":
                raise RuntimeError(f"ModeApproximation: the inner MAP solve at theta="
                                   f"{ {k: np.asarray(v).tolist() for k, v in theta.items()} } did not converge "
                                   f"({message}; {rep.iterations} iterations, |grad|_inf {rep.grad_norm:.3g}). "
                                   "Raise max_iter, loosen ftol, pass initial= a better starting field, or pass "
                                   "on_failure='-inf' (zero posterior weight) or 'lower-bound' (keep the value "
                                   "reached).")
            if self.on_failure == "-inf" or not math.isfinite(rep.loss):
                log_density = -math.inf
        if start is _CACHE and math.isfinite(log_density):  # a solution whose value is used: a later warm start
            self._cache.append((zn, x))
            if len(self._cache) > self.cache_size:
                self._cache.pop(1)  # keep the starting point, drop the oldest solution
        ev = Evaluation({k: np.asarray(v) for k, v in theta.items()}, float(log_density), rep.iterations,
                        rep.grad_norm, converged, message, time.perf_counter() - t0, distance, label)
        self.records.append(ev)
        u, _ = self.objective.position(x)
        return u, ev, x

    # ------------------------------------------------------------------ densities
    def log_density(self, theta: dict) -> float:
        """``log p(u*(theta), theta | D)``: the mode approximation of ``log p(theta | D)`` (unnormalised)."""
        return self.solve(theta)[1].log_density

    def log_likelihood(self, theta: dict) -> tuple[float, Any, dict]:
        """``(log L, extras, stats)``: what a sampler that draws from the prior weighs, with what it carries.

        ``log L = log p(u*(theta), theta | D) - log p(theta)``; ``extras = keep(u*, theta)`` (``None`` without
        ``keep``); ``stats = {"converged": bool, "iterations": int}`` of the inner solve. ``bodil.basis`` stores
        ``extras`` in ``idata.posterior`` and ``stats`` in ``idata.sample_stats``, per particle.
        """
        u, ev = self.solve(theta)
        return self._likelihood(theta, u, ev)

    def warm_log_likelihood(self, theta: dict, start: Any = None):
        """``((log L, extras, stats), x*)`` with the inner solve started from ``start``: for samplers whose
        particles carry their own warm start (``bodil.basis(mode.warm_log_likelihood, ..., warm_start=True)``).

        ``start`` is the ``x*`` returned by an earlier call (the flat solution, field and unconstrained
        parameters, a numpy array) or ``None`` (start from ``u0``); ``initial(theta)`` is used instead where its
        objective is lower. Unlike ``log_likelihood`` this neither reads nor fills the shared store of
        solutions, so the value depends on ``theta`` and ``start`` only, not on the order of the calls (the
        same result on any number of workers). Outside the prior's support ``x*`` is ``start``.
        """
        u, ev, x = self._solve(theta, start)
        return self._likelihood(theta, u, ev), (start if x is None else np.asarray(x))

    def _likelihood(self, theta: dict, u, ev: Evaluation) -> tuple[float, Any, dict]:
        value = ev.log_density
        if math.isfinite(value):
            value -= float(self.posterior.params.log_prob({k: jnp.asarray(v) for k, v in theta.items()}))
        extras = None
        if self.keep is not None:
            if u is None:  # outside the prior's support: keep the starting field's, of the same shape
                u = self.objective.unravel(self._cache[0][1])[0]
            extras = jax.tree_util.tree_map(np.asarray, self.keep(u, theta))
        return value, extras, {"converged": bool(ev.converged), "iterations": int(ev.iterations)}

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
        """Counts and totals over all evaluations so far.

        ``unconverged``: inner solves that hit ``max_iter`` or a failed line search (their value is ``-inf``
        or, with ``on_failure="lower-bound"``, a lower bound); ``max_unconverged_log_density``: the highest
        value among them (compare it with the mode: far below it, their inaccuracy does not matter);
        ``from_initial``: solves started from ``initial(theta)`` rather than a stored solution;
        ``max_grad_norm`` and ``max_converged_grad_norm``: the largest final ``|grad f|_inf`` of all solves and of
        the converged ones.
        """
        recs = self.records
        solved = [r for r in recs if r.start != "none"]
        its = [r.iterations for r in solved]
        bad = [r.log_density for r in solved if not r.converged]
        return {"evaluations": len(recs), "inner_solves": len(solved),
                "unconverged": len(bad),
                "mean_inner_iterations": float(np.mean(its)) if solved else 0.0,
                "median_inner_iterations": float(np.median(its)) if solved else 0.0,
                "max_grad_norm": float(np.max([r.grad_norm for r in solved])) if solved else 0.0,
                "max_converged_grad_norm": max([r.grad_norm for r in solved if r.converged], default=0.0),
                "max_unconverged_log_density": float(np.max(bad)) if bad else -math.inf,
                "from_initial": sum(r.start == "initial" for r in solved),
                "wall_time": float(sum(r.wall_time for r in solved))}

    def __repr__(self) -> str:
        s = self.summary()
        return (f"ModeApproximation({s['evaluations']} evaluations, {s['unconverged']} unconverged, "
                f"mean inner iterations {s['mean_inner_iterations']:.3g})")
