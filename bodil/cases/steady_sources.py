"""Two disc sources from point measurements of their steady field: the steady diffusion problem of Toledo-Marín
et al. (2021, sec. 2; ``bodil.forward.steady``) as the forward model of an inverse problem.

On the ``n x n`` lattice (``n = 100``) disc 1 (value 1) and disc 2 (value ``v2``) of radius ``r = 5`` make the
field ``c(theta)`` of ``D lap c - gamma c = 0``. The unknowns are

    theta = {"centres": [[x1, y1], [x2, y2]], "v2": v2}

in pixels, ``x`` along the lattice's first index (rows) and ``y`` along its second (columns), as in
``bodil.forward.steady.Geometry``. The data are ``m = 20`` readings at sensor pixels ``s_k`` (distinct interior
pixels drawn at random from the seed), ``y_k = c(s_k; theta) + eps_k`` with ``eps_k ~ N(0, sigma^2)``, so

    log L(theta) = -sum_k (y_k - c(s_k; theta))^2 / (2 sigma^2) - m log sigma - (m / 2) log(2 pi).

Prior (``DiscPairUniform`` and ``Uniform(0, 1)``): each centre uniform on ``[1 + r, n - 2 - r]^2`` (the discs
stay off the absorbing ring, as ``check_geometry`` demands), density zero where the discs overlap
(``|c1 - c2| <= 2 r``), and ``v2 ~ U(0, 1)``.

Two forward models, one interface (``forward_field(kind)``: ``theta -> c`` on the lattice, a JAX function):

* ``"exact"``: the sparse direct solve of ``bodil.forward.steady.SteadySolver`` (hard discs: a pixel belongs
  to a disc when its centre lies within ``r``), called through ``jax.pure_callback`` so that it can be jitted
  and vmapped. The field depends on the positions only through the set of pixels inside the discs, so it is
  piecewise constant in them: BASIS can sample it, gradients are refused.
* ``"surrogate"``: the shipped network ``NN`` (``bodil.forward.steady_network``) applied to a smooth source
  image ``x = m_1 + v2 m_2``, ``m_k = S((r^2 - d_k^2) / (2 r w))`` with ``S`` the logistic function, ``d_k``
  the distance of a pixel's centre from centre ``k`` and ``w`` the ``width`` (default 0.25 pixel; ``S`` rises
  from 0.1 to 0.9 over ``4.4 w``, about one lattice cell). At the rim ``(r^2 - d^2) / (2 r) = r - d`` to first
  order, so ``m_k = S((r - d_k) / w)`` there, without the square root whose gradient is undefined at
  ``d = 0``. The field is ``c = x + (1 - m_1 - m_2) NN(x)``: held at the source values on the discs, as the
  equation demands, the network's prediction elsewhere (``hold=False``: ``c = NN(x)``, the paper's output,
  whose errors are largest on the discs). What the smooth discs change against the paper's hard ones: rim
  pixels take fractional values (the network was trained on images of zeros and exact source values only, so
  these lie slightly outside its training set), and the image, the prediction and the likelihood move
  smoothly with sub-pixel shifts of a centre, which is what NUTS needs; as ``w -> 0`` the image tends to the
  hard discs' ``source_image``.

The data come from neither forward model: the sparse direct solve on a twice finer lattice (``2 n - 1`` nodes,
spacing 1/2 pixel, so ``D`` becomes ``4 D`` in its units and the radius ``2 r``), read at the sensors' nodes,
plus noise. Both runs see the same data; neither commits an inverse crime.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions import Distribution, constraints

from .. import _checks
from ..forward import steady
from ..grid import Grid
from ..io import InputError
from ..likelihood import Gaussian
from ..posterior import Posterior
from ..prior import Params, PDEPrior, Uniform
from .problem import Problem

FORWARDS = ("exact", "surrogate")
TRUTH = {"centres": ((30.0, 35.0), (62.0, 64.0)), "v2": 0.6}
"""The default true sources (pixels; value of source 2)."""
NAMES = ("x1", "y1", "x2", "y2", "v2")
"""The five unknowns as ``named_draws`` calls them."""


def overlap_probability(side: float, distance: float) -> float:
    """``P(|a - b| <= distance)`` for two independent uniform points ``a, b`` in a square of side ``side``,
    ``distance <= side``: ``pi t^2 - 8 t^3 / 3 + t^4 / 2`` with ``t = distance / side``."""
    t = distance / side
    if not 0 <= t <= 1:
        raise ValueError(f"overlap_probability: needs 0 <= distance <= side, got {distance:g} and {side:g}.")
    return math.pi * t**2 - 8.0 * t**3 / 3.0 + t**4 / 2.0


class DiscPairUniform(Distribution):
    """Two points, each uniform on the square ``[low, high]^2``, conditioned on lying more than ``min_distance``
    apart; a value is ``[[x1, y1], [x2, y2]]`` (event shape ``(2, 2)``).

    The density is ``1 / (s^4 (1 - P))`` with ``s = high - low`` and ``P = overlap_probability(s,
    min_distance)`` where the points are apart and inside the square, zero (``log_prob = -inf``) elsewhere.
    ``support`` is the square (what ``biject_to`` maps unconstrained space onto); the separation is a zero of the
    density inside it. ``sample`` redraws overlapping pairs until none is left. ``mean`` is the square's centre
    for both points (the density is symmetric about it).
    """

    arg_constraints: dict = {}
    pytree_aux_fields = ("low", "high", "min_distance", "log_normaliser")

    def __init__(self, low: float, high: float, min_distance: float, *, validate_args=None):
        self.low, self.high, self.min_distance = float(low), float(high), float(min_distance)
        side = self.high - self.low
        if not (side > 0 and 0 <= self.min_distance <= side):
            raise ValueError(f"DiscPairUniform: needs low < high and 0 <= min_distance <= high - low, got "
                             f"{low:g}, {high:g}, {min_distance:g}.")
        self.log_normaliser = 4.0 * math.log(side) + math.log1p(-overlap_probability(side, self.min_distance))
        super().__init__(batch_shape=(), event_shape=(2, 2), validate_args=validate_args)

    @property
    def support(self):
        return constraints.independent(constraints.interval(self.low, self.high), 2)

    @property
    def mean(self):
        return jnp.full((2, 2), 0.5 * (self.low + self.high))

    def apart(self, value):
        """Whether the two points of ``value (..., 2, 2)`` lie more than ``min_distance`` apart."""
        return jnp.sum((value[..., 0, :] - value[..., 1, :]) ** 2, axis=-1) > self.min_distance**2

    def log_prob(self, value):
        inside = jnp.all((value >= self.low) & (value <= self.high), axis=(-2, -1)) & self.apart(value)
        return jnp.where(inside, -self.log_normaliser, -jnp.inf)

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + (2, 2)

        def body(state):
            key, x = state
            key, sub = jax.random.split(key)
            new = jax.random.uniform(sub, shape, minval=self.low, maxval=self.high)
            return key, jnp.where(self.apart(x)[..., None, None], x, new)

        key, sub = jax.random.split(key)
        first = jax.random.uniform(sub, shape, minval=self.low, maxval=self.high)
        return jax.lax.while_loop(lambda s: ~jnp.all(self.apart(s[1])), body, (key, first))[1]


def centre_prior(size: int = steady.SIZE, radius: float = steady.RADIUS) -> DiscPairUniform:
    """The prior of the two centres on a ``size`` lattice: inside ``[1 + r, size - 2 - r]``, more than ``2 r``
    apart (``bodil.forward.steady.check_geometry``'s conditions)."""
    return DiscPairUniform(1.0 + radius, size - 2.0 - radius, 2.0 * radius)


def disc_indicators(centres, size: int = steady.SIZE, radius: float = steady.RADIUS, width: float = 0.25):
    """``(2, size, size)``: ``m_k = S((r^2 - d_k^2) / (2 r w))`` on the pixel centres (module docstring), in the
    dtype of ``centres``; differentiable in ``centres``. The smooth source image is ``m_1 + v2 m_2``."""
    c = jnp.asarray(centres)
    i = jnp.arange(size, dtype=c.dtype)
    d2 = (i[None, :, None] - c[:, 0, None, None]) ** 2 + (i[None, None, :] - c[:, 1, None, None]) ** 2
    return jax.nn.sigmoid((radius**2 - d2) / (2.0 * radius * width))


@functools.lru_cache(maxsize=1)
def _network_programs() -> tuple[Callable, Callable]:
    """``(infer, pullback)``: the network's prediction and ``g^T d NN(x) / dx`` for images ``x (B, n, n)``, each
    compiled once per shape (equinox is imported here, on first use)."""
    import equinox as eqx

    from ..forward.steady_network import infer

    @eqx.filter_jit
    def pullback(network, state, x, g):
        return jax.vjp(lambda x: infer(network, state, x), x)[1](g)[0]

    return infer, pullback


def _hosted(surrogate) -> Callable:
    """``x -> NN(x)`` (float32 images ``(..., n, n)``) with its gradient, each run as its own compiled program
    through ``jax.pure_callback``: inside a sampler's compiled loop the network then runs as fast as on its
    own, and the sampler's program compiles without it. Batched under ``vmap`` (one call per batch)."""
    n = surrogate.architecture.size
    infer, pullback = _network_programs()

    def host(fn, *arrays):
        lead = arrays[0].shape[:-2]
        flat = [jnp.asarray(np.asarray(a, np.float32).reshape((-1, n, n))) for a in arrays]
        return np.asarray(fn(surrogate.network, surrogate.state, *flat), np.float32).reshape(lead + (n, n))

    def call(fn, x, *more):
        return jax.pure_callback(functools.partial(host, fn), jax.ShapeDtypeStruct(x.shape, jnp.float32), x, *more,
                                 vmap_method="broadcast_all")

    @jax.custom_vjp
    def apply(x):
        return call(infer, x)

    apply.defvjp(lambda x: (call(infer, x), x), lambda x, g: (call(pullback, x, g),))
    return apply


def _exact_numpy(centres, v2, size: int, radius: float) -> np.ndarray:
    """The hard-disc field of ``SteadySolver``; NaN for a geometry ``check_geometry`` refuses."""
    geometry = steady.Geometry(np.asarray(centres, float), np.array([1.0, float(v2)]), size, radius)
    try:
        return steady.SteadySolver(geometry).solve()
    except InputError:
        return np.full((size, size), np.nan)


def forward_field(kind: str, *, size: int = steady.SIZE, radius: float = steady.RADIUS, surrogate=None,
                  width: float = 0.25, hold: bool = True) -> Callable:
    """``theta -> c(theta)`` on the ``size x size`` lattice (dtype of ``theta["centres"]``), a JAX function
    (module docstring).

    Args:
        kind: ``"exact"`` (sparse direct solve through ``jax.pure_callback``; jit and vmap work, one solve per
            theta, differentiation raises ``ValueError``) or ``"surrogate"`` (differentiable).
        size, radius: the lattice and the discs.
        surrogate: a ``SteadySurrogate`` (default: the shipped weights) for ``"surrogate"``; its lattice must be
            ``size``.
        width: the smooth disc rim ``w`` in pixels (``"surrogate"`` only).
        hold: (``"surrogate"`` only) hold the field at the source values on the discs, ``c = x + (1 - m_1 -
            m_2) NN(x)`` with ``x = m_1 + v2 m_2``, as the equation does, instead of the network's own values
            there (``False``: ``c = NN(x)``, the paper's output).

    Raises:
        ValueError: an unknown ``kind``, a non-positive ``width``.
        InputError: surrogate weights for another lattice size.
    """
    _checks.choice("forward_field", "kind", kind, FORWARDS)
    width = _checks.positive("forward_field", "width", width)
    if kind == "surrogate":
        if surrogate is None:
            from ..forward.steady_network import pretrained_steady

            surrogate = pretrained_steady()
        if surrogate.architecture.size != size:
            raise InputError(f"forward_field: the surrogate's weights are for a {surrogate.architecture.size} "
                             f"lattice, the problem has {size}; train weights for this size or use kind='exact'.")
        network = _hosted(surrogate)

        def field(theta):
            c = jnp.asarray(theta["centres"])
            masks = disc_indicators(c, size, radius, width)
            image = masks[0] + jnp.asarray(theta["v2"], c.dtype) * masks[1]
            out = network(image.astype(jnp.float32)).astype(c.dtype)
            return image + (1.0 - masks[0] - masks[1]) * out if hold else out

        return field

    @jax.custom_jvp
    def solve(centres, v2):
        out = jax.ShapeDtypeStruct((size, size), centres.dtype)
        return jax.pure_callback(lambda c, v: _exact_numpy(c, v, size, radius).astype(out.dtype), out, centres,
                                 v2, vmap_method="sequential")

    @solve.defjvp
    def _refuse(primals, tangents):
        raise ValueError("the exact forward model (hard discs) is piecewise constant in the positions and has no "
                         "useful gradient; sample it with bodil.basis, or use forward='surrogate' for NUTS.")

    def field(theta):
        c = jnp.asarray(theta["centres"])
        return solve(c, jnp.asarray(theta["v2"], c.dtype))

    return field


def fine_field(centres, v2, size: int = steady.SIZE, radius: float = steady.RADIUS) -> np.ndarray:
    """The steady field on the ``size`` lattice's pixels computed on a twice finer lattice: ``2 size - 1``
    nodes of spacing 1/2 (same outer ring), discs of radius ``2 r`` at ``2 c``, ``D = 4`` in its units; the
    fine nodes ``(2 i, 2 j)`` are the pixels ``(i, j)``."""
    geometry = steady.Geometry(2.0 * np.asarray(centres, float), np.array([1.0, float(v2)]), 2 * size - 1,
                               2.0 * radius)
    return steady.SteadySolver(geometry, diffusivity=4.0 * steady.DIFFUSIVITY).solve()[::2, ::2]


def _no_field(u, theta, grid):
    """No field unknowns: the forward solve eliminates the field, so the PDE prior has no residual."""
    return {}


def _start(sensors, y, prior: DiscPairUniform) -> dict:
    """Source 1 at the sensor with the highest reading, source 2 at the highest reading more than the prior's
    separation from it (or the farthest sensor), both moved into the prior's square; ``v2 = 1/2``."""
    order = np.argsort(-y)
    first = sensors[order[0]].astype(float)
    far = [k for k in order[1:] if np.hypot(*(sensors[k] - first)) > 1.5 * prior.min_distance]
    second = sensors[far[0] if far else np.argmax(np.hypot(*(sensors - first).T))].astype(float)
    centres = np.clip(np.stack([first, second]), prior.low, prior.high)
    if not bool(prior.apart(jnp.asarray(centres))):
        centres[1] = prior.low + prior.high - centres[0]
    return {"centres": centres, "v2": 0.5}


def steady_sources(forward: str = "surrogate", *, truth: dict | None = None, num_sensors: int = 20,
                   sigma: float = 0.05, seed=0, size: int = steady.SIZE, radius: float = steady.RADIUS,
                   surrogate=None, width: float = 0.25, hold: bool = True, dtype=None) -> Problem:
    """The two-source problem (module docstring) with ``forward`` as the forward model.

    Args:
        forward: ``"surrogate"`` or ``"exact"``.
        truth: ``{"centres": (2, 2), "v2": float}`` that makes the data (default ``TRUTH``); must be a valid
            geometry.
        num_sensors: number of sensor pixels (distinct, off the outer ring).
        sigma: the noise standard deviation of the readings (the likelihood uses the same value).
        seed: an integer or a ``jax.random`` key for the sensors and the noise (the same seed gives the same
            data for both forward models).
        size, radius: the lattice and the discs (the surrogate needs ``size`` = its weights' size).
        surrogate, width, hold: as in ``forward_field``.
        dtype: of ``theta0`` (``None``: JAX's default float).

    Returns:
        A ``Problem``: ``posterior`` (a ``bodil.Posterior`` with no field, ``u0 = {}``: usable with ``bodil.hmc``
        for the surrogate), ``theta0`` (``_start``: from the two highest readings), ``truth`` (with ``field``,
        the fine-lattice field), ``data`` (``sensors (m, 2)``, ``y``, ``clean`` readings, ``sigma``) and
        ``settings``. ``log_likelihood(problem)`` gives BASIS's function.

    Raises:
        InputError: a truth whose discs overlap or reach the ring.
        ValueError: an unknown ``forward``, a non-positive ``sigma`` or ``width``, too many sensors.
    """
    where = "steady_sources"
    _checks.choice(where, "forward", forward, FORWARDS)
    sigma = _checks.positive(where, "sigma", sigma)
    num_sensors = _checks.integer(where, "num_sensors", num_sensors, low=1, high=(size - 2) ** 2)
    truth = dict(TRUTH if truth is None else truth)
    geometry = steady.check_geometry(steady.Geometry(np.asarray(truth["centres"], float),
                                                     np.array([1.0, float(truth["v2"])]), size, radius))
    if not 0 < geometry.values[1] <= 1:
        raise ValueError(f"{where}: the truth's v2 must lie in (0, 1], got {geometry.values[1]:g}.")
    rng = np.random.default_rng(_checks.seed_words(where, seed))
    flat = rng.choice((size - 2) ** 2, num_sensors, replace=False)
    sensors = np.stack(np.unravel_index(flat, (size - 2, size - 2)), axis=1) + 1
    field = fine_field(geometry.centres, geometry.values[1], size, radius)
    clean = field[sensors[:, 0], sensors[:, 1]]
    y = clean + sigma * rng.standard_normal(num_sensors)

    solve = forward_field(forward, size=size, radius=radius, surrogate=surrogate, width=width, hold=hold)
    rows, cols = jnp.asarray(sensors[:, 0]), jnp.asarray(sensors[:, 1])
    grid = Grid(shape=(size, size), lower=0.0, upper=size - 1.0, names=("x", "y"))
    prior = centre_prior(size, radius)
    params = Params(centres=prior, v2=Uniform(0.0, 1.0))
    post = Posterior(PDEPrior(_no_field, grid), Gaussian(lambda u, theta: solve(theta)[rows, cols], y, sigma),
                     params)
    theta0 = {k: jnp.asarray(v, dtype) for k, v in _start(sensors, y, prior).items()}
    return Problem(posterior=post, u0={}, theta0=theta0,
                   truth={"centres": geometry.centres, "v2": float(geometry.values[1]), "field": field},
                   data={"sensors": sensors, "y": y, "clean": clean, "sigma": sigma},
                   settings=dict(forward=forward, size=size, radius=radius, num_sensors=num_sensors, sigma=sigma,
                                 seed=seed if isinstance(seed, int) else "key", width=width, hold=hold,
                                 data="sparse direct solve on the twice finer lattice"))


def log_likelihood(problem: Problem) -> Callable:
    """``theta -> log L(theta)`` of ``problem`` (its Gaussian likelihood; no field), a pure JAX function for
    ``bodil.basis`` (with ``VmapExecutor`` it runs as one batched program; the exact forward model solves the
    batch's geometries one after the other)."""
    lik = problem.posterior.likelihoods[0]

    def log_l(theta):
        return lik.log_prob({}, theta)

    return jax.jit(log_l)


def named_draws(idata) -> dict[str, np.ndarray]:
    """The draws of an ``InferenceData`` (``bodil.basis`` or ``bodil.hmc``) as flat arrays ``x1, y1, x2, y2,
    v2`` (all chains together)."""
    c = np.asarray(idata.posterior["centres"].values).reshape(-1, 2, 2)
    return {"x1": c[:, 0, 0], "y1": c[:, 0, 1], "x2": c[:, 1, 0], "y2": c[:, 1, 1],
            "v2": np.asarray(idata.posterior["v2"].values).reshape(-1)}


def summarise(draws: dict[str, np.ndarray], level: float = 0.9) -> dict[str, dict[str, float]]:
    """Per unknown: ``mean``, ``sd`` and the central ``level`` interval ``lo``, ``hi`` (sample quantiles)."""
    tail = 0.5 * (1.0 - _checks.open_interval("summarise", "level", level, 0.0, 1.0))
    return {k: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)), "lo": float(np.quantile(v, tail)),
                "hi": float(np.quantile(v, 1.0 - tail))} for k, v in draws.items()}


def as_matrix(draws: dict[str, np.ndarray]) -> np.ndarray:
    """``(num_draws, 5)`` in the order of ``NAMES``."""
    return np.stack([draws[k] for k in NAMES], axis=1)


def mahalanobis2(point, draws: dict[str, np.ndarray]) -> float:
    """``(p - m)^T S^{-1} (p - m)`` for ``point`` (a dict with ``NAMES`` or a length-5 vector) under the draws'
    mean ``m`` and covariance ``S``: ``point`` lies in the draws' Gaussian ``level`` region when this is below
    the chi-square quantile with 5 degrees of freedom (``scipy.stats.chi2.ppf(level, 5)``; 9.24 for 0.9)."""
    p = np.array([point[k] for k in NAMES], float) if isinstance(point, dict) else np.asarray(point, float)
    x = as_matrix(draws)
    diff = p - x.mean(axis=0)
    return float(diff @ np.linalg.solve(np.cov(x.T), diff))


__all__ = ["DiscPairUniform", "FORWARDS", "NAMES", "TRUTH", "as_matrix", "centre_prior", "disc_indicators",
           "fine_field", "forward_field", "log_likelihood", "mahalanobis2", "named_draws", "overlap_probability",
           "steady_sources", "summarise"]
