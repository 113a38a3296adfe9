"""Forward models: explicit finite-difference solvers (reference solutions, synthetic data, initial guesses),
and the neural surrogate of the Fisher-Kolmogorov solver in submodules imported on demand (they need equinox):
``dataset`` (training data), ``surrogate`` (ConvNeXt U-Net, training, shipped weights), ``metrics`` and
``inversion`` (gradient-based, direct, hybrid and CMA-ES inversion)."""

from .fd import cfl_time_step, solve_reaction_diffusion
from .fk import fk_initial_condition, solve_fk

__all__ = ["cfl_time_step", "fk_initial_condition", "solve_fk", "solve_reaction_diffusion"]
