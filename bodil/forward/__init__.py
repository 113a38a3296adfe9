"""Forward models: explicit finite-difference solvers (reference solutions, synthetic data, initial guesses)."""

from .fd import cfl_time_step, solve_reaction_diffusion
from .fk import fk_initial_condition, solve_fk

__all__ = ["cfl_time_step", "fk_initial_condition", "solve_fk", "solve_reaction_diffusion"]
