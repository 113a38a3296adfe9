"""A ready-to-solve inverse problem: posterior, starting point, truth."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..grid import Grid
from ..posterior import Posterior


@dataclasses.dataclass
class Problem:
    """An inverse problem with synthetic data.

    Attributes:
        posterior: the ``bodil.Posterior``.
        u0: starting field for the MAP solve.
        theta0: starting parameters (constrained).
        truth: the field and parameters that generated the data.
        data: the observations and where they were taken.
        settings: the numbers that define the case (for reports).
    """

    posterior: Posterior
    u0: Any
    theta0: dict
    truth: dict
    data: dict
    settings: dict

    @property
    def grid(self) -> Grid:
        return self.posterior.grid
