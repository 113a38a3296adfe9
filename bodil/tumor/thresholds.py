"""The visibility thresholds integrated out of the tumour posterior by quadrature.

The segmentation sees the concentration through two thresholds, ``tau_lo`` (edema, FLAIR) and ``tau_up`` (core,
T1c), which no image pins down and which differ between scanners, sequences and readers. Rather than fix them,
the posterior of the growth parameters integrates them over their prior,

    L_w(theta) = int p(tau) p(D | u_theta(T), tau)^w dtau  ~=  sum_k pi_k p(D | u_theta(T), tau_k)^w,

``w`` the likelihood weight (``bodil.tumor.pipeline.likelihood_weight``; the thresholds enter the tempered
posterior as any sampled parameter would), ``(tau_k, pi_k)`` a tensor Gauss-Legendre rule over the uniform
priors of ``tau_lo`` and ``tau_up`` (``bodil.tumor.model.default_priors``). The field ``u_theta`` does not
depend on the thresholds, so one forward run serves every node, and per-class histograms of the final field
(``binned_log_likelihoods``) make each node cost a few thousand evaluations of the likelihood rather than one
per voxel. Given ``theta``, the nodes' posterior masses
``pi_k p(D | u, tau_k)^w / L_w`` give the thresholds' posterior; over the samples of ``theta`` they give its
mixture (``threshold_summary``).

The three-class sigmoid (Amoudruz et al. 2025, eq. 36) is normalised over the classes for every ``tau``, so
the integral is a marginal likelihood. GliODIL's interval hinge (eq. 30) is not (its normaliser depends on
``tau``), and is refused.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..likelihood import ABOVE, BELOW, BETWEEN, UNOBSERVED
from ..residuals._coefficients import resolve

THRESHOLDS = ("tau_lo", "tau_up")


class ThresholdQuadrature(NamedTuple):
    """A product rule over the thresholds' prior: node ``k`` is ``(tau_lo[k], tau_up[k])`` with prior mass
    ``exp(log_mass[k])`` (the masses sum to 1); ``ranges`` are the priors' ``(low, high)``."""

    tau_lo: np.ndarray
    tau_up: np.ndarray
    log_mass: np.ndarray
    ranges: tuple

    @property
    def size(self) -> int:
        return int(self.log_mass.shape[0])

    def marginal(self, log_l, weight: float):
        """``log sum_k pi_k exp(weight log_l[..., k])``: the tempered likelihood with the thresholds integrated
        out, from the log-likelihoods at the nodes (last axis)."""
        return jax.scipy.special.logsumexp(self.log_mass + weight * jnp.asarray(log_l), axis=-1)

    def node_posterior(self, log_l, weight: float):
        """The thresholds' posterior masses at the nodes given the field (last axis sums to 1)."""
        return jax.nn.softmax(self.log_mass + weight * jnp.asarray(log_l), axis=-1)


def threshold_quadrature(priors: dict, nodes: int = 8) -> ThresholdQuadrature:
    """The ``nodes x nodes`` Gauss-Legendre rule over the uniform priors ``priors["tau_lo"]`` and
    ``priors["tau_up"]`` (numpyro ``Uniform`` distributions; exact for polynomials of degree ``2 nodes - 1`` in
    each threshold).

    Raises:
        ValueError: a threshold's prior is not uniform, or ``nodes < 2``.
    """
    if int(nodes) < 2:
        raise ValueError(f"threshold_quadrature: nodes must be at least 2, got {nodes!r}.")
    x, wts = np.polynomial.legendre.leggauss(int(nodes))
    axes = []
    for name in THRESHOLDS:
        prior = priors.get(name)
        low, high = getattr(prior, "low", None), getattr(prior, "high", None)
        if low is None or high is None or type(prior).__name__ != "Uniform":
            raise ValueError(f"threshold_quadrature: the prior of {name} must be Uniform(low, high) to integrate "
                             f"it by Gauss-Legendre quadrature, got {prior!r}; sample the thresholds instead "
                             f"(CTVSettings.posterior_parameters) or fix them (thresholds='fixed').")
        low, high = float(low), float(high)
        axes.append((low + 0.5 * (high - low) * (x + 1.0), 0.5 * wts))
    (lo, w_lo), (up, w_up) = axes
    grid_lo, grid_up = np.meshgrid(lo, up, indexing="ij")
    mass = np.outer(w_lo, w_up)
    ranges = tuple((float(priors[n].low), float(priors[n].high)) for n in THRESHOLDS)
    return ThresholdQuadrature(grid_lo.ravel(), grid_up.ravel(), np.log(mass.ravel()), ranges)


def node_log_likelihoods(likelihood, quad: ThresholdQuadrature):
    """``(u, theta) -> log p(D | u, tau_k)`` for every node ``k`` (shape ``(K,)``), voxel by voxel: the reference
    for ``binned_log_likelihoods`` (``K`` passes over the box). ``likelihood`` is a ``ThreeClassSigmoid`` that
    reads ``tau_lo``, ``tau_up`` from ``theta``; ``u`` is what it observes (a field with a leading time axis)."""
    lo, up = jnp.asarray(quad.tau_lo), jnp.asarray(quad.tau_up)

    def at_nodes(u, theta):
        return jax.vmap(lambda a, b: likelihood.log_prob(u, {**theta, "tau_lo": a, "tau_up": b}))(lo, up)

    return at_nodes


def binned_log_likelihoods(likelihood, quad: ThresholdQuadrature, bins: int = 1024):
    """``(u, theta) -> log p(D | u, tau_k)`` for every node from histograms of the observed concentration.

    With ``a = (u - tau_lo) / sigma``, ``b = (u - tau_up) / sigma`` and ``log S`` the log-sigmoid, the three-class
    model (``bodil.likelihood.ThreeClassSigmoid``) splits into a part in ``tau_lo``, a part in ``tau_up`` and the
    normaliser, which depends on both but not on the class:

        log L = sum_healthy log S(-a) + sum_edema log S(a)  +  sum_edema log S(-b) + sum_core log S(b)
                - sum_observed log Z,     log Z = log(1 + S(b) S(-a)).

    The voxels of each class (and, for ``log Z``, all observed voxels) whose value falls in bin ``b`` of
    ``[0, 1]`` (``bins`` equal bins) count ``n_b`` times their term at their mean value, so the first two parts
    cost ``2 bins`` evaluations per distinct threshold and the normaliser ``bins`` per node, instead of one per
    voxel and node. The error is second order in the bin width ``h`` (the deviations from a bin's mean sum to
    zero): at most ``M h^2 / 8`` per voxel, ``M`` the largest ``|d^2 log P / du^2|``, below ``3 / (4 sigma^2)``
    (4e-5 nats per voxel at ``sigma = 0.05`` and 1024 bins), and none where a bin's voxels share one value (the
    healthy ones at ``u = 0``). ``likelihood``: a ``ThreeClassSigmoid``; ``u`` is what it observes from."""
    classes = jnp.asarray(likelihood.classes)
    observed = (classes != UNOBSERVED).astype(jnp.float64)
    which = jnp.clip(classes, BELOW, ABOVE)
    lo_values, lo_index = np.unique(np.asarray(quad.tau_lo), return_inverse=True)
    up_values, up_index = np.unique(np.asarray(quad.tau_up), return_inverse=True)
    ls = jax.nn.log_sigmoid

    def at_nodes(u, theta):
        sigma = resolve(likelihood.sigma, theta, None)
        pred = jnp.asarray(likelihood.predict(u, theta), jnp.float64)
        index = jnp.clip(jnp.floor(pred * bins).astype(jnp.int32), 0, bins - 1)
        mid = (jnp.arange(bins) + 0.5) / bins

        def histogram(weight):
            count = jnp.zeros(bins).at[index].add(weight)
            total = jnp.zeros(bins).at[index].add(weight * pred)
            return count, jnp.where(count > 0, total / jnp.maximum(count, 1.0), mid)

        (n_h, u_h), (n_e, u_e), (n_c, u_c) = (histogram(observed * (which == k)) for k in (BELOW, BETWEEN, ABOVE))
        n_all, u_all = histogram(observed)
        part_lo = jax.vmap(lambda t: n_h @ ls((t - u_h) / sigma) + n_e @ ls((u_e - t) / sigma))(
            jnp.asarray(lo_values))
        part_up = jax.vmap(lambda t: n_e @ ls((t - u_e) / sigma) + n_c @ ls((u_c - t) / sigma))(
            jnp.asarray(up_values))
        log_z = jax.vmap(lambda a, b: n_all @ jnp.logaddexp(0.0, ls((u_all - b) / sigma) + ls((a - u_all) / sigma)))(
            jnp.asarray(quad.tau_lo), jnp.asarray(quad.tau_up))
        return part_lo[lo_index] + part_up[up_index] - log_z

    return at_nodes


def threshold_summary(weights: np.ndarray, quad: ThresholdQuadrature) -> dict:
    """The thresholds' posterior from the node masses of every sample (``(S, K)``): the mixture over the samples,
    per threshold its mean, sd and 5/50/95% quantiles. For the quantiles each node stands for a cell of the prior's
    range as wide as its prior mass, in which the posterior density is taken constant (a histogram)."""
    mix = np.asarray(weights, float).reshape(-1, quad.size).mean(axis=0)
    mix = mix / mix.sum()
    prior = np.exp(np.asarray(quad.log_mass))
    out = {}
    for name, values, (low, high) in zip(THRESHOLDS, (quad.tau_lo, quad.tau_up), quad.ranges):
        nodes, where = np.unique(np.asarray(values), return_inverse=True)
        post = np.bincount(where, weights=mix, minlength=nodes.size)
        width = np.bincount(where, weights=prior, minlength=nodes.size) * (high - low)
        edges = low + np.concatenate([[0.0], np.cumsum(width)])
        cdf = np.concatenate([[0.0], np.cumsum(post)])
        mean = float(nodes @ post)
        q = {f"q{int(round(100 * p)):02d}": float(np.interp(p, cdf, edges)) for p in (0.05, 0.5, 0.95)}
        out[name] = {"mean": mean, "sd": float(np.sqrt(max(((nodes - mean) ** 2) @ post, 0.0))), **q}
    return out


__all__ = ["THRESHOLDS", "ThresholdQuadrature", "binned_log_likelihoods", "node_log_likelihoods",
           "threshold_quadrature", "threshold_summary"]
