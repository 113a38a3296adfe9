"""Likelihoods ``p(D | u, theta)`` linking the field to data (Amoudruz et al. 2025, eq. 6, 20-21, 30-31, 36).

Each likelihood takes an ``observe(u, theta) -> predictions`` function (``None`` means the field itself,
``bodil.Grid.interpolator`` gives linear interpolation at scattered points) and reports its share of
``-log p`` as blocks (``bodil.terms``). ``log_prob(u, theta)`` is the normalised log-likelihood.

The interval and three-class likelihoods (eq. 30-31, 36) observe one integer class per voxel: where the
field lies relative to two thresholds ``tau_lo < tau_up``: ``BELOW`` = 0 (``u < tau_lo``), ``BETWEEN`` = 1,
``ABOVE`` = 2 (``u > tau_up``) and ``UNOBSERVED`` = -1 (no data at the voxel). The tumour application maps
its segmentation labels onto these (``bodil.tumor.segmentation``: healthy, edema, core, ignore).
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .residuals._coefficients import Coefficient, resolve
from .terms import Scalar, Squares, total

UNOBSERVED, BELOW, BETWEEN, ABOVE = -1, 0, 1, 2
CLASSES = (UNOBSERVED, BELOW, BETWEEN, ABOVE)
LOG_2PI = float(np.log(2.0 * np.pi))


def _finite_array(name: str, what: str, value) -> np.ndarray:
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
        raise TypeError(f"{name}: {what} must be numeric, got dtype {arr.dtype}.")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.isfinite(arr).sum())
        raise ValueError(f"{name}: {what} contains {bad} NaN or infinite value(s); remove or mask them.")
    return arr


def _check_positive(name: str, what: str, value) -> None:
    if not isinstance(value, str) and not callable(value):
        arr = _finite_array(name, what, value)
        if np.any(arr <= 0):
            raise ValueError(f"{name}: {what} must be positive, got {value}.")


class Likelihood(abc.ABC):
    """Base class: subclasses implement ``blocks(u, theta)``."""

    observe: Callable | None

    def predict(self, u, theta):
        """The observed quantity ``h(u, theta)``."""
        return jnp.asarray(u if self.observe is None else self.observe(u, theta))

    def _check_shape(self, pred, data_shape):
        if tuple(jnp.shape(pred)) != tuple(data_shape):
            raise ValueError(f"{type(self).__name__}: observe() returned shape {tuple(jnp.shape(pred))} but the "
                             f"data have shape {tuple(data_shape)}.")

    @abc.abstractmethod
    def blocks(self, u, theta) -> dict:
        """Named blocks of ``-log p(D | u, theta)`` (``bodil.terms``)."""

    def log_prob(self, u, theta):
        """``log p(D | u, theta)``."""
        return -total(self.blocks(u, theta))


class Gaussian(Likelihood):
    """Independent Gaussian measurements, eq. 6:
    ``log p = -sum_k (y_k - h_k)^2 / (2 sigma^2) - (N_D / 2) log(2 pi sigma^2)``.

    ``sigma`` is a positive number, an array matching ``y``, or the name of a parameter (inferred noise).
    """

    def __init__(self, observe: Callable | None, y, sigma: Coefficient):
        self.observe = observe
        self.y = jnp.asarray(_finite_array("Gaussian", "y", y))
        _check_positive("Gaussian", "sigma", sigma)
        self.sigma = sigma

    def blocks(self, u, theta):
        pred = self.predict(u, theta)
        self._check_shape(pred, self.y.shape)
        s = jnp.broadcast_to(resolve(self.sigma, theta, None), self.y.shape).astype(pred.dtype)
        norm = jnp.sum(jnp.log(s)) + 0.5 * self.y.size * LOG_2PI
        return {"data/gaussian": Squares(0.5, (self.y.astype(pred.dtype) - pred) / s),
                "data/gaussian_norm": Scalar(norm)}


class Bernoulli(Likelihood):
    """Binary data through a sigmoid link, eq. 20-21:
    ``p(y = 1 | u) = S((h(u) - tau) / sigma)``, ``S(x) = 1 / (1 + exp(-x))``.
    """

    def __init__(self, observe: Callable | None, y, tau: Coefficient = 0.5, sigma: Coefficient = 0.1):
        self.observe = observe
        y = _finite_array("Bernoulli", "y", y)
        if not np.all((y == 0) | (y == 1)):
            raise ValueError(f"Bernoulli: y must contain only 0 and 1, found values {np.unique(y)[:10]}.")
        _check_positive("Bernoulli", "sigma", sigma)
        self.y, self.tau, self.sigma = jnp.asarray(y), tau, sigma

    def blocks(self, u, theta):
        pred = self.predict(u, theta)
        self._check_shape(pred, self.y.shape)
        z = (pred - resolve(self.tau, theta, None)) / resolve(self.sigma, theta, None)
        y = self.y.astype(pred.dtype)
        return {"data/bernoulli": Scalar(-jnp.sum(y * jax.nn.log_sigmoid(z) + (1 - y) * jax.nn.log_sigmoid(-z)))}


def _classes(name: str, classes) -> jnp.ndarray:
    arr = np.asarray(classes)
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int32)
        else:
            raise ValueError(f"{name}: classes must be integers (-1 unobserved, 0 below tau_lo, 1 between the "
                             f"thresholds, 2 above tau_up).")
    bad = np.setdiff1d(np.unique(arr), CLASSES)
    if bad.size:
        raise ValueError(f"{name}: unknown class value(s) {bad.tolist()}; use -1 (unobserved), 0 (below tau_lo), "
                         f"1 (between) or 2 (above tau_up). Map segmentation labels first (for tumours: "
                         f"bodil.tumor.segmentation.classes_from_labels).")
    return jnp.asarray(arr, jnp.int32)


def interval_bounds(classes, tau_lo, tau_up):
    """Per-voxel interval of eq. 31: ``BELOW`` ``(0, tau_lo)``, ``BETWEEN`` ``(tau_lo, tau_up)``, ``ABOVE``
    ``(tau_up, 1)``; ``UNOBSERVED`` voxels ``(-inf, inf)`` (tumours: healthy, edema, core, ignored).
    """
    c = jnp.asarray(classes)
    tau_lo, tau_up = jnp.asarray(tau_lo), jnp.asarray(tau_up)
    lower = jnp.select([c == BELOW, c == BETWEEN, c == ABOVE], [jnp.zeros_like(tau_lo), tau_lo, tau_up], -jnp.inf)
    upper = jnp.select([c == BELOW, c == BETWEEN, c == ABOVE], [tau_lo, tau_up, jnp.ones_like(tau_up)], jnp.inf)
    return lower, upper


class IntervalHinge(Likelihood):
    """GliODIL's interval likelihood, eq. 30-31:
    ``log p = (1 / sigma) sum_i [min(u_i - lo_i, 0) + min(0, up_i - u_i)]``

    with ``(lo_i, up_i)`` from the voxel's class (``interval_bounds``). ``tau_lo``/``tau_up`` may be numbers
    or parameter names (inferred thresholds, ``0 < tau_lo < tau_up < 1``). Unnormalised, as in GliODIL.
    """

    def __init__(self, observe: Callable | None, classes, tau_lo: Coefficient = "tau_lo",
                 tau_up: Coefficient = "tau_up", sigma: float = 0.05):
        self.observe = observe
        self.classes = _classes("IntervalHinge", classes)
        _check_positive("IntervalHinge", "sigma", sigma)
        self.tau_lo, self.tau_up, self.sigma = tau_lo, tau_up, sigma

    def blocks(self, u, theta):
        pred = self.predict(u, theta)
        self._check_shape(pred, self.classes.shape)
        lo, up = interval_bounds(self.classes, resolve(self.tau_lo, theta, None), resolve(self.tau_up, theta, None))
        below = jnp.where(jnp.isfinite(lo), jnp.maximum(lo - pred, 0.0), 0.0)
        above = jnp.where(jnp.isfinite(up), jnp.maximum(pred - up, 0.0), 0.0)
        return {"data/interval": Scalar(jnp.sum(below + above) / resolve(self.sigma, theta, None))}


class ThreeClassSigmoid(Likelihood):
    """Normalised three-class model of Amoudruz et al. 2025, eq. 36 (appendix B):

    ``P(BELOW) = S((tau_lo - u)/sigma) / Z``, ``P(BETWEEN) = S((tau_up - u)/sigma) S((u - tau_lo)/sigma) / Z``,
    ``P(ABOVE) = S((u - tau_up)/sigma) / Z``, with ``Z = 1 + S((u - tau_up)/sigma) S((tau_lo - u)/sigma)``
    (tumours: healthy, edema, core). ``UNOBSERVED`` voxels add nothing.
    """

    def __init__(self, observe: Callable | None, classes, tau_lo: Coefficient = "tau_lo",
                 tau_up: Coefficient = "tau_up", sigma: float = 0.05):
        self.observe = observe
        self.classes = _classes("ThreeClassSigmoid", classes)
        _check_positive("ThreeClassSigmoid", "sigma", sigma)
        self.tau_lo, self.tau_up, self.sigma = tau_lo, tau_up, sigma

    def class_log_probs(self, u, theta):
        """``log P(class | u)`` for the three classes, stacked on a new last axis (``BELOW``, ``BETWEEN``,
        ``ABOVE``)."""
        s = resolve(self.sigma, theta, None)
        a = (u - resolve(self.tau_lo, theta, None)) / s
        b = (u - resolve(self.tau_up, theta, None)) / s
        log_z = jnp.logaddexp(0.0, jax.nn.log_sigmoid(b) + jax.nn.log_sigmoid(-a))
        ls = jax.nn.log_sigmoid
        return jnp.stack([ls(-a) - log_z, ls(-b) + ls(a) - log_z, ls(b) - log_z], axis=-1)

    def blocks(self, u, theta):
        pred = self.predict(u, theta)
        self._check_shape(pred, self.classes.shape)
        logp = self.class_log_probs(pred, theta)
        c = self.classes
        picked = jnp.take_along_axis(logp, jnp.clip(c, BELOW, ABOVE)[..., None], axis=-1)[..., 0]
        return {"data/three_class": Scalar(-jnp.sum(jnp.where(c != UNOBSERVED, picked, 0.0)))}
