"""Uncertainty around the MAP: Laplace, HMC, the mode approximation, BASIS/TMCMC."""

from .executors import BatchExecutor, DaskExecutor, PoolExecutor, SerialExecutor, VmapExecutor
from .hmc import hmc
from .laplace import Laplace, laplace
from .mode import Evaluation, ModeApproximation
from .smc import CheckpointError, basis, smc, tmcmc

__all__ = ["BatchExecutor", "CheckpointError", "DaskExecutor", "Evaluation", "Laplace", "ModeApproximation",
           "PoolExecutor", "SerialExecutor", "VmapExecutor", "basis", "hmc", "laplace", "smc", "tmcmc"]
