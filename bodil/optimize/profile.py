"""The profile (reduced-space) strategy: maximise over the parameters the field-maximised posterior.

    z* = argmin_z F(z),   F(z) = min_u f(u, z),   grad F(z) = d_z f(u*(z), z)   (envelope theorem)

The inner minimisation over the field is the preconditioned Gauss-Newton solve with the parameters held
fixed (``bodil.optimize.gauss_newton.GaussNewton`` with ``fix_theta=True``), warm-started from the
previous field; the outer one is L-BFGS-B (``scipy.optimize``) over the few unconstrained parameters. The
joint MAP and the profile MAP are the same point; the profile path is robust where the parameters move a
whole structure (a tumour's origin), which a joint Newton step on a stiff space-time system handles poorly.
"""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np
import scipy.optimize
from tqdm.auto import tqdm

from .gauss_newton import GaussNewton
from .objective import Objective
from .result import Report


class _TargetReached(Exception):
    pass


def profile_gauss_newton(obj: Objective, *, max_iter: int = 50, gtol: float = 1e-6, ftol: float | None = None,
                         target_loss: float | None = None,
                         inner_max_iter: int = 50, inner_gtol: float | None = None, outer_step: float = 0.05,
                         progress: bool = False, **options):
    """Minimise ``obj`` by the profile strategy; returns ``(x, Report)``.

    Args:
        max_iter: outer L-BFGS-B iterations.
        gtol: tolerance on the largest reduced-gradient component (outer) and on the field gradient.
        ftol: relative tolerance on the outer loss change (default ``1e-12`` in float64, ``1e-6`` else).
        inner_max_iter: iteration limit of each inner Gauss-Newton solve.
        inner_gtol: gradient tolerance of the inner solves (defaults to ``gtol``).
        outer_step: length, in unconstrained units, of L-BFGS-B's first trial step (it rescales the
            parameters by ``1 / outer_step``). Warm starts only help when the parameters move a little at a
            time; the default moves a logit-transformed position by about 1% of its range.
        **options: passed to ``GaussNewton`` (``cg_maxiter``, ``preconditioner``...).
    """
    solver = GaussNewton(obj, **options)
    n_u = solver.n_field
    dtype = obj.x0.dtype
    if ftol is None:
        ftol = 1e-12 if dtype == jnp.float64 else 1e-6
    inner_gtol = gtol if inner_gtol is None else inner_gtol
    state = {"x": obj.x0, "inner": [], "evaluations": {"fun": 0, "grad": 0, "jvp": 0, "vjp": 0}, "history": [],
             "unconverged": 0}
    start = time.perf_counter()
    bar = tqdm(desc="profile gauss-newton", disable=not progress, leave=False)

    def fun(w):
        z = w * outer_step
        x = state["x"].at[n_u:].set(jnp.asarray(z, dtype))
        x, rep = solver.run(x, fix_theta=True, max_iter=inner_max_iter, gtol=inner_gtol, target_loss=target_loss)
        state["x"] = x
        state["inner"].append(rep.iterations)
        state["unconverged"] += 0 if rep.converged else 1
        for k, v in rep.evaluations.items():
            state["evaluations"][k] += v
        state["history"].append(rep.loss)
        bar.update(1)
        bar.set_postfix(loss=f"{rep.loss:.8g}", inner=rep.iterations)
        if target_loss is not None and rep.loss <= target_loss:
            raise _TargetReached
        g = np.asarray(solver._grad(x)[n_u:], dtype=np.float64)
        return float(rep.loss), g * outer_step

    z0 = np.asarray(obj.x0[n_u:], dtype=np.float64)
    try:
        res = scipy.optimize.minimize(fun, z0 / outer_step, jac=True, method="L-BFGS-B",
                                      options={"maxiter": max_iter, "gtol": gtol * outer_step, "ftol": ftol})
    except _TargetReached:
        res = scipy.optimize.OptimizeResult(x=np.asarray(state["x"][n_u:], np.float64) / outer_step, success=True,
                                            message="target loss reached", nit=len(state["inner"]),
                                            nfev=len(state["inner"]))
    z_best = res.x * outer_step
    bar.close()
    x = state["x"]
    if not np.allclose(np.asarray(x[n_u:], np.float64), z_best):  # the last evaluation was not the optimum
        x, _ = solver.run(x.at[n_u:].set(jnp.asarray(z_best, dtype)), fix_theta=True, max_iter=inner_max_iter,
                          gtol=inner_gtol)
    g = solver._grad(x)
    wall = time.perf_counter() - start
    final = float(obj.value(x))
    converged = bool(res.success) and state["unconverged"] == 0
    message = str(res.message) + ("" if state["unconverged"] == 0 else
                                  f"; {state['unconverged']} inner solve(s) hit inner_max_iter")
    report = Report(method="gauss-newton (profile)", converged=converged, message=message, iterations=int(res.nit),
                    loss=final, loss_terms=obj.parts(x), grad_norm=float(jnp.max(jnp.abs(g))), wall_time=wall,
                    evaluations=dict(state["evaluations"]), history=np.asarray(state["history"] + [final]),
                    extra={"inner_iterations": state["inner"], "outer_evaluations": int(res.nfev)})
    return x, report
