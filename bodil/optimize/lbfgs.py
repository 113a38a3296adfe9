"""L-BFGS MAP solver (``optax.lbfgs`` with its zoom line search, strong Wolfe conditions)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
from tqdm.auto import tqdm

from .objective import Objective
from .result import Report

_REASONS = {1: "gradient norm below gtol", 2: "target loss reached", 3: "relative loss change below ftol"}


def lbfgs(obj: Objective, *, max_iter: int = 2000, memory_size: int = 10, gtol: float = 1e-6,
          ftol: float | None = None, target_loss: float | None = None, chunk: int = 20, progress: bool = False):
    """Minimise ``obj`` with L-BFGS; returns ``(x, Report)``.

    Stops when ``|g|_inf <= gtol``, when the loss changed by less than ``ftol * max(|f|, 1)`` over an
    iteration, when the loss reaches ``target_loss`` or after ``max_iter`` iterations.
    """
    if ftol is None:
        ftol = 1e-14 if obj.x0.dtype == jnp.float64 else 1e-7
    opt = optax.lbfgs(memory_size=memory_size)
    value_and_grad = optax.value_and_grad_from_state(obj.value)
    target = -jnp.inf if target_loss is None else target_loss

    @jax.jit
    def run_chunk(x, state):
        def cond(carry):
            _, _, k, _, reason = carry
            return (k < chunk) & (reason == 0)

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
        x, state, k, n_ls, reason = jax.lax.while_loop(cond, body, (x, state, zero, zero, zero))
        return x, state, k, n_ls, reason

    start = time.perf_counter()
    x, state = obj.x0, opt.init(obj.x0)
    it, n_fun = 0, 0
    history = []
    converged, message = False, "maximum number of iterations reached"
    with tqdm(total=max_iter, desc="l-bfgs", disable=not progress, leave=False) as bar:
        while it < max_iter:
            x, state, k, n_ls, reason = run_chunk(x, state)
            it += int(k)
            n_fun += int(n_ls)
            loss = float(otu.tree_get(state, "value"))
            history.append(loss)
            bar.update(int(k))
            bar.set_postfix(loss=f"{loss:.6g}")
            if int(reason):
                converged, message = True, _REASONS[int(reason)]
                break
    x.block_until_ready()
    wall = time.perf_counter() - start
    g = jax.grad(obj.value)(x)
    final = float(obj.value(x))
    report = Report(method="l-bfgs", converged=converged, message=message, iterations=it, loss=final,
                    loss_terms=obj.parts(x), grad_norm=float(jnp.max(jnp.abs(g))), wall_time=wall,
                    evaluations={"fun": n_fun, "grad": it}, history=np.asarray(history + [final]))
    return x, report
