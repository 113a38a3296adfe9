"""MAP estimation, which is ODIL: maximise ``log p(u, theta | D)`` over the field and the parameters.

Three solvers share one entry point, ``map_estimate``:

* ``"gauss-newton"`` (default): matrix-free Gauss-Newton-Krylov with a line search
  (``bodil.optimize.gauss_newton``); ``"newton-krylov"`` uses the exact Hessian instead. With
  ``strategy="auto"`` (default) problems that the time-marching preconditioner fits and that have inferred
  parameters are solved by the profile strategy (``bodil.optimize.profile``), others jointly;
* ``"lbfgs"``: ``optax.lbfgs`` with a zoom line search;
* ``"adam"``: the papers' recipe (lr 1e-3 halved on a 50-epoch plateau, min 1e-4), kept as the baseline.
"""

from __future__ import annotations

from typing import Any

from .adam import adam, adam_recipe
from .gauss_newton import gauss_newton
from .lbfgs import lbfgs
from .objective import Objective
from .preconditioner import applies_time_marching
from .profile import profile_gauss_newton
from .result import MAPResult, Report

METHODS = ("gauss-newton", "newton-krylov", "lbfgs", "adam")


def map_estimate(posterior, u0, theta0: dict | None = None, *, method: str = "gauss-newton",
                 **options: Any) -> MAPResult:
    """Maximum a posteriori estimate of ``(u, theta)`` (ODIL), warm-started from ``(u0, theta0)``.

    Args:
        posterior: a ``bodil.Posterior``.
        u0: initial field (a zero field, a forward solution, or a previous MAP for a warm start).
        theta0: initial inferred parameters (constrained); defaults to the prior means.
        method: one of ``"gauss-newton"``, ``"newton-krylov"``, ``"lbfgs"``, ``"adam"``.
        **options: passed to the solver (``max_iter``, ``gtol``, ``ftol``, ``target_loss``, ``progress``;
            ``epochs`` for Adam; ``strategy``, ``cg_maxiter``, ``preconditioner``, ``damping`` for
            Gauss-Newton).

    Returns:
        ``MAPResult`` with ``u``, ``theta`` and a ``Report`` (iterations, evaluations, loss split
        into pde/ic/data/theta, gradient norm, wall time, converged flag).
    """
    if theta0 is None:
        theta0 = posterior.initial_theta()
    obj = Objective(posterior, u0, theta0)
    if method == "gauss-newton":
        strategy = options.pop("strategy", "auto")
        if strategy not in ("auto", "joint", "profile"):
            raise ValueError(f"map_estimate: strategy must be 'auto', 'joint' or 'profile', got {strategy!r}.")
        if strategy == "auto":
            profile_fits = (posterior.params.priors and applies_time_marching(obj)
                            and options.get("preconditioner", "auto") in ("auto", "time-marching"))
            strategy = "profile" if profile_fits else "joint"
        x, report = (profile_gauss_newton if strategy == "profile" else gauss_newton)(obj, **options)
    elif method == "newton-krylov":
        x, report = gauss_newton(obj, curvature="exact", **options)
    elif method == "lbfgs":
        x, report = lbfgs(obj, **options)
    elif method == "adam":
        x, report = adam(obj, **options)
    else:
        raise ValueError(f"map_estimate: unknown method {method!r}; choose one of {METHODS}.")
    u, theta = obj.position(x)
    return MAPResult(u=u, theta=theta, report=report)


__all__ = ["METHODS", "MAPResult", "Objective", "Report", "adam", "adam_recipe", "gauss_newton", "lbfgs",
           "map_estimate", "profile_gauss_newton"]
