"""BiLO's lower level solved at fixed upper-level variables, by L-BFGS.

Zhang et al., "BiLO: Bilevel Local Operator Learning for PDE inverse problems", eq. 7: the network weights of the
bilevel problem are the lower-level solution ``W*(p) = argmin_W L_LO(W, p)``, ``L_LO = L_res + w_rgrad L_rgrad``
(eq. 6; for an unknown function, eq. 16 with ``p`` the function network's weights). Simultaneous gradient descent
(Algorithm 1) ends with ``p`` converged and ``W`` near, not at, ``W*(p)``: the network it hands over is a
solution of the PDE only as far as Adam at a fixed learning rate got. ``solve_lower`` finishes that solve with
``p`` held: L-BFGS (``optax.lbfgs``, zoom line search; its last value and gradient are reused) on ``L_LO`` in
``W``, in compiled chunks with progress, until ``L_LO <= tol`` or ``iterations``. The parameters, and so every
inferred number, stay as they were; what changes is how well the network solves the PDE there.

Why L-BFGS and not more Adam steps: on these small networks (a few thousand weights) a quasi-Newton method
lowers the loss per gradient evaluation far more than Adam at the training rate, the usual final phase of
physics-informed training; ``optax.lbfgs`` already does it (``benchmarks/bilo.py --polish``).
"""

from __future__ import annotations

import functools
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checks import integer, positive
from ..progress import as_meter
from .train import BiLOResult, DivergenceError, Trainer


def solve_lower(tr: Trainer, result: BiLOResult, iterations: int, *, tol: float = 0.0, chunk: int = 500,
                progress=False, desc: str | None = None) -> BiLOResult:
    """Minimise BiLO's lower-level loss in the network weights with the upper level fixed (module docstring).

    Args:
        tr: the BiLO ``Trainer`` (``trainer`` or ``function_trainer`` with ``method="bilo"``) that produced
            ``result``.
        result: a ``BiLOResult`` of fine-tuning (``fit``); its ``p`` (or function weights) is held.
        iterations: the most L-BFGS iterations.
        tol: stop once ``L_LO <= tol`` (``0``: run every iteration).
        chunk: iterations per compiled chunk (progress and the NaN check happen between chunks).
        progress: ``True``, ``False`` or a ``bodil.progress`` meter.
        desc: progress label.

    Returns:
        A ``BiLOResult`` with the new weights (``state.params``; the Adam states are left as they were), the
        same ``theta``, ``history["loss"]`` the lower-level loss at each iteration's start, the wall time, and
        ``inner_unconverged`` 1 when ``tol > 0`` was not reached (with a warning), else 0.

    Raises:
        ValueError: a PINN trainer (it has no lower level) or a result of pre-training.
        DivergenceError: the loss became NaN or infinite.
    """
    if tr.lower is None:
        raise ValueError("solve_lower: the trainer has no lower level (a PINN minimises one loss in (W, p)); "
                         "use a BiLO trainer (BiLOSettings(method='bilo')).")
    if bool(result.state.pretraining):
        raise ValueError("solve_lower: the result is of pre-training; solve the lower level after fine-tuning "
                         "(fit(tr, tr.init(..., params=pre.state.params), steps)).")
    iterations = integer("solve_lower", "iterations", iterations, 0)
    chunk = integer("solve_lower", "chunk", chunk, 1)
    tol = positive("solve_lower", "tol", tol, allow_zero=True)
    state = result.state
    solver, run = _chunk_runner(tr.lower, chunk)
    W, p = state.params, state.p
    opt = solver.init(W)
    dtype = jax.tree_util.tree_leaves(W)[0].dtype
    losses, done, t0 = [], 0, time.perf_counter()
    meter = as_meter(progress)
    bar = meter.init(desc or "bilo lower level (L-BFGS)", total=iterations, unit="it")
    try:
        while done < iterations:
            n = min(chunk, iterations - done)
            W, opt, values = run(W, opt, p, jnp.asarray(tol, dtype), jnp.asarray(n, jnp.int32))
            values = np.asarray(values)[:n]
            if not np.all(np.isfinite(values)):
                raise DivergenceError(f"solve_lower: the lower-level loss became NaN or infinite near iteration "
                                      f"{done + int(np.argmin(np.isfinite(values))) + 1}; the weights are those of "
                                      f"the result passed in.", done)
            reached = values <= tol
            if tol > 0 and reached.any():  # frozen from the first value at the tolerance
                values = values[:int(np.argmax(reached)) + 1]
            losses.append(values)
            done += len(values)
            meter.step(bar, len(values), loss=float(values[-1]))
            if len(values) < n:
                break
    finally:
        meter.close(bar)
    history = {"loss": np.concatenate(losses) if losses else np.zeros(0)}
    final = float(tr.lower(W, p))
    history["final"] = np.asarray(final)
    missed = int(tol > 0 and final > tol)
    if missed:
        warnings.warn(f"solve_lower: L_LO = {final:.3g} after {done} L-BFGS iterations, above tol = {tol:g}; the "
                      f"network is that far from solving the PDE at the inferred parameters (raise iterations).",
                      stacklevel=2)
    new_state = state._replace(params=W)
    return BiLOResult(new_state, tr.network(new_state), result.theta, history, time.perf_counter() - t0, missed)


@functools.lru_cache(maxsize=8)
def _chunk_runner(lower, chunk: int):
    """``(solver, run)``: L-BFGS and its compiled chunk, up to ``n <= chunk`` iterations on ``lower(W, p)``,
    frozen once ``<= tol``; cached per trainer and chunk size, so that repeated calls compile once."""
    solver = optax.lbfgs()

    @jax.jit
    def run(W, opt, p, tol, n):
        def f(W):
            return lower(W, p)

        value_and_grad = optax.value_and_grad_from_state(f)

        def body(c, i):
            W, opt = c
            value, grad = value_and_grad(W, state=opt)
            upd, new_opt = solver.update(grad, opt, W, value=value, grad=grad, value_fn=f)
            stop = (i >= n) | (value <= tol)
            W, opt = jax.tree_util.tree_map(lambda a, b: jnp.where(stop, a, b), (W, opt),
                                            (optax.apply_updates(W, upd), new_opt))
            return (W, opt), value

        (W, opt), values = jax.lax.scan(body, (W, opt), jnp.arange(chunk))
        return W, opt, values

    return solver, run
