"""The PDE prior's normaliser over ``(u, theta)``, for the Laplace evidence (Amoudruz et al., B-ODIL, eq. 7).

The MAP, the samplers and the Laplace Hessian all use ``exp(-beta L_PDE(u, theta) - beta_IC L_IC(u, theta))
p(theta)`` with one constant ``Z``, independent of u and theta. For ``p(u, theta)`` to be a density,

    Z = int p(theta) Z(theta) dtheta,   Z(theta) = int exp(-beta L_PDE - beta_IC L_IC) du
                                                 = (2 pi)^{n/2} det P(theta)^{-1/2},

``P(theta)`` the curvature of the prior terms in ``u`` (exact for residuals linear in ``u`` that can vanish;
taken at the MAP field otherwise). Relative to the MAP's ``theta*``,

    log Z = (n / 2) log(2 pi) - 1/2 log det P(theta*) + log E_p(theta)[(det P(theta) / det P(theta*))^{-1/2}].

The last term is zero when ``P`` does not depend on theta (a source, an initial-state target or the data's
parameters); it is checked at two prior points. Otherwise it is the mean over ``K`` scrambled Sobol points of
the prior (``icdf`` of each prior; plain draws for priors without one), which needs ``det P(theta)``: dense
problems only. Treating the prior as normalised at ``theta*`` alone would instead give the evidence of a model
whose prior on theta is tilted by ``Z(theta)``, inconsistent with the density that was maximised.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from scipy import stats
from scipy.special import logsumexp

from .._checks import as_key

IMPROPER = ("the PDE prior on the field is improper (its curvature is singular: no initial-condition term?), so "
            "the evidence is undefined")


class PriorNormaliser(NamedTuple):
    """``log det P(theta*)`` (dense path; ``nan`` on the low-rank path, which cancels it), the term
    ``log E_p(theta)[(det P(theta) / det P(theta*))^{-1/2}]``, a note (non-empty: the evidence is undefined)
    and diagnostics (``theta_dependent``, ``points``, ``log_det_p_range``)."""

    log_det_p: float
    log_mean_ratio: float
    note: str
    info: dict


def prior_points(params, seed, num: int, dtype) -> list[dict]:
    """``num`` points of the parameter prior: scrambled Sobol points through each prior's ``icdf`` (plain
    draws from priors that have none), as constrained ``theta`` dicts. ``seed``: an integer (the Sobol
    scrambling's seed) or a ``jax.random`` key (which draws that seed)."""
    key = as_key("prior_points", seed)
    sobol_seed = int(seed) if isinstance(seed, (int, np.integer)) else int(jax.random.bits(key, dtype=jnp.uint32))
    sizes = {k: int(np.prod(d.batch_shape + d.event_shape, dtype=int)) for k, d in params.priors.items()}
    unit = stats.qmc.Sobol(sum(sizes.values()), scramble=True, seed=sobol_seed).random(num)
    out, start = {}, 0
    for k, d in params.priors.items():
        shape = (num,) + d.batch_shape + d.event_shape
        q = jnp.asarray(unit[:, start:start + sizes[k]].reshape(shape), dtype)
        start += sizes[k]
        try:
            out[k] = jnp.asarray(d.icdf(q), dtype)
        except NotImplementedError:  # numpyro's base Distribution.icdf: this prior has no inverse cdf
            key, sub = jax.random.split(key)
            out[k] = jnp.asarray(d.sample(sub, (num,)), dtype)
    return [{k: v[i] for k, v in out.items()} for i in range(num)]


def field_prior_normaliser(ops, params, method: str, hessian: str, seed, num: int) -> PriorNormaliser:
    """The normaliser terms of the module doc at the MAP of ``ops`` (a ``bodil.inference.curvature.Curvature``);
    ``seed`` (an integer or a ``jax.random`` key) chooses the prior points and the probes of ``P``."""
    n_theta = ops.x.size - ops.n_field
    dense = method == "dense"
    log_det = ops.prior_logdet(hessian) if dense else None
    ld_star = float(log_det(ops.x)) if dense else math.nan
    if dense and not math.isfinite(ld_star):
        return PriorNormaliser(math.nan, math.nan, IMPROPER, {})
    if n_theta == 0:
        return PriorNormaliser(ld_star, 0.0, "", {"theta_dependent": False})
    u, _ = ops.unravel(ops.x)
    points = [ravel_pytree((u, th))[0] for th in prior_points(params, seed, num, ops.x.dtype)]
    first = [float(log_det(x)) for x in points[:2]] if dense else []  # reused below: each is a dense Hessian
    if dense:
        def same(i):
            return abs(first[i] - ld_star) <= 1e-10 * max(1.0, abs(ld_star))
    else:
        products = ops.prior_products()
        probes = jax.random.normal(as_key("laplace", seed), (4, ops.n_field), ops.x.dtype)
        at_map = products(ops.x, probes)

        def same(i):
            diff = jnp.max(jnp.abs(products(points[i], probes) - at_map))
            return float(diff) <= 1e-10 * float(jnp.max(jnp.abs(at_map)))
    if all(same(i) for i in range(min(2, len(points)))):
        return PriorNormaliser(ld_star, 0.0, "", {"theta_dependent": False})
    if not dense:
        return PriorNormaliser(math.nan, math.nan,
                               "the PDE prior's curvature P depends on the parameters, so the evidence needs "
                               "E_p(theta)[det P(theta)^(-1/2)], which the low-rank path cannot form; use "
                               "method='dense' (a smaller grid)", {"theta_dependent": True})
    ld = np.array(first + [float(log_det(x)) for x in points[2:]])
    if not np.all(np.isfinite(ld)):
        return PriorNormaliser(math.nan, math.nan, IMPROPER + " at some parameters of the prior",
                               {"theta_dependent": True})
    log_mean_ratio = float(logsumexp(-0.5 * (ld - ld_star)) - math.log(len(ld)))
    return PriorNormaliser(ld_star, log_mean_ratio, "",
                           {"theta_dependent": True, "points": len(ld), "log_det_p_range": (ld.min(), ld.max())})
