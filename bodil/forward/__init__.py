"""Forward models: explicit finite-difference solvers (reference solutions, synthetic data, initial guesses)."""

from .fd import cfl_time_step, solve_reaction_diffusion

__all__ = ["cfl_time_step", "solve_reaction_diffusion"]
