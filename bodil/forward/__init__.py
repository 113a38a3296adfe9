"""Forward models: explicit finite-difference solvers (reference solutions, synthetic data, initial guesses),
a second, independent Fisher-Kolmogorov solver for validation data (``fk_split``: Strang splitting),
the Crank-Nicolson march of an ODIL reaction-diffusion residual (``crank_nicolson``: the field with zero
residual, the start of ODIL solves), and the neural surrogate of the Fisher-Kolmogorov solver in submodules imported on demand (they need equinox):
``dataset`` and ``storage`` (training data and its files), ``network`` (ConvNeXt U-Net, inverse encoder),
``model`` (the trained surrogate, shipped weights), ``training``, ``surrogate`` (all three under one name),
``metrics`` and ``inversion`` (gradient-based, direct, hybrid and CMA-ES inversion); and the steady
two-source diffusion surrogate of Toledo-Marín et al. (2021): ``steady`` (problem, sparse direct solve, dataset),
``steady_network`` (NN1, NN2, weights files) and ``steady_training`` (weighted loss, roll-back, metrics)."""

from .crank_nicolson import crank_nicolson_march
from .fd import cfl_time_step, solve_reaction_diffusion
from .fk import BatchedFK, fk_initial_condition, solve_fk
from .fk_split import solve_fk_split

__all__ = ["BatchedFK", "cfl_time_step", "crank_nicolson_march", "fk_initial_condition", "solve_fk", "solve_fk_split",
           "solve_reaction_diffusion"]
