"""Adam with the papers' recipe, kept as the baseline MAP solver.

Seed 003 sec. 3.4 / GliODIL: learning rate 1e-3, halved when the loss has not improved for 50 consecutive
epochs, never below 1e-4; 5000 epochs per solve. Built from ``optax.adam`` and
``optax.contrib.reduce_on_plateau`` (``factor=0.5, patience=50, min_scale=0.1``). Epochs run in jitted
chunks of ``chunk`` steps (``lax.scan``) with a progress bar between chunks.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax import contrib
from tqdm.auto import tqdm

from .objective import Objective
from .result import Report


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


def adam(obj: Objective, *, epochs: int = 5000, learning_rate: float = 1e-3, patience: int = 50,
         factor: float = 0.5, min_learning_rate: float = 1e-4, gtol: float = 0.0,
         target_loss: float | None = None, chunk: int = 100, progress: bool = False):
    """Minimise ``obj`` with ``adam_recipe`` for ``epochs`` epochs; returns ``(x, Report)``.

    Stops early (at a chunk boundary) when ``|g|_inf <= gtol`` or the loss reaches ``target_loss``.
    """
    opt = adam_recipe(learning_rate, patience, factor, min_learning_rate)
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

    start = time.perf_counter()
    x, state = obj.x0, opt.init(obj.x0)
    history: list[np.ndarray] = []
    done = 0
    converged, message = False, f"{epochs} epochs done"
    with tqdm(total=epochs, desc="adam", disable=not progress, leave=False) as bar:
        while done < epochs:
            n = min(chunk, epochs - done)
            x, state, losses, gnorms = run_chunk(x, state, n)
            losses, gnorms = np.asarray(losses[:n]), np.asarray(gnorms[:n])
            history.append(losses)
            done += n
            bar.update(n)
            bar.set_postfix(loss=f"{losses[-1]:.6g}")
            if gtol > 0 and gnorms[-1] <= gtol:
                converged, message = True, "gradient norm below gtol"
                break
            if target_loss is not None and np.min(losses) <= target_loss:
                converged, message = True, "target loss reached"
                break
    x.block_until_ready()
    wall = time.perf_counter() - start
    g = jax.grad(obj.value)(x)
    final = float(obj.value(x))
    history = np.concatenate(history + [np.array([final])])
    report = Report(method="adam", converged=converged, message=message, iterations=done, loss=final,
                    loss_terms=obj.parts(x), grad_norm=float(jnp.max(jnp.abs(g))), wall_time=wall,
                    evaluations={"fun": done, "grad": done}, history=history,
                    extra={"learning_rate_scale": float(state[1].scale)})
    return x, report
