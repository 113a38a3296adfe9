"""One iteration driver for the MAP solvers (after optimistix's ``iterative_solve``).

A solver is an object with four methods and a ``method`` name for the report:

* ``state = solver.init(x0)``: the state at the start (a ``NamedTuple`` with at least ``x`` and
  ``iterations``);
* ``state = solver.step(state, budget, tick)``: one step, which may take up to ``budget`` iterations (Adam and
  L-BFGS run a compiled chunk of iterations per step); it reports each unit of work it finishes through
  ``tick(n, **postfix)``;
* ``stop = solver.terminate(state)``: ``None`` to go on, or a ``Stop(converged, message)``;
* ``outcome = solver.postprocess(state, stop)``: the final point and what only the solver knows about the
  solve (``Outcome``).

``iterate`` runs ``init``, then ``step`` and ``terminate`` until a stop or ``max_iter`` iterations, on the host:
the solvers' steps are compiled functions, and their stopping rules, line-search fallbacks and damping updates
are host-side logic between them. It owns the one progress meter and the one report builder: final loss and
its split, gradient norm, wall time.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from ..progress import ProgressMeter, as_meter
from .objective import Objective
from .result import Report

MAX_ITER_REACHED = "maximum number of iterations reached"


class Stop(NamedTuple):
    """Why a solve ended: ``converged`` (a stopping rule was met) and the report's ``message``."""

    converged: bool
    message: str


class Outcome(NamedTuple):
    """What a solver hands the report builder: the point ``x``, the gradient whose largest component is the
    report's ``grad_norm``, the ``message``, the ``evaluations`` counts, the loss ``history`` before the final
    point (any sequence of floats or arrays of floats) and solver-specific ``extra`` diagnostics."""

    x: jax.Array
    grad: jax.Array
    message: str
    evaluations: dict
    history: list
    extra: dict


class Solver(Protocol):
    """What ``iterate`` drives (see the module docstring)."""

    method: str
    obj: Objective

    def init(self, x0: jax.Array) -> Any: ...

    def step(self, state: Any, budget: int, tick: Callable[..., None]) -> Any: ...

    def terminate(self, state: Any) -> Stop | None: ...

    def postprocess(self, state: Any, stop: Stop) -> Outcome: ...


def iterate(solver: Solver, x0: jax.Array, *, max_iter: int,
            progress: bool | ProgressMeter = False) -> tuple[jax.Array, Report]:
    """Run ``solver`` from ``x0`` for at most ``max_iter`` iterations; returns ``(x, Report)``.

    ``report.converged`` is the ``Stop``'s flag; without a stop after ``max_iter`` iterations the solve is not
    converged and the message says so. ``report.loss`` is ``f(x)`` at the returned point and ``history`` the
    solver's per-step losses followed by that final value.
    """
    meter = as_meter(progress)
    start = time.perf_counter()
    state = solver.init(x0)
    stop = solver.terminate(state)
    bar = [meter.init(solver.method, total=max_iter)]  # only the meter's protocol: init, step, close

    def tick(n: int = 1, **postfix: Any) -> None:
        bar[0] = meter.step(bar[0], n, **postfix)

    try:
        while stop is None and state.iterations < max_iter:
            state = solver.step(state, max_iter - state.iterations, tick)
            stop = solver.terminate(state)
    finally:
        meter.close(bar[0])
    stop = stop or Stop(False, MAX_ITER_REACHED)
    out = solver.postprocess(state, stop)
    jax.block_until_ready((out.x, out.grad))
    wall = time.perf_counter() - start
    return out.x, build_report(solver, state.iterations, stop, out, wall)


def build_report(solver: Solver, iterations: int, stop: Stop, out: Outcome, wall_time: float) -> Report:
    """The ``Report`` of a solve that ended at ``out.x``: loss, its split and the gradient norm there."""
    obj = solver.obj
    final = float(obj.value(out.x))
    history = [np.atleast_1d(np.asarray(h)) for h in out.history] + [np.asarray([final])]
    return Report(method=solver.method, converged=stop.converged, message=out.message, iterations=int(iterations),
                  loss=final, loss_terms=obj.parts(out.x), grad_norm=float(jnp.max(jnp.abs(out.grad))),
                  wall_time=wall_time, evaluations=out.evaluations, history=np.concatenate(history),
                  extra=out.extra)
