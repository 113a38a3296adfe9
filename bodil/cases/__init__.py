"""The benchmark problems of Amoudruz et al. (2025) (sec. 3.1-3.3), built with their synthetic data.

Each builder returns a ``Problem``: the posterior, a starting point and the truth used to make the data.
They serve the demo, the tests, the notebooks and the benchmarks alike.
"""

from .diffusion import diffusion_1d
from .linear_gaussian import linear_gaussian
from .oscillator import oscillator
from .problem import Problem
from .reaction_diffusion import random_diffusivity, reaction_diffusion_2d, reaction_diffusion_3d
from . import steady_sources  # a module: its builder steady_sources.steady_sources, forward models, summaries

__all__ = ["Problem", "diffusion_1d", "linear_gaussian", "oscillator", "random_diffusivity", "reaction_diffusion_2d",
           "reaction_diffusion_3d", "steady_sources"]
