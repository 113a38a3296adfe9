"""What a MAP solve returns: the point and a report that says whether to trust it."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class Report:
    """Diagnostics of a MAP solve.

    ``loss`` is ``-log p`` at the result (unnormalised), ``loss_terms`` its split into ``pde``, ``ic``, ``data``
    and ``theta``. ``evaluations`` counts what was computed: ``fun`` (objective values), ``grad`` (gradients),
    ``jvp``/``vjp`` (Jacobian-vector products of Gauss-Newton). ``history`` holds the loss per iteration.
    """

    method: str
    converged: bool
    message: str
    iterations: int
    loss: float
    loss_terms: dict
    grad_norm: float
    wall_time: float
    evaluations: dict
    history: np.ndarray = dataclasses.field(repr=False, default_factory=lambda: np.zeros(0))
    extra: dict = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        ev = ", ".join(f"{k}={v}" for k, v in self.evaluations.items())
        parts = ", ".join(f"{k}={v:.6g}" for k, v in self.loss_terms.items())
        state = "converged" if self.converged else "NOT converged"
        return (f"{self.method}: {state} after {self.iterations} iterations ({self.message}); "
                f"loss {self.loss:.10g} [{parts}]; |grad|_inf {self.grad_norm:.3g}; "
                f"{self.wall_time:.3g} s; evaluations: {ev}")


@dataclasses.dataclass
class MAPResult:
    """A MAP estimate: the field ``u``, the inferred parameters ``theta`` (constrained) and the ``report``."""

    u: Any
    theta: dict
    report: Report


class MAPNotConverged(RuntimeError):
    """``map_estimate`` stopped before a stopping rule was met; ``result`` is the ``MAPResult`` it reached."""

    def __init__(self, message: str, result: MAPResult):
        super().__init__(message)
        self.result = result
