"""MAP estimation, which is ODIL: maximise ``log p(u, theta | D)`` over the field and the parameters.

Three solvers share one entry point, ``map_estimate``, and one iteration driver, ``bodil.optimize.iterate``
(progress meter, stopping, report):

* ``"gauss-newton"`` (default): matrix-free Gauss-Newton-Krylov with a line search
  (``bodil.optimize.gauss_newton``); ``"newton-krylov"`` uses the exact Hessian instead. With
  ``strategy="auto"`` (default) problems that the time-marching preconditioner fits and that have inferred
  parameters are solved by the profile strategy (``bodil.optimize.profile``), others jointly;
* ``"lbfgs"``: ``optax.lbfgs`` with a zoom line search;
* ``"adam"``: the papers' recipe (lr 1e-3 halved on a 50-epoch plateau, min 1e-4), kept as the baseline.
"""

from __future__ import annotations

import inspect
from typing import Any

from .. import _checks
from .adam import adam, adam_recipe
from .gauss_newton import GaussNewton, gauss_newton, levenberg_marquardt
from .iterate import Outcome, Stop, iterate
from .lbfgs import lbfgs
from .objective import Objective
from .preconditioner import applies_time_marching
from .profile import profile_gauss_newton
from .result import MAPNotConverged, MAPResult, Report

METHODS = ("gauss-newton", "newton-krylov", "lbfgs", "adam")
STRATEGIES = ("auto", "joint", "profile")


def _keywords(*functions) -> set[str]:
    return {name for fn in functions for name, p in inspect.signature(fn).parameters.items()
            if p.kind is p.KEYWORD_ONLY}


# The options each solver takes (its keyword arguments; Gauss-Newton's include those of ``GaussNewton``).
SOLVERS = {"joint": (gauss_newton, _keywords(gauss_newton, GaussNewton)),
           "profile": (profile_gauss_newton, _keywords(profile_gauss_newton, GaussNewton)),
           "newton-krylov": (gauss_newton, _keywords(gauss_newton, GaussNewton) - {"curvature"}),
           "lbfgs": (lbfgs, _keywords(lbfgs)),
           "adam": (adam, _keywords(adam))}


def map_estimate(posterior, u0, theta0: dict | None = None, *, method: str = "gauss-newton", throw: bool = True,
                 **options: Any) -> MAPResult:
    """Maximum a posteriori estimate of ``(u, theta)`` (ODIL), warm-started from ``(u0, theta0)``.

    Args:
        posterior: a ``bodil.Posterior``.
        u0: initial field (a zero field, a forward solution, or a previous MAP for a warm start).
        theta0: initial inferred parameters (constrained); defaults to the prior means.
        method: one of ``"gauss-newton"``, ``"newton-krylov"``, ``"lbfgs"``, ``"adam"``.
        throw: raise ``MAPNotConverged`` when the solver stops before a stopping rule is met (``False``:
            return the unconverged result; ``report.converged`` says which it is).
        **options: passed to the solver (``max_iter``, ``gtol``, ``ftol``, ``target_loss``, ``progress``;
            ``epochs`` for Adam; ``strategy``, ``cg_maxiter``, ``preconditioner``, ``damping`` for
            Gauss-Newton). ``progress`` is ``True``, ``False`` or a ``bodil.progress`` meter.

    Returns:
        ``MAPResult`` with ``u``, ``theta`` and a ``Report`` (iterations, evaluations, loss split
        into pde/ic/data/theta, gradient norm, wall time, converged flag).

    Raises:
        ValueError: an unknown ``method`` or ``strategy``; a starting point that does not fit the posterior.
        TypeError: an option the chosen solver does not take (the message lists those it takes).
        MAPNotConverged: with ``throw=True``, a solve that did not converge; its ``result`` is the point reached.
    """
    _checks.choice("map_estimate", "method", method, METHODS)
    if theta0 is None:
        theta0 = posterior.initial_theta()
    obj = Objective(posterior, u0, theta0)
    solver = method
    if method == "gauss-newton":
        strategy = _checks.choice("map_estimate", "strategy", options.pop("strategy", "auto"), STRATEGIES)
        if strategy == "auto":
            profile_fits = (posterior.params.priors and applies_time_marching(obj)
                            and options.get("preconditioner", "auto") in ("auto", "time-marching"))
            strategy = "profile" if profile_fits else "joint"
        solver = strategy
    run, known = SOLVERS[solver]
    where = f"map_estimate(method={method!r}" + (f", strategy {solver!r})" if method == "gauss-newton" else ")")
    _checks.no_unknown(where, options, known | ({"strategy"} if method == "gauss-newton" else set()))
    if method == "newton-krylov":
        options["curvature"] = "exact"
    x, report = run(obj, **options)
    u, theta = obj.position(x)
    result = MAPResult(u=u, theta=theta, report=report)
    if throw and not report.converged:
        raise MAPNotConverged(_not_converged(report, method, run, options), result)
    return result


def _not_converged(report: Report, method: str, run, options: dict) -> str:
    """What failed and how to fix it, for ``MAPNotConverged``."""
    gtol = options.get("gtol", inspect.signature(run).parameters["gtol"].default)
    others = ", ".join(repr(m) for m in METHODS if m != method)
    fix = ("Adam's recipe has no convergence test of its own: give gtol or target_loss, raise epochs"
           if method == "adam" else "Raise max_iter, loosen gtol or ftol")
    return (f"map_estimate: the {report.method} solve did not converge ({report.message}) after "
            f"{report.iterations} iterations; |grad|_inf {report.grad_norm:.3g} against gtol {gtol:g}, loss "
            f"{report.loss:.10g}. {fix}, start closer (a forward solution or an earlier MAP as u0), try another "
            f"method ({others}), or pass throw=False to get the unconverged result (it is also this "
            f"exception's .result).")


__all__ = ["METHODS", "MAPNotConverged", "MAPResult", "Objective", "Outcome", "Report", "Stop", "adam",
           "adam_recipe", "gauss_newton", "iterate", "lbfgs", "levenberg_marquardt", "map_estimate",
           "profile_gauss_newton"]
