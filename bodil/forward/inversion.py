"""Tumour-growth inversion on a crop: from an observed concentration to ``theta`` (Weidner et al. 2025, sec. 2.3).

Every method minimises the mean squared misfit ``L(theta) = mean((f(theta) - u_obs)^2)`` over the crop, with
``theta = (x, y, z, mu_D, mu_rho)`` inside the surrogate's training box, and ends with one run of the
Fisher-Kolmogorov solver at the ``theta`` it found (the final high-precision run of Weidner et al. 2025):

* ``gradient``: L-BFGS-B (scipy) through the frozen surrogate, with exact gradients from JAX (GB);
* ``direct``: the inverse encoder's prediction, one network call;
* ``hybrid``: ``direct`` initialises ``gradient``; of the two, the one whose final FK run fits ``u_obs``
  better is kept (the lower surrogate loss without final runs);
* ``cmaes``: CMA-ES (the ``cma`` package) on the surrogate (population evaluated as one batch) or on the FK
  solver itself (the classical baseline).

Optimisers work in the normalised coordinates ``z in [-1, 1]^5`` of the surrogate (``Surrogate.normalise``).
"""

from __future__ import annotations

import dataclasses
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks
from .dataset import FKSettings, fk_on_crop
from .metrics import mse
from .model import Surrogate


@dataclasses.dataclass
class InversionResult:
    """What an inversion found: ``theta`` (physical units), ``loss`` (the misfit it minimised), the final FK
    run ``u_final`` at ``theta``, the number of forward ``evaluations`` and the ``wall_s`` including the final
    run."""

    method: str
    theta: np.ndarray
    loss: float
    u_final: np.ndarray | None
    evaluations: int
    wall_s: float


def _misfit(model: Surrogate, z, tissue, u_obs):
    return jnp.mean((model.apply(z.astype(jnp.float32), tissue) - u_obs) ** 2)


# the model is a static argument (hashed by identity): compiled once per model and shape, not once per call
@eqx.filter_jit
def _misfit_and_grad(model: Surrogate, z, tissue, u_obs):
    return jax.value_and_grad(_misfit, argnums=1)(model, z, tissue, u_obs)


@eqx.filter_jit
def _misfits(model: Surrogate, zs, tissue, u_obs):
    return jax.vmap(_misfit, in_axes=(None, 0, None, None))(model, zs, tissue, u_obs)


def _surrogate_functions(model: Surrogate, tissue, u_obs):
    """``(value_and_grad(z), batch(zs))`` of the mean squared misfit through the surrogate."""
    tissue = jnp.asarray(tissue, jnp.float32)
    u_obs = jnp.asarray(u_obs, jnp.float32)
    return (lambda z: _misfit_and_grad(model, z, tissue, u_obs)), (lambda zs: _misfits(model, zs, tissue, u_obs))


def _finish(method, model, z, loss, evaluations, t0, tissue, fk, final_run):
    theta = np.asarray(model.denormalise(np.clip(z, -1.0, 1.0)), float)
    u = fk_on_crop(theta, tissue, model.spacing_mm, fk) if final_run else None
    return InversionResult(method, theta, float(loss), u, int(evaluations), time.perf_counter() - t0)


def invert_gradient(model: Surrogate, tissue, u_obs, theta0=None, *, maxiter: int = 100,
                    fk: FKSettings = FKSettings(), final_run: bool = True, method: str = "gradient"
                    ) -> InversionResult:
    """GB inversion: L-BFGS-B on ``z in [-1, 1]^5`` with the surrogate's exact gradient. ``theta0``
    defaults to the box centre (origin at the crop centre, mid-range ``mu_D``, ``mu_rho``)."""
    from scipy.optimize import minimize

    t0 = time.perf_counter()
    value_and_grad, _ = _surrogate_functions(model, tissue, u_obs)
    z0 = np.zeros(5) if theta0 is None else np.clip(np.asarray(model.normalise(theta0), float), -1, 1)

    def fun(z):
        v, g = value_and_grad(jnp.asarray(z, jnp.float32))
        return float(v), np.asarray(g, np.float64)

    res = minimize(fun, z0, jac=True, method="L-BFGS-B", bounds=[(-1.0, 1.0)] * 5,
                   options={"maxiter": maxiter, "ftol": 1e-12, "gtol": 1e-10})
    return _finish(method, model, res.x, res.fun, res.nfev, t0, tissue, fk, final_run)


def invert_direct(encoder: Surrogate, tissue, u_obs, *, model: Surrogate | None = None,
                  fk: FKSettings = FKSettings(), final_run: bool = True) -> InversionResult:
    """Direct inverse prediction by the encoder, clipped to the box. ``loss`` is the surrogate misfit when a
    forward ``model`` is given (else NaN)."""
    t0 = time.perf_counter()
    theta = np.asarray(encoder.invert(u_obs, tissue), float)
    ref = model or encoder
    z = np.clip(np.asarray(ref.normalise(theta), float), -1, 1)
    loss = math.nan
    if model is not None:
        value_and_grad, _ = _surrogate_functions(model, tissue, u_obs)
        loss = float(value_and_grad(jnp.asarray(z, jnp.float32))[0])
    return _finish("direct", ref, z, loss, 1, t0, tissue, fk, final_run)


def invert_hybrid(model: Surrogate, encoder: Surrogate, tissue, u_obs, *, maxiter: int = 100,
                  fk: FKSettings = FKSettings(), final_run: bool = True) -> InversionResult:
    """The hybrid of Weidner et al. 2025: direct prediction, then GB from it; keeps the better of the two.

    With ``final_run`` both candidates get their FK run and the lower misfit of those runs to ``u_obs``
    decides (one FK run more; the surrogate's loss cannot see the surrogate's own error, docs/surrogate.md).
    Without final runs the lower surrogate loss decides, as in Weidner et al. 2025. ``loss`` is the kept
    candidate's surrogate loss; ``evaluations`` counts GB's evaluations and the direct prediction."""
    t0 = time.perf_counter()
    direct = invert_direct(encoder, tissue, u_obs, model=model, fk=fk, final_run=final_run)
    refined = invert_gradient(model, tissue, u_obs, direct.theta, maxiter=maxiter, fk=fk, final_run=final_run)
    if final_run:
        misfit = [float(mse(r.u_final, u_obs)) for r in (refined, direct)]
        best = refined if misfit[0] <= misfit[1] else direct
    else:
        best = refined if refined.loss <= direct.loss else direct
    return InversionResult("hybrid", best.theta, best.loss, best.u_final, refined.evaluations + 1,
                           time.perf_counter() - t0)


def invert_cmaes(model: Surrogate, tissue, u_obs, *, classical: bool = False, sigma0: float = 0.3,
                 max_evaluations: int = 2000, seed: int = 0, fk: FKSettings = FKSettings(),
                 final_run: bool = True) -> InversionResult:
    """CMA-ES on ``z in [-1, 1]^5`` from the box centre: on the surrogate (each population one batched call)
    or, with ``classical=True``, on the FK solver (one run per candidate; the surrogate only supplies the
    box). Stops after ``max_evaluations`` forward evaluations or cma's own criteria. ``seed`` (an integer)
    fixes cma's random stream."""
    import cma

    seed = _checks.integer("invert_cmaes", "seed", seed)

    t0 = time.perf_counter()
    _, batch = _surrogate_functions(model, tissue, u_obs)

    def losses(zs):
        zs = np.clip(np.asarray(zs, float), -1, 1)
        if not classical:
            return [float(v) for v in np.asarray(batch(jnp.asarray(zs, jnp.float32)))]
        return [float(mse(fk_on_crop(model.denormalise(z), tissue, model.spacing_mm, fk), u_obs)) for z in zs]

    es = cma.CMAEvolutionStrategy(np.zeros(5), sigma0, {"bounds": [-1.0, 1.0], "maxfevals": max_evaluations,
                                                        "seed": seed + 1, "verbose": -9})
    while not es.stop():
        zs = es.ask()
        es.tell(zs, losses(zs))
    z, loss = es.result.xbest, es.result.fbest
    return _finish("cmaes_classical" if classical else "cmaes_surrogate", model, z, loss,
                   es.result.evaluations, t0, tissue, fk, final_run)


__all__ = ["FKSettings", "InversionResult", "fk_on_crop", "invert_cmaes", "invert_direct", "invert_gradient",
           "invert_hybrid"]
