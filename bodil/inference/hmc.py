"""Hamiltonian Monte Carlo over the joint posterior ``p(u, theta | D)``, through numpyro or blackjax.

The field and the inferred parameters are sampled together in unconstrained space. A position is the flat
vector ``x = ravel((u, z))`` with ``theta = T(z)`` (``bodil.Params`` transforms), and the potential energy is

    U(x) = -log p(u, T(z) | D) - log |det dT/dz|            (``Posterior.potential``)

With a momentum ``p ~ N(0, M)`` (``M^{-1}`` the inverse mass matrix, diagonal) the Hamiltonian is

    H(x, p) = U(x) + 0.5 p^T M^{-1} p,

integrated by the leapfrog scheme with step ``eps``:

    p' = p - (eps/2) grad U(x),   x_new = x + eps M^{-1} p',   p_new = p' - (eps/2) grad U(x_new).

Static HMC (``kernel="hmc"``) takes ``L = num_steps`` leapfrog steps, flips the momentum and accepts the end
point with probability ``min(1, exp(H(x, p) - H(x_L, -p_L)))``; leapfrog is volume preserving and reversible,
so this leaves ``exp(-U)`` invariant. NUTS (``kernel="nuts"``) doubles the trajectory until it turns back on
itself (at most ``2^max_tree_depth - 1`` steps) and draws the next state from it. With ``adapt=True`` the
warmup tunes ``eps`` by dual averaging towards ``target_accept`` and a diagonal ``M^{-1}`` from the warmup
draws (Stan's windowed schedule in both backends).

The static HMC of Amoudruz et al. 2025 (sec. 3.1: 10 leapfrog steps of 0.008, identity mass matrix, no
adaptation, started at the MAP) is

    idata = hmc(post, fit, kernel="hmc", step_size=0.008, num_steps=10, adapt=False,
                num_warmup=0, num_samples=10_000)

Compare acceptance rates, not step sizes, across loss normalisations (docs/inference.md: with bodil's
``L_PDE`` that step lies at the leapfrog stability limit of the oscillator).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .. import _checks
from ..progress import ProgressMeter, as_meter

BACKENDS = ("numpyro", "blackjax")
KERNELS = ("nuts", "hmc")
CHAIN_METHODS = ("vectorized", "sequential")


@dataclasses.dataclass(frozen=True)
class HMCSettings:
    """What both backends need to run the chains; checked (and converted to plain types) on construction.

    Attributes:
        kernel: ``"nuts"`` or ``"hmc"`` (static).
        num_samples: draws kept per chain (>= 1).
        num_warmup: draws discarded per chain (>= 0; > 0 with ``adapt``).
        num_chains: independent chains (>= 1).
        chain_method: ``"vectorized"`` or ``"sequential"``.
        adapt: tune the step size and a diagonal mass matrix during warmup.
        step_size: leapfrog step; required when ``adapt`` is ``False``.
        num_steps: leapfrog steps per proposal; required with ``kernel="hmc"``, refused with NUTS.
        target_accept: acceptance rate the step-size adaptation aims at, in (0, 1).
        max_tree_depth: NUTS trajectories have at most ``2^max_tree_depth - 1`` leapfrog steps.
        progress: show the backend's own progress bar.

    Raises:
        ValueError: an unknown kernel or chain method, a count out of range, a missing or refused
            ``step_size``/``num_steps``, ``adapt`` without warmup.
    """

    kernel: str = "nuts"
    num_samples: int = 2000
    num_warmup: int = 1000
    num_chains: int = 1
    chain_method: str = "vectorized"
    adapt: bool = True
    step_size: float | None = None
    num_steps: int | None = None
    target_accept: float = 0.8
    max_tree_depth: int = 10
    progress: bool = False

    def __post_init__(self):
        where = "hmc"
        values = {
            "kernel": _checks.choice(where, "kernel", self.kernel, KERNELS),
            "chain_method": _checks.choice(where, "chain_method", self.chain_method, CHAIN_METHODS),
            "num_samples": _checks.integer(where, "num_samples", self.num_samples, 1),
            "num_warmup": _checks.integer(where, "num_warmup", self.num_warmup, 0),
            "num_chains": _checks.integer(where, "num_chains", self.num_chains, 1),
            "max_tree_depth": _checks.integer(where, "max_tree_depth", self.max_tree_depth, 1),
            "adapt": bool(self.adapt), "progress": bool(self.progress),
        }
        if self.kernel == "hmc" and self.num_steps is None:
            raise ValueError("hmc: kernel='hmc' (static HMC) needs num_steps, the leapfrog steps per proposal "
                             "(Amoudruz et al. (2025): num_steps=10).")
        if self.kernel == "nuts" and self.num_steps is not None:
            raise ValueError("hmc: num_steps sets static HMC's path length; NUTS chooses its own (use "
                             "max_tree_depth), or pass kernel='hmc'.")
        if self.num_steps is not None:
            values["num_steps"] = _checks.integer(where, "num_steps", self.num_steps, 1)
        if not self.adapt and self.step_size is None:
            raise ValueError("hmc: adapt=False keeps the step size fixed, so step_size is required "
                             "(Amoudruz et al. (2025): step_size=0.008).")
        if self.step_size is not None:
            values["step_size"] = _checks.positive(where, "step_size", self.step_size)
        if self.adapt and self.num_warmup == 0:
            raise ValueError("hmc: adapt=True tunes the step size during warmup, so num_warmup must be > 0; "
                             "for fixed settings pass adapt=False and a step_size.")
        values["target_accept"] = _checks.open_interval(where, "target_accept", self.target_accept, 0.0, 1.0)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def attrs(self) -> dict:
        """The settings that shaped the run, as netCDF-safe ``InferenceData`` attributes (no ``None``, bools
        as 0/1, and without the options the kernel ignores)."""
        unused = {"max_tree_depth"} if self.kernel == "hmc" else set()
        unused |= set() if self.adapt else {"target_accept"}
        return {k: (int(v) if isinstance(v, bool) else v) for k, v in dataclasses.asdict(self).items()
                if v is not None and k not in unused}


def hmc(posterior, init, *, num_samples: int = 2000, num_warmup: int = 1000, seed=0, backend: str = "numpyro",
        kernel: str = "nuts", step_size: float | None = None, num_steps: int | None = None, adapt: bool = True,
        num_chains: int = 1, chain_method: str = "vectorized", target_accept: float = 0.8,
        max_tree_depth: int = 10, progress: bool | ProgressMeter = False) -> az.InferenceData:
    """Sample ``p(u, theta | D)`` with NUTS or static HMC, started at ``init`` (usually the MAP).

    Args:
        posterior: a ``bodil.Posterior``.
        init: a ``MAPResult`` or a pair ``(u, theta)`` with ``theta`` constrained. Every chain starts there
            (after warmup the chains are independent; R-hat is less sensitive than with dispersed starts).
        num_samples: draws kept per chain.
        num_warmup: draws discarded per chain; with ``adapt=True`` they tune the step size and the mass matrix.
        seed: an integer or a ``jax.random`` key. The same seed gives the same draws.
        backend: ``"numpyro"`` (``numpyro.infer.MCMC``) or ``"blackjax"`` (``window_adaptation`` and a
            ``jax.lax.scan`` loop).
        kernel: ``"nuts"`` or ``"hmc"`` (static, ``num_steps`` leapfrog steps per proposal).
        step_size: leapfrog step ``eps``; required with ``adapt=False``, else the starting value of the
            adaptation (default 1).
        num_steps: leapfrog steps per proposal; required with ``kernel="hmc"``.
        adapt: tune ``eps`` and a diagonal mass matrix during warmup; ``False`` keeps ``eps`` and ``M = I``.
        num_chains: independent chains (for R-hat, ``arviz.rhat``), each with its own key from ``seed``; they
            run in one vmapped program (``chain_method="vectorized"``, NUTS chains then wait for the longest
            trajectory of each step) or one after another (``"sequential"``).
        target_accept: acceptance rate the step-size adaptation aims at.
        max_tree_depth: NUTS trajectories have at most ``2^max_tree_depth - 1`` leapfrog steps.
        progress: ``True`` shows the backend's own bar, draw by draw (blackjax needs its ``progress`` extra,
            ``jaxtap``); a ``bodil.progress`` meter gets one job of ``num_chains * (num_warmup + num_samples)``
            draws, stepped when the compiled run returns.

    Returns:
        ``arviz.InferenceData``: ``posterior`` holds the inferred parameters (constrained) and the field on
        the grid's named dims (``u`` with dims ``(chain, draw, *grid.names)``, or one variable per key when
        the field is a dict, like the oscillator's ``x`` and ``v``); ``sample_stats`` holds ``diverging``,
        ``acceptance_rate``, ``step_size``, ``n_steps`` (leapfrog steps), ``energy`` (``H`` at the draw),
        ``lp`` (``-U(x)``, the log density in unconstrained space) and, for NUTS, ``tree_depth``; ``attrs``
        the backend, kernel, settings (``HMCSettings``), ``seed`` when it was an integer and ``wall_time``
        (seconds, compilation included).

    Raises:
        ValueError: unknown backend, kernel or chain method; missing ``step_size``/``num_steps``; a
            non-finite potential or gradient at ``init``.
        TypeError: ``init`` is neither a ``MAPResult`` nor a pair; ``seed`` is neither an integer nor a key.
    """
    _checks.choice("hmc", "backend", backend, BACKENDS)
    settings = HMCSettings(kernel=kernel, num_samples=num_samples, num_warmup=num_warmup, num_chains=num_chains,
                           chain_method=chain_method, adapt=adapt, step_size=step_size, num_steps=num_steps,
                           target_accept=target_accept, max_tree_depth=max_tree_depth, progress=progress is True)
    rng_key = _checks.as_key("hmc", seed)
    x0, unravel = _initial_position(posterior, init)

    def potential(x):
        return posterior.potential(unravel(x))

    _check_finite(posterior, potential, x0, unravel)
    x0s = jnp.broadcast_to(x0, (settings.num_chains,) + x0.shape)
    meter = as_meter(None if progress is True else progress)
    total = settings.num_chains * (settings.num_warmup + settings.num_samples)
    start = time.perf_counter()
    with meter.session(f"hmc ({backend} {kernel})", total=total, unit="draw") as bar:
        draws, stats = _SAMPLERS[backend](potential, x0s, rng_key, settings)
        draws = jax.block_until_ready(draws)
        bar.step(total)
    wall = time.perf_counter() - start
    attrs = {"backend": backend, "wall_time": wall, **settings.attrs()}
    if not isinstance(seed, jax.Array):
        attrs["seed"] = int(seed)
    return _inference_data(posterior, unravel, draws, stats, attrs)


# ---------------------------------------------------------------------- shared
def _initial_position(posterior, init):
    """Flat unconstrained start ``x0 = ravel((u, T^{-1}(theta)))`` and the map back to ``(u, z)``."""
    u, theta = _checks.starting_point("hmc", init)
    posterior.check(u, theta)
    return ravel_pytree(posterior.unconstrain(u, theta))


def _check_finite(posterior, potential, x0, unravel):
    value, grad = jax.value_and_grad(potential)(x0)
    if np.isfinite(value) and np.all(np.isfinite(grad)):
        return
    from .. import terms  # only on the error path: name the blocks that are not finite

    blocks = posterior.unconstrained_blocks(unravel(x0))
    bad = [k for k, b in blocks.items() if not np.isfinite(float(terms.total({k: b})))]
    what = f"potential {float(value)}" if not np.isfinite(value) else "gradient of the potential"
    raise ValueError(f"hmc: the {what} is not finite at the initial position (non-finite blocks: {bad or 'none'}); "
                     f"start from a valid point, e.g. the MAP from bodil.map_estimate.")


def _inference_data(posterior, unravel, draws, stats, attrs) -> az.InferenceData:
    """Constrain the flat draws ``(chain, draw, d)`` and name their dims after the grid."""
    u, theta = jax.jit(jax.vmap(jax.vmap(lambda x: posterior.constrain(unravel(x)))))(draws)
    grid = posterior.grid
    if isinstance(u, dict):
        fields = dict(u)
    elif isinstance(u, (list, tuple)):
        fields = {f"u{i}": f for i, f in enumerate(u)}
    else:
        fields = {"u": u}
    names = [*fields, *theta, *grid.names]
    clash = {n for n in names if names.count(n) > 1}
    if clash:
        raise ValueError(f"hmc: the names {sorted(clash)} are used twice among the field(s) {list(fields)}, the "
                         f"parameters {list(theta)} and the grid axes {grid.names}; rename one of them.")
    dims = {name: list(grid.names) + [f"{name}_dim_{k}" for k in range(np.ndim(f) - 2 - grid.ndim)]
            for name, f in fields.items()}
    coords = {name: grid.coordinates(name) for name in grid.names}
    samples = {k: np.asarray(v) for k, v in {**theta, **fields}.items()}
    sample_stats = {k: np.asarray(v) for k, v in stats.items()}
    return az.from_dict(posterior=samples, sample_stats=sample_stats, coords=coords, dims=dims, attrs=attrs)


# ---------------------------------------------------------------------- numpyro
def _sample_numpyro(potential, x0s, key, s: HMCSettings):
    from numpyro.infer import HMC, MCMC, NUTS

    common = dict(potential_fn=potential, step_size=1.0 if s.step_size is None else s.step_size,
                  adapt_step_size=s.adapt, adapt_mass_matrix=s.adapt, target_accept_prob=s.target_accept)
    sampler = (NUTS(max_tree_depth=s.max_tree_depth, **common) if s.kernel == "nuts"
               # trajectory_length=None: otherwise numpyro rescales the step to trajectory_length / num_steps
               else HMC(num_steps=s.num_steps, trajectory_length=None, **common))
    mcmc = MCMC(sampler, num_warmup=s.num_warmup, num_samples=s.num_samples, num_chains=s.num_chains,
                chain_method=s.chain_method, progress_bar=s.progress)
    fields = ("diverging", "accept_prob", "adapt_state.step_size", "num_steps", "energy", "potential_energy")
    mcmc.run(key, init_params=x0s if s.num_chains > 1 else x0s[0], extra_fields=fields)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    n_steps = np.asarray(extra["num_steps"])
    stats = {"diverging": extra["diverging"], "acceptance_rate": extra["accept_prob"],
             "step_size": extra["adapt_state.step_size"], "n_steps": n_steps, "energy": extra["energy"],
             "lp": -extra["potential_energy"]}
    if s.kernel == "nuts":
        # numpyro records the leapfrog steps n of the trajectory; a tree of depth d has 2^(d-1) <= n < 2^d.
        stats["tree_depth"] = np.floor(np.log2(np.maximum(n_steps, 1))).astype(np.int64) + 1
    return mcmc.get_samples(group_by_chain=True), stats


# ---------------------------------------------------------------------- blackjax
def _sample_blackjax(potential, x0s, key, s: HMCSettings):
    import blackjax
    from blackjax.adaptation.base import get_filter_adapt_info_fn
    from blackjax.mcmc.metrics import default_metric

    def logdensity(x):
        return -potential(x)

    algorithm = blackjax.nuts if s.kernel == "nuts" else blackjax.hmc
    extra = {"max_num_doublings": s.max_tree_depth} if s.kernel == "nuts" else {"num_integration_steps": s.num_steps}

    def one_chain(key, x0):
        key_warmup, key_sample = jax.random.split(key)
        if s.adapt:
            warmup = blackjax.window_adaptation(
                algorithm, logdensity, initial_step_size=1.0 if s.step_size is None else s.step_size,
                target_acceptance_rate=s.target_accept, adaptation_info_fn=get_filter_adapt_info_fn(), **extra)
            (state, parameters), _ = warmup.run(key_warmup, x0, num_steps=s.num_warmup)
        else:
            parameters = {"step_size": jnp.asarray(s.step_size, x0.dtype), "inverse_mass_matrix": jnp.ones_like(x0),
                          **extra}
            state = algorithm.init(x0, logdensity)
        sampler = algorithm(logdensity, **parameters)
        kinetic = default_metric(parameters["inverse_mass_matrix"]).kinetic_energy

        def step(state, key):
            new, info = sampler.step(key, state)
            if s.kernel == "nuts":
                energy = info.energy  # of the drawn state
            else:  # blackjax reports the proposal's energy; a rejection keeps the start point and its momentum
                energy = jnp.where(info.is_accepted, info.energy, -state.logdensity + kinetic(info.momentum))
            stats = {"diverging": info.is_divergent, "acceptance_rate": info.acceptance_rate,
                     "step_size": parameters["step_size"], "n_steps": info.num_integration_steps,
                     "energy": energy, "lp": new.logdensity}
            if s.kernel == "nuts":
                stats["tree_depth"] = info.num_trajectory_expansions
            return new, (new.position, stats)

        if not s.adapt and s.num_warmup:  # burn-in with the fixed settings
            state, _ = jax.lax.scan(lambda st, k: (sampler.step(k, st)[0], None), state,
                                    jax.random.split(key_warmup, s.num_warmup))
        _, out = jax.lax.scan(step, state, jax.random.split(key_sample, s.num_samples))
        return out

    keys = jax.random.split(key, s.num_chains)
    if s.num_chains == 1:  # no vmap: it would turn the samplers' lax.cond branches into selects
        run = jax.jit(lambda keys, x0s: jax.tree.map(lambda a: a[None], one_chain(keys[0], x0s[0])))
    elif s.chain_method == "vectorized":
        run = jax.jit(jax.vmap(one_chain))
    else:
        run = jax.jit(lambda keys, x0s: jax.lax.map(lambda a: one_chain(*a), (keys, x0s)))
    if not s.progress:
        return run(keys, x0s)
    try:
        with blackjax.progress_bar(label=f"blackjax {s.kernel}"):
            return run(keys, x0s)
    except ImportError as err:
        warnings.warn(f"hmc: no progress bar ({err}).", stacklevel=3)
        return run(keys, x0s)


_SAMPLERS: dict[str, Any] = {"numpyro": _sample_numpyro, "blackjax": _sample_blackjax}
