"""L-BFGS MAP solver (``optax.lbfgs`` with its zoom line search, strong Wolfe conditions).

Iterations run in jitted chunks of up to ``chunk`` (``lax.while_loop``, which also checks the stopping rules);
the driver (``bodil.optimize.iterate``) advances the progress meter between chunks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

from ..progress import ProgressMeter
from .iterate import Outcome, Stop, iterate
from .objective import Objective

_REASONS = {1: "gradient norm below gtol", 2: "target loss reached", 3: "relative loss change below ftol"}


class LBFGSState(NamedTuple):
    x: jax.Array
    opt_state: Any
    iterations: int
    linesearch_evals: int
    history: tuple  # the loss after each chunk
    reason: int  # 0 (go on) or a key of _REASONS


@dataclasses.dataclass(frozen=True)
class LBFGS:
    """``optax.lbfgs`` as a solver for ``bodil.optimize.iterate``: one step is a compiled chunk of iterations."""

    obj: Objective
    opt: optax.GradientTransformationExtraArgs
    run_chunk: Callable  # ``compiled_chunk(obj, opt, chunk, ...)``
    chunk: int = 20
    method: str = "l-bfgs"

    def init(self, x0):
        return LBFGSState(x0, self.opt.init(x0), 0, 0, (), 0)

    def step(self, state: LBFGSState, budget: int, tick) -> LBFGSState:
        x, opt_state, k, n_ls, reason = self.run_chunk(state.x, state.opt_state, min(self.chunk, budget))
        loss = float(otu.tree_get(opt_state, "value"))
        tick(int(k), loss=loss)
        return LBFGSState(x, opt_state, state.iterations + int(k), state.linesearch_evals + int(n_ls),
                          (*state.history, loss), int(reason))

    def terminate(self, state: LBFGSState) -> Stop | None:
        return Stop(True, _REASONS[state.reason]) if state.reason else None

    def postprocess(self, state: LBFGSState, stop: Stop) -> Outcome:
        evaluations = {"fun": state.linesearch_evals, "grad": state.iterations}
        return Outcome(state.x, jax.grad(self.obj.value)(state.x), stop.message, evaluations, list(state.history),
                       {})


def compiled_chunk(obj: Objective, opt, gtol: float, ftol: float, target_loss: float | None) -> Callable:
    """``(x, opt_state, n) -> (x, opt_state, iterations, line-search steps, reason)``: up to ``n`` L-BFGS
    iterations, fewer when a stopping rule holds (``reason`` > 0, see ``_REASONS``); compiled once."""
    value_and_grad = optax.value_and_grad_from_state(obj.value)
    target = -jnp.inf if target_loss is None else target_loss

    @jax.jit
    def run_chunk(x, state, n):
        def cond(carry):
            _, _, k, _, reason = carry
            return (k < n) & (reason == 0)

        def body(carry):
            x, state, k, n_ls, _ = carry
            loss, g = value_and_grad(x, state=state)
            updates, state = opt.update(g, state, x, value=loss, grad=g, value_fn=obj.value)
            x = optax.apply_updates(x, updates)
            new_loss = otu.tree_get(state, "value")
            reason = jnp.select(
                [jnp.max(jnp.abs(g)) <= gtol, new_loss <= target,
                 jnp.abs(loss - new_loss) <= ftol * jnp.maximum(jnp.abs(new_loss), 1.0)], [1, 2, 3], 0)
            n_ls = n_ls + otu.tree_get(state, "num_linesearch_steps").astype(jnp.int32)
            return x, state, k + 1, n_ls, reason.astype(jnp.int32)

        zero = jnp.zeros((), jnp.int32)
        return jax.lax.while_loop(cond, body, (x, state, zero, zero, zero))

    return run_chunk


def lbfgs(obj: Objective, *, max_iter: int = 2000, memory_size: int = 10, gtol: float = 1e-6,
          ftol: float | None = None, target_loss: float | None = None, chunk: int = 20,
          progress: bool | ProgressMeter = False):
    """Minimise ``obj`` with L-BFGS; returns ``(x, Report)``.

    Stops when ``|g|_inf <= gtol``, when the loss changed by less than ``ftol * max(|f|, 1)`` over an
    iteration, when the loss reaches ``target_loss`` or after ``max_iter`` iterations.
    """
    if ftol is None:
        ftol = 1e-14 if obj.x0.dtype == jnp.float64 else 1e-7
    opt = optax.lbfgs(memory_size=memory_size)
    solver = LBFGS(obj, opt, compiled_chunk(obj, opt, gtol, ftol, target_loss), chunk)
    return iterate(solver, obj.x0, max_iter=max_iter, progress=progress)
