"""Matrix-free Gauss-Newton-Krylov MAP solver.

With ``f(x) = 0.5 |R(x)|^2 + S(x)`` (least-squares blocks ``R`` and scalar blocks ``S``), each iteration

1. linearises ``R`` at ``x`` (``jax.linearize``) and forms ``g = J^T R + grad S``;
2. solves ``(J^T J + H_S + mu I) p = -g`` by truncated preconditioned CG, where ``J p`` is a ``jvp``,
   ``J^T q`` its transpose and ``H_S p`` a forward-over-reverse Hessian-vector product
   (``curvature="exact"`` uses the exact Hessian instead: Newton-Krylov). No matrix is ever formed;
3. backtracks along ``p`` until the Armijo condition ``f(x + t p) <= f(x) + c t g.p`` holds.

``mu`` is ``damping``: fixed (default 0, plain Gauss-Newton), or with ``adaptive_damping=True`` the
Levenberg-Marquardt rule of a trust region, started at ``damping``: after each step the ratio
``rho = (f(x) - f(x + p)) / (-g.p - p.H p / 2)`` of the actual to the predicted decrease of the full step
divides ``mu`` by 3 when ``rho > 3/4`` and doubles it when ``rho < 1/4``. Where the quadratic model is poor
far from the optimum (sigmoid or hinge likelihoods whose curvature switches on as a voxel crosses a
threshold) the damped steps turn towards the gradient instead of being cut back along an overshooting
Gauss-Newton direction; near the optimum ``mu`` falls away and the steps become Gauss-Newton steps again.
The update is the pure function ``levenberg_marquardt``; a rejected step is retried from the same point with
at least twice the damping.

The CG tolerance follows the forcing sequence ``eta_k = min(eta_max, sqrt(|g_k| / |g_0|))``: loose far from
the solution, tight near it. For a quadratic ``f`` (linear residuals, Gaussian data) pass ``eta_max=0`` so
the first CG solve runs to ``cg_rtol`` and one step lands on the minimiser.

Preconditioners (``preconditioner=``): ``"auto"`` picks the time-marching preconditioner of
``bodil.optimize.preconditioner`` for Crank-Nicolson reaction-diffusion fields (exact inverse of the PDE
and initial-condition curvature) when only the field moves, and none otherwise; ``"time-marching"``, ``None`` or a
callable ``(objective, x, matvec) -> (r -> P r)`` choose explicitly. Where a time step is too long for the
reaction (``rho (1 - 2u) dt > REACTION_CAP`` of that module) the time-marching preconditioner is approximate;
``report.extra["preconditioner_capped"]`` counts those space-time points per iteration and the message says so.

With ``fix_theta=True`` only the field moves (the parameters stay at their starting values): the inner solve
of the profile strategy (``bodil.optimize.profile``) and of the mode approximation.

Bounds on the field (``bounds=(lower, upper)``; default ``"auto"``: the posterior's ``field_bounds`` attribute
if it has one, e.g. the tumour posterior's ``[0, 1]``, else none) make each step a projected Newton step
(Bertsekas 1982): the field values within ``bound_eps`` of a bound (the epsilon-active set) whose gradient
does not point into the box by more than ``gtol`` are held where they are (the active set); the Gauss-Newton
system is solved for the others, with the time-marching preconditioner restricted to them
(``B_FF^{-1} B_FF^{-T}``: it inverts the PDE and IC curvature among the free values except the rows of held
points next to free ones); and the line search follows the
projected path ``P(x + t p)``, ``P`` the clip to the box,
with the Armijo condition ``f(P(x + t p)) <= f(x) + c g.(P(x + t p) - x)``. Every iterate, the start
included (it is clipped), lies in the box; the gradient in the stopping rule and the report is the
projected gradient (zero in the active components), which vanishes at a constrained minimum. Without
bounds nothing changes. ``bound_eps`` (default ``1e-6``, in the field's units) keeps values that sit a rounding
error inside a bound from each forming their own small free region: the held set stays in one piece, and the
restricted preconditioner stays close to the inverse; a held value may stay up to ``bound_eps`` inside the box.
See docs/maths.md, "Non-negative concentrations".

Stops when ``|g|_inf <= gtol``; when the decrease predicted by a converged CG step, ``-g.p`` (the Newton
decrement), or the actual decrease is below ``ftol * max(|f|, 1)``; when ``f <= target_loss``; or after
``max_iter`` iterations.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..progress import ProgressMeter
from .cg import truncated_cg
from .iterate import Outcome, Stop, iterate
from .objective import Objective
from .preconditioner import REACTION_CAP, capped_points, time_marching_preconditioner

PRECONDITIONERS = ("auto", "time-marching", None)


class GNStep(NamedTuple):
    x: jax.Array
    loss: jax.Array
    new_loss: jax.Array
    grad_inf: jax.Array
    accepted: jax.Array
    cg_iterations: jax.Array
    cg_converged: jax.Array
    linesearch_evals: jax.Array
    predicted_decrease: jax.Array
    model_ratio: jax.Array  # actual / predicted decrease of the full step (the trust-region ratio)
    capped: jax.Array  # space-time points where the time-marching preconditioner is approximate (0 without it)


class GaussNewton:
    """A compiled Gauss-Newton-Krylov solver for one ``Objective``; ``run`` may be called many
    times (warm starts, profile and mode-approximation loops) without recompiling."""

    def __init__(self, obj: Objective, *, curvature: str = "gauss-newton", damping: float = 0.0,
                 adaptive_damping: bool = False, cg_maxiter: int = 500, cg_rtol: float = 1e-10,
                 eta_max: float = 0.1, max_backtracks: int = 30, armijo: float = 1e-4, preconditioner="auto",
                 bounds="auto", bound_eps: float = 1e-6):
        if curvature not in ("gauss-newton", "exact"):
            raise ValueError(f"gauss_newton: curvature must be 'gauss-newton' or 'exact', got {curvature!r}.")
        if not damping >= 0:
            raise ValueError(f"gauss_newton: damping must be >= 0, got {damping!r}.")
        if adaptive_damping and damping <= 0:
            raise ValueError("gauss_newton: adaptive_damping needs a positive starting damping= (the scale of "
                             "the curvature per unknown, e.g. 0.1 / sigma^2 for a sigmoid likelihood of width "
                             "sigma).")
        if not (preconditioner in PRECONDITIONERS or callable(preconditioner)):
            raise ValueError(f"gauss_newton: preconditioner must be one of {PRECONDITIONERS} or a callable, "
                             f"got {preconditioner!r}.")
        self.obj, self.curvature = obj, curvature
        self.bounds = field_bounds(obj, bounds)
        if not bound_eps >= 0:
            raise ValueError(f"gauss_newton: bound_eps must be >= 0, got {bound_eps!r}.")
        self.bound_eps = float(bound_eps)
        self.adaptive_damping = bool(adaptive_damping)
        self.options = dict(damping=damping, cg_maxiter=cg_maxiter, cg_rtol=cg_rtol, eta_max=eta_max,
                            max_backtracks=max_backtracks, armijo=armijo)
        self.preconditioner = preconditioner
        self._steps = {fix: jax.jit(self._make_step(fix)) for fix in (False, True)}  # (x, |g0|, mu, gtol) -> GNStep
        self._grad = jax.jit(jax.grad(obj.value))
        u, _ = obj.unravel(obj.x0)
        self.n_field = sum(leaf.size for leaf in jax.tree.leaves(u))

    def _make_step(self, fix_theta: bool):
        obj, opts = self.obj, self.options
        residual, scalar, value = obj.residual, obj.scalar, obj.value
        armijo = opts["armijo"]

        bounded = self.bounds is not None

        def step(x, g0_norm, damping, gtol):
            in_field = jnp.arange(x.size) < self.n_field
            mask = in_field.astype(x.dtype) if fix_theta else None
            fix = (lambda v: v * mask) if fix_theta else (lambda v: v)
            r, jvp = jax.linearize(residual, x)
            vjp = jax.linear_transpose(jvp, x)
            s_val, s_grad = jax.value_and_grad(scalar)(x)
            loss = 0.5 * sum(jnp.sum(jnp.square(v)) for v in jax.tree.leaves(r)) + s_val
            g = fix(vjp(r)[0] + s_grad)
            if bounded:  # projected Newton: hold the active set, solve for the free values (module docstring)
                lower, upper = self._box(x)
                eps = self.bound_eps
                active = ((x <= lower + eps) & (g > -gtol)) | ((x >= upper - eps) & (g < gtol))
                free = (~active).astype(x.dtype)
                project = (lambda v: fix(v) * free)
                clip = (lambda v: jnp.clip(v, lower, upper))
            else:
                project, clip = fix, (lambda v: v)
            g = project(g)  # the projected gradient: zero in the active components
            g_norm = jnp.linalg.norm(g)

            if self.curvature == "exact":
                def curvature(p):
                    return jax.jvp(jax.grad(value), (x,), (p,))[1]
            else:
                def curvature(p):
                    return vjp(jvp(p))[0] + jax.jvp(jax.grad(scalar), (x,), (p,))[1]

            def matvec(p):
                return project(curvature(project(p))) + damping * p

            def curvature_fixed(p):  # the curvature along a step p (zero outside the moving block)
                return fix(curvature(fix(p)))

            eta = jnp.minimum(opts["eta_max"], jnp.sqrt(g_norm / jnp.maximum(g0_norm, jnp.finfo(x.dtype).tiny)))
            tol = jnp.maximum(eta, opts["cg_rtol"]) * g_norm
            precondition, capped = None, jnp.zeros((), jnp.int32)
            # In a joint solve with parameters the time-marching block inverse is no better than none (measured);
            # "auto" uses it for field-only solves.
            joint_with_theta = not fix_theta and self.n_field < x.size
            if self.preconditioner == "time-marching" or (self.preconditioner == "auto" and not joint_with_theta):
                precondition = time_marching_preconditioner(obj, x, matvec, fix_theta=fix_theta,
                                                            free=free if bounded else None)
                if precondition is None and self.preconditioner == "time-marching":
                    raise ValueError("gauss_newton: the time-marching preconditioner needs a single field on a "
                                     "space-time grid and a reaction_diffusion residual.")
                if precondition is not None:
                    capped = capped_points(obj, x).astype(jnp.int32)
            elif callable(self.preconditioner):
                precondition = self.preconditioner(obj, x, matvec)
            if bounded and precondition is not None:  # restricted to the free values, identity on the active
                precondition_free = precondition

                def precondition(v):
                    return project(precondition_free(project(v))) + (1.0 - free) * v
            p, info = truncated_cg(matvec, -g, tol, opts["cg_maxiter"], precondition)
            p = project(p)
            decrement = -jnp.vdot(g, p)  # the Newton decrement of the free values (of all without bounds)

            def point(t):  # the projected path; x + t p without bounds
                return clip(x + t * p)

            def armijo_ok(t, f_new):
                return jnp.isfinite(f_new) & (f_new <= loss + armijo * jnp.vdot(g, point(t) - x))

            def ls_cond(state):
                t, f_new, k = state
                return ~armijo_ok(t, f_new) & (k < opts["max_backtracks"])

            def ls_body(state):
                t, _, k = state
                t = 0.5 * t
                return t, value(point(t)), k + 1

            f_full = value(point(1.0))
            t, f_new, k = jax.lax.while_loop(ls_cond, ls_body, (jnp.ones((), x.dtype), f_full, jnp.zeros((), jnp.int32)))
            x_try = point(t)
            accepted = armijo_ok(t, f_new) & (jnp.vdot(g, x_try - x) < 0)
            x_new = jnp.where(accepted, x_try, x)
            if self.adaptive_damping:  # one more curvature product, only when the ratio is used
                d = point(1.0) - x
                predicted = -jnp.vdot(g, d) - 0.5 * jnp.vdot(d, curvature_fixed(d))
                ratio = jnp.where(jnp.isfinite(f_full),
                                  (loss - f_full) / jnp.where(predicted > 0, predicted, jnp.inf), -jnp.inf)
            else:
                ratio = jnp.full((), jnp.nan, x.dtype)
            return GNStep(x_new, loss, jnp.where(accepted, f_new, loss), jnp.max(jnp.abs(g)), accepted,
                          info.iterations, info.residual_norm <= tol, k + 1, decrement, ratio, capped)

        return step

    def _box(self, x):
        """Per-entry lower and upper bounds of ``x`` (the field's bounds; none on the parameters)."""
        lo, up = self.bounds
        in_field = jnp.arange(x.size) < self.n_field
        return jnp.where(in_field, lo, -jnp.inf).astype(x.dtype), jnp.where(in_field, up, jnp.inf).astype(x.dtype)

    def clip(self, x):
        """``x`` with its field clipped to the bounds (``x`` itself without bounds)."""
        if self.bounds is None:
            return x
        return jnp.clip(x, *self._box(x))

    def gradient(self, x):
        """``grad f(x)``, compiled once (all of it: field and parameters)."""
        return self._grad(x)

    def projected_gradient(self, x):
        """The gradient with the components that push a field value at its bound out of the box zeroed: zero
        at a minimum of ``f`` over the box (``gradient(x)`` without bounds)."""
        g = self._grad(x)
        if self.bounds is None:
            return g
        lower, upper = self._box(x)
        return jnp.where(((x <= lower) & (g > 0)) | ((x >= upper) & (g < 0)), 0.0, g)

    def run(self, x0=None, *, fix_theta: bool = False, max_iter: int = 100, gtol: float = 1e-6,
            ftol: float | None = None, target_loss: float | None = None, progress: bool | ProgressMeter = False):
        """Iterate from ``x0`` (default: the objective's start); returns ``(x, Report)``.

        Stopping rules: see the module docstring (``ftol`` defaults to ``1e-12`` in float64, ``1e-6`` else).
        """
        x = self.clip(self.obj.x0 if x0 is None else x0)
        if ftol is None:
            ftol = 1e-12 if x.dtype == jnp.float64 else 1e-6
        return iterate(GaussNewtonRun(self, bool(fix_theta), gtol, ftol, target_loss), x, max_iter=max_iter,
                       progress=progress)


def field_bounds(obj: Objective, bounds="auto"):
    """The bounds on the field: ``None`` or a pair of floats ``(lower, upper)`` (``-inf``/``inf`` for a side
    without one). ``bounds="auto"`` takes the posterior's ``field_bounds`` attribute (``None`` if it has none);
    ``None`` means no bounds; a pair ``(lower, upper)`` (either may be ``None``) bounds every field value."""
    if isinstance(bounds, str):
        if bounds != "auto":
            raise ValueError(f"gauss_newton: bounds must be 'auto', None or a pair (lower, upper), got {bounds!r}.")
        bounds = getattr(obj.posterior, "field_bounds", None)
    if bounds is None:
        return None
    try:
        lo, up = bounds
        lo = -float("inf") if lo is None else float(lo)
        up = float("inf") if up is None else float(up)
    except (TypeError, ValueError):
        raise ValueError(f"gauss_newton: bounds must be 'auto', None or a pair of numbers (lower, upper), got "
                         f"{bounds!r}.") from None
    if not lo < up:
        raise ValueError(f"gauss_newton: bounds need lower < upper, got ({lo}, {up}).")
    return (lo, up)


def levenberg_marquardt(damping: float, start: float, ratio: float, informative: bool,
                        accepted: bool) -> tuple[float, bool]:
    """The damping after a step taken with ``damping``: ``(next damping, retry)``.

    With the trust-region ratio ``rho`` (actual over predicted decrease of the full step; ``informative`` when
    the predicted decrease is above rounding in ``f``), ``mu / 3`` (not below ``1e-12 start``) when
    ``rho > 3/4``, ``2 mu`` when ``rho < 1/4``. A rejected step is retried from the same point (``retry``) with
    at least twice the damping while that stays below ``1e12 start``.
    """
    mu = damping
    if informative:
        if ratio > 0.75:
            mu = max(damping / 3.0, 1e-12 * start)
        elif ratio < 0.25:
            mu = 2.0 * damping
    if not accepted and mu < 1e12 * start:
        return max(mu, 2.0 * damping), True
    return mu, False


class GNState(NamedTuple):
    x: jax.Array
    g0_norm: jax.Array  # |g| at the start, the scale of the forcing sequence
    g0_inf: float
    damping: float  # mu for the next step
    iterations: int
    last: GNStep | None  # the last step's diagnostics
    retry: bool  # the last step was rejected and is retried with more damping
    linesearch_evals: int
    history: tuple  # per step: the loss at its start
    cg_iterations: tuple
    damping_used: tuple
    capped: tuple


@dataclasses.dataclass(frozen=True)
class GaussNewtonRun:
    """One run of a ``GaussNewton`` with its stopping rules: the solver ``bodil.optimize.iterate`` drives."""

    gn: GaussNewton
    fix_theta: bool
    gtol: float
    ftol: float
    target_loss: float | None

    @property
    def obj(self) -> Objective:
        return self.gn.obj

    @property
    def method(self) -> str:
        return "gauss-newton" if self.gn.curvature == "gauss-newton" else "newton-krylov"

    def _gradient(self, x):
        g = self.gn.projected_gradient(x)
        return g.at[self.gn.n_field:].set(0.0) if self.fix_theta else g

    def init(self, x0) -> GNState:
        g0 = self._gradient(x0)
        return GNState(x0, jnp.linalg.norm(g0), float(jnp.max(jnp.abs(g0))), self.gn.options["damping"], 0, None,
                       False, 0, (), (), (), ())

    def step(self, state: GNState, budget: int, tick) -> GNState:
        x, mu = state.x, state.damping
        out = self.gn._steps[self.fix_theta](x, state.g0_norm, jnp.asarray(mu, x.dtype),
                                             jnp.asarray(self.gtol, x.dtype))
        loss, k = float(out.loss), int(out.cg_iterations)
        tick(1, loss=float(out.new_loss), cg=k)
        retry = False
        if self.gn.adaptive_damping:
            informative = float(out.predicted_decrease) > 1e-13 * max(abs(loss), 1.0)
            mu, retry = levenberg_marquardt(mu, self.gn.options["damping"], float(out.model_ratio), informative,
                                            bool(out.accepted))
        return GNState(out.x, state.g0_norm, state.g0_inf, mu, state.iterations + 1, out, retry,
                       state.linesearch_evals + int(out.linesearch_evals), (*state.history, loss),
                       (*state.cg_iterations, k), (*state.damping_used, state.damping),
                       (*state.capped, int(out.capped)))

    def terminate(self, state: GNState) -> Stop | None:
        out = state.last
        if out is None:
            return Stop(True, "gradient norm below gtol at the start") if state.g0_inf <= self.gtol else None
        loss, new_loss, cg_converged = float(out.loss), float(out.new_loss), bool(out.cg_converged)
        if float(out.grad_inf) <= self.gtol:
            return Stop(True, "gradient norm below gtol")
        # a small damped step is no sign of a minimum
        trusted = not self.gn.adaptive_damping or state.damping_used[-1] <= self.gn.options["damping"]
        if trusted and cg_converged and float(out.predicted_decrease) <= self.ftol * max(abs(loss), 1.0):
            return Stop(True, "predicted decrease below ftol (Newton decrement)")
        if not bool(out.accepted):
            return None if state.retry else Stop(False, "line search failed to decrease the loss")
        if self.target_loss is not None and new_loss <= self.target_loss:
            return Stop(True, "target loss reached")
        if loss - new_loss <= self.ftol * max(abs(new_loss), 1.0) and cg_converged:
            return Stop(True, "relative loss change below ftol")
        return None

    def postprocess(self, state: GNState, stop: Stop) -> Outcome:
        message, capped = stop.message, max(state.capped, default=0)
        if capped > 0:
            message += (f"; the time-marching preconditioner was approximate at up to {capped} of "
                        f"{self.gn.n_field} space-time points, where rho (1 - 2u) dt > {REACTION_CAP} (a time step "
                        f"with rho dt <= {REACTION_CAP} makes it exact)")
        products = sum(state.cg_iterations) + state.iterations
        evaluations = {"fun": state.linesearch_evals, "grad": state.iterations + 2, "jvp": products, "vjp": products}
        extra = {"cg_iterations": list(state.cg_iterations), "damping": list(state.damping_used),
                 "preconditioner_capped": list(state.capped)}
        return Outcome(state.x, self._gradient(state.x), message, evaluations, list(state.history), extra)


def gauss_newton(obj: Objective, *, max_iter: int = 100, gtol: float = 1e-6, ftol: float | None = None,
                 target_loss: float | None = None, fix_theta: bool = False, progress: bool | ProgressMeter = False,
                 **options):
    """Run Gauss-Newton-Krylov from ``obj.x0``; returns ``(x, Report)``. See the module docstring."""
    solver = GaussNewton(obj, **options)
    return solver.run(max_iter=max_iter, gtol=gtol, ftol=ftol, target_loss=target_loss, fix_theta=fix_theta,
                      progress=progress)
