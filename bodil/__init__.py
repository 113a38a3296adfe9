"""bodil: Bayesian inference for PDE inverse problems by Optimizing a DIscrete Loss (B-ODIL).

    log p(u, theta | D) = log p(D | u, theta) - beta L_PDE(u, theta) + log p(theta) + const

Importing bodil changes no global state: enable float64 yourself (``jax.config.update("jax_enable_x64",
True)``) where Hessians or tight tolerances need it; bodil takes its dtypes from the inputs.
"""

from . import likelihood, progress, residuals, stencil, terms
from .grid import Grid, LinearInterpolator
from . import inference
from .inference import Laplace, ModeApproximation, basis, hmc, laplace, smc, tmcmc
from .inference.hmc import HMCSettings
from .inference.smc import SMCSettings
from .likelihood import Bernoulli, Gaussian, IntervalHinge, ThreeClassSigmoid
from .optimize import MAPNotConverged, MAPResult, Report, map_estimate
from .posterior import Posterior
from .prior import LogNormal, Normal, Params, PDEPrior, Uniform

__version__ = "0.1.0"

__all__ = [
    "HMCSettings",
    "SMCSettings",
    "Laplace",
    "ModeApproximation",
    "basis",
    "hmc",
    "inference",
    "laplace",
    "smc",
    "tmcmc",
    "Bernoulli",
    "Gaussian",
    "Grid",
    "IntervalHinge",
    "LinearInterpolator",
    "LogNormal",
    "MAPNotConverged",
    "MAPResult",
    "Normal",
    "PDEPrior",
    "Params",
    "Posterior",
    "Report",
    "ThreeClassSigmoid",
    "Uniform",
    "likelihood",
    "map_estimate",
    "progress",
    "residuals",
    "stencil",
    "terms",
]
