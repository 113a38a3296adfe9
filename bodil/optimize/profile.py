"""The profile (reduced-space) strategy: maximise over the parameters the field-maximised posterior.

    z* = argmin_z F(z),   F(z) = min_u f(u, z),   grad F(z) = d_z f(u*(z), z)   (envelope theorem)

The inner minimisation over the field is the preconditioned Gauss-Newton solve with the parameters held
fixed (``bodil.optimize.gauss_newton.GaussNewton`` with ``fix_theta=True``), warm-started from the
previous field; the outer one is L-BFGS-B (``scipy.optimize``) over the few unconstrained parameters. The
joint MAP and the profile MAP are the same point; the profile path is robust where the parameters move a
whole structure (a tumour's origin), which a joint Newton step on a stiff space-time system handles poorly.

The outer loop is scipy's, so for the driver (``bodil.optimize.iterate``) the whole outer minimisation is one
step; it advances the progress meter once per outer iteration and shows the last inner solve.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from ..progress import ProgressMeter
from .gauss_newton import GaussNewton
from .iterate import Outcome, Stop, iterate
from .objective import Objective


class _Stopped(Exception):
    """Raised inside scipy's outer loop to end it between two evaluations (target reached, budget spent)."""

    def __init__(self, message: str, success: bool):
        super().__init__(message)
        self.message, self.success = message, success


class ProfileState(NamedTuple):
    x: jax.Array
    iterations: int  # outer L-BFGS-B iterations
    inner_iterations: tuple  # per outer evaluation
    unconverged: int  # inner solves that hit inner_max_iter
    evaluations: dict
    history: tuple  # the loss of each outer evaluation
    outer: scipy.optimize.OptimizeResult | None  # None before the outer minimisation ran


@dataclasses.dataclass(frozen=True)
class Profile:
    """The profile strategy as a solver for ``bodil.optimize.iterate`` (arguments: ``profile_gauss_newton``)."""

    gn: GaussNewton
    gtol: float
    ftol: float
    target_loss: float | None
    inner_max_iter: int
    inner_gtol: float
    outer_step: float
    method: str = "gauss-newton (profile)"

    @property
    def obj(self) -> Objective:
        return self.gn.obj

    @staticmethod
    def max_evaluations_for(iterations: int) -> int:
        """Outer evaluations (inner solves) allowed for ``iterations`` outer iterations: two per iteration and
        one for the start, so ``max_iter`` bounds the work at ``(2 max_iter + 1) inner_max_iter`` Gauss-Newton
        iterations (L-BFGS-B's line search otherwise may evaluate without limit within one iteration)."""
        return 2 * int(iterations) + 1

    def init(self, x0) -> ProfileState:
        return ProfileState(x0, 0, (), 0, {"fun": 0, "grad": 0, "jvp": 0, "vjp": 0}, (), None)

    def inner(self, x, z):
        """The field-only solve at unconstrained parameters ``z``, started from ``x``'s field."""
        x = x.at[self.gn.n_field:].set(jnp.asarray(z, x.dtype))
        return self.gn.run(x, fix_theta=True, max_iter=self.inner_max_iter, gtol=self.inner_gtol,
                           target_loss=self.target_loss)

    def step(self, state: ProfileState, budget: int, tick) -> ProfileState:
        n_u, scale = self.gn.n_field, self.outer_step
        evals = {"x": state.x, "inner": [], "unconverged": 0, "evaluations": dict(state.evaluations), "history": [],
                 "best": (np.inf, state.x)}

        def fun(w):
            if len(evals["inner"]) >= max_evaluations:
                raise _Stopped(f"maximum number of outer evaluations ({max_evaluations}) reached", False)
            x, rep = self.inner(evals["x"], w * scale)
            evals["x"] = x
            evals["inner"].append(rep.iterations)
            evals["unconverged"] += 0 if rep.converged else 1
            for k, v in rep.evaluations.items():
                evals["evaluations"][k] += v
            evals["history"].append(rep.loss)
            if rep.loss < evals["best"][0]:
                evals["best"] = (rep.loss, x)
            tick(0, loss=rep.loss, inner=rep.iterations)
            if self.target_loss is not None and rep.loss <= self.target_loss:
                raise _Stopped("target loss reached", True)
            g = np.asarray(self.gn.gradient(x)[n_u:], dtype=np.float64)
            return float(rep.loss), g * scale

        z0 = np.asarray(state.x[n_u:], dtype=np.float64)
        max_evaluations = self.max_evaluations_for(budget)
        iterations = [0]

        def callback(_):
            iterations[0] += 1
            tick(1)

        try:
            res = scipy.optimize.minimize(fun, z0 / scale, jac=True, method="L-BFGS-B", callback=callback,
                                          options={"maxiter": budget, "gtol": self.gtol * scale, "ftol": self.ftol})
        except _Stopped as stop:  # the best evaluation's field and parameters are the result
            evals["x"] = evals["best"][1]
            res = scipy.optimize.OptimizeResult(x=np.asarray(evals["x"][n_u:], np.float64) / scale,
                                                success=stop.success, message=stop.message, nit=iterations[0],
                                                nfev=len(evals["inner"]))
        x = evals["x"]
        z_best = res.x * scale
        if not np.allclose(np.asarray(x[n_u:], np.float64), z_best):  # the last evaluation was not the optimum
            x, _ = self.gn.run(x.at[n_u:].set(jnp.asarray(z_best, x.dtype)), fix_theta=True,
                               max_iter=self.inner_max_iter, gtol=self.inner_gtol)
        return ProfileState(x, state.iterations + int(res.nit), (*state.inner_iterations, *evals["inner"]),
                            state.unconverged + evals["unconverged"], evals["evaluations"],
                            (*state.history, *evals["history"]), res)

    def terminate(self, state: ProfileState) -> Stop | None:
        if state.outer is None:
            return None
        message = str(state.outer.message) + ("" if state.unconverged == 0 else
                                              f"; {state.unconverged} inner solve(s) hit inner_max_iter")
        return Stop(bool(state.outer.success) and state.unconverged == 0, message)

    def postprocess(self, state: ProfileState, stop: Stop) -> Outcome:
        extra = {"inner_iterations": list(state.inner_iterations), "outer_evaluations": int(state.outer.nfev)}
        return Outcome(state.x, self.gn.gradient(state.x), stop.message, dict(state.evaluations),
                       list(state.history), extra)


def profile_gauss_newton(obj: Objective, *, max_iter: int = 50, gtol: float = 1e-6, ftol: float | None = None,
                         target_loss: float | None = None,
                         inner_max_iter: int = 50, inner_gtol: float | None = None, outer_step: float = 0.05,
                         progress: bool | ProgressMeter = False, **options):
    """Minimise ``obj`` by the profile strategy; returns ``(x, Report)``.

    Args:
        max_iter: outer L-BFGS-B iterations; at most ``2 max_iter + 1`` outer evaluations (inner solves) run, so
            the work is bounded by ``(2 max_iter + 1) inner_max_iter`` Gauss-Newton iterations.
        gtol: tolerance on the largest reduced-gradient component (outer) and on the field gradient.
        ftol: relative tolerance on the outer loss change (default ``1e-12`` in float64, ``1e-6`` else).
        inner_max_iter: iteration limit of each inner Gauss-Newton solve.
        inner_gtol: gradient tolerance of the inner solves (defaults to ``gtol``).
        outer_step: length, in unconstrained units, of L-BFGS-B's first trial step (it rescales the
            parameters by ``1 / outer_step``). Warm starts only help when the parameters move a little at a
            time; the default moves a logit-transformed position by about 1% of its range.
        progress: ``True``, ``False`` or a ``bodil.progress`` meter (one unit per outer iteration).
        **options: passed to ``GaussNewton`` (``cg_maxiter``, ``preconditioner``...).
    """
    if ftol is None:
        ftol = 1e-12 if obj.x0.dtype == jnp.float64 else 1e-6
    solver = Profile(GaussNewton(obj, **options), gtol, ftol, target_loss, inner_max_iter,
                     gtol if inner_gtol is None else inner_gtol, outer_step)
    return iterate(solver, obj.x0, max_iter=max_iter, progress=progress)
