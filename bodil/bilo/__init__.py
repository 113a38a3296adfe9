"""BiLO: bilevel local-operator learning for PDE inverse problems (Zhang et al., "BiLO: Bilevel Local Operator
Learning for PDE inverse problems"), with the PINN baseline on the same code path.

The core of bodil does not import this package. ``network``: the local-operator MLP with a fixed parameter
embedding; ``losses``: the pointwise problem and the residual, residual-gradient, data and PINN losses;
``train``: pre-training, simultaneous gradient descent, checkpoints; ``lower``: the lower level solved by L-BFGS
at the inferred parameters; ``functions``: unknown functions through the auxiliary variable (sec. 2.2);
``cases``, ``cases_poisson``, ``cases_heat``, ``cases_darcy``, ``cases_gbm``: the paper's Fisher-KPP,
variable-diffusion Poisson, heat initial-condition, 2-D Darcy and 2-D glioblastoma cases, their reference solvers
and ODIL posteriors on the same data; ``bayes``: Bayesian BiLO, HMC and MALA over the parameters with the lower
level re-solved per proposal.
"""

from . import bayes, cases, cases_darcy, cases_gbm, cases_heat, cases_poisson, functions, losses, lower, network, train
from .bayes import BayesBiLOSettings, bayesian_bilo
from .functions import FunctionModel, FunctionProblem, function_trainer
from .losses import PointwiseProblem
from .lower import solve_lower
from .network import InputFeatures, LocalOperatorNet, local_operator_net
from .train import BiLOResult, BiLOSettings, BiLOState, DivergenceError, fit, trainer

__all__ = ["BayesBiLOSettings", "BiLOResult", "BiLOSettings", "BiLOState", "DivergenceError", "FunctionModel",
           "FunctionProblem", "InputFeatures", "LocalOperatorNet", "PointwiseProblem", "bayes", "bayesian_bilo",
           "cases", "cases_darcy", "cases_gbm", "cases_heat", "cases_poisson", "fit", "function_trainer", "functions",
           "local_operator_net", "losses", "lower", "network", "solve_lower", "train", "trainer"]
