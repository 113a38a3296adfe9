"""Adam with the papers' recipe, kept as the baseline MAP solver.

GliODIL (Balcerak et al. 2025) and Amoudruz et al. 2025, sec. 3.4: learning rate 1e-3, halved when the loss has
not improved for 50 consecutive epochs, never below 1e-4; 5000 epochs per solve. Built from ``optax.adam`` and
``optax.contrib.reduce_on_plateau`` (``factor=0.5, patience=50, min_scale=0.1``). Epochs run in jitted
chunks of ``chunk`` steps (``lax.scan``); the driver (``bodil.optimize.iterate``) checks the stopping rules
and advances the progress meter between chunks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax import contrib

from ..progress import ProgressMeter
from .iterate import Outcome, Stop, iterate
from .objective import Objective


def adam_recipe(learning_rate: float = 1e-3, patience: int = 50, factor: float = 0.5,
                min_learning_rate: float = 1e-4, rtol: float = 1e-4) -> optax.GradientTransformationExtraArgs:
    """``optax.adam`` followed by plateau halving: the papers' optimiser.

    "No progress" means no relative improvement of ``rtol`` over the best loss so far (the default
    threshold of PyTorch's ``ReduceLROnPlateau``, which the GliODIL code uses).
    """
    return optax.chain(
        optax.adam(learning_rate),
        contrib.reduce_on_plateau(factor=factor, patience=patience, rtol=rtol, atol=0.0,
                                  min_scale=min_learning_rate / learning_rate),
    )


class AdamState(NamedTuple):
    x: jax.Array
    opt_state: Any
    iterations: int
    history: tuple  # the losses of each chunk's epochs (numpy arrays)
    grad_inf: float  # |g|_inf at the last epoch


@dataclasses.dataclass(frozen=True)
class Adam:
    """``adam_recipe`` as a solver for ``bodil.optimize.iterate``: one step is a compiled chunk of epochs."""

    obj: Objective
    opt: optax.GradientTransformationExtraArgs
    run_chunk: Callable  # ``compiled_chunk(obj, opt, chunk)``
    epochs: int
    gtol: float = 0.0
    target_loss: float | None = None
    chunk: int = 100
    method: str = "adam"

    def init(self, x0):
        return AdamState(x0, self.opt.init(x0), 0, (), np.inf)

    def step(self, state: AdamState, budget: int, tick) -> AdamState:
        n = min(self.chunk, budget)
        x, opt_state, losses, gnorms = self.run_chunk(state.x, state.opt_state, n)
        losses, gnorms = np.asarray(losses[:n]), np.asarray(gnorms[:n])
        tick(n, loss=float(losses[-1]))
        return AdamState(x, opt_state, state.iterations + n, (*state.history, losses), float(gnorms[-1]))

    def terminate(self, state: AdamState) -> Stop | None:
        if self.gtol > 0 and state.grad_inf <= self.gtol:
            return Stop(True, "gradient norm below gtol")
        if self.target_loss is not None and state.history and np.min(state.history[-1]) <= self.target_loss:
            return Stop(True, "target loss reached")
        if state.iterations >= self.epochs:
            return Stop(False, f"{self.epochs} epochs done")
        return None

    def postprocess(self, state: AdamState, stop: Stop) -> Outcome:
        n = state.iterations
        return Outcome(state.x, jax.grad(self.obj.value)(state.x), stop.message, {"fun": n, "grad": n},
                       list(state.history), {"learning_rate_scale": float(state.opt_state[1].scale)})


def compiled_chunk(obj: Objective, opt, chunk: int) -> Callable:
    """``(x, opt_state, n) -> (x, opt_state, losses, |g|_inf per epoch)`` after ``n <= chunk`` epochs of
    ``opt``, compiled once for every ``n``."""
    value_and_grad = jax.value_and_grad(obj.value)

    @jax.jit
    def run_chunk(x, state, n):
        def body(carry, i):
            x, state = carry
            loss, g = value_and_grad(x)
            updates, new_state = opt.update(g, state, x, value=loss)
            active = i < n
            x = jnp.where(active, optax.apply_updates(x, updates), x)
            state = jax.tree.map(lambda a, b: jnp.where(active, a, b), new_state, state)
            return (x, state), (loss, jnp.max(jnp.abs(g)))

        (x, state), (losses, gnorms) = jax.lax.scan(body, (x, state), jnp.arange(chunk))
        return x, state, losses, gnorms

    return run_chunk


def adam(obj: Objective, *, epochs: int = 5000, learning_rate: float = 1e-3, patience: int = 50,
         factor: float = 0.5, min_learning_rate: float = 1e-4, gtol: float = 0.0,
         target_loss: float | None = None, chunk: int = 100, progress: bool | ProgressMeter = False):
    """Minimise ``obj`` with ``adam_recipe`` for ``epochs`` epochs; returns ``(x, Report)``.

    Stops early (at a chunk boundary) when ``|g|_inf <= gtol`` or the loss reaches ``target_loss``. A solve
    that runs all its epochs is reported as not converged (the recipe has no stopping rule of its own).
    """
    opt = adam_recipe(learning_rate, patience, factor, min_learning_rate)
    solver = Adam(obj, opt, compiled_chunk(obj, opt, chunk), epochs, gtol, target_loss, chunk)
    return iterate(solver, obj.x0, max_iter=epochs, progress=progress)
