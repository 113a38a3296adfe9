"""BiLO: bilevel local-operator learning for PDE inverse problems (Zhang et al., "BiLO: Bilevel Local Operator
Learning for PDE inverse problems"), with the PINN baseline on the same code path.

The core of bodil does not import this package. ``network``: the local-operator MLP with a fixed parameter
embedding; ``losses``: the pointwise problem and the residual, residual-gradient, data and PINN losses;
``train``: pre-training, simultaneous gradient descent, checkpoints; ``cases``: the paper's Fisher-KPP case,
its reference solver and the ODIL posterior on the same data.
"""

from . import cases, losses, network, train
from .losses import PointwiseProblem
from .network import LocalOperatorNet, local_operator_net
from .train import BiLOResult, BiLOSettings, BiLOState, DivergenceError, fit, trainer

__all__ = ["BiLOResult", "BiLOSettings", "BiLOState", "DivergenceError", "LocalOperatorNet", "PointwiseProblem",
           "cases", "fit", "local_operator_net", "losses", "network", "train", "trainer"]
