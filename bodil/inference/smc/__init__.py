"""BASIS and TMCMC: one sequential Monte Carlo sampler with two settings, and the log-evidence.

The target ``p(theta | D) ~ L(theta) p(theta)`` is reached through ``p_j(theta) ~ L(theta)^q_j p(theta)``
with ``0 = q_0 < q_1 < ... < q_J = 1`` (Ching & Chen 2007; Wu et al. 2018; Korali's ``TMCMC`` solver).
Stage 0 draws ``num_samples = n`` particles from the prior. Stage ``j -> j + 1``:

1. Next exponent: ``dq`` solves ``cv(w) = std(w) / mean(w) = gamma`` with ``w_i = exp(dq * log L_i)``
   (bisection; ``std`` with ``1/n``, so ``ESS / n = 1 / (1 + cv^2)``); ``q + dq`` is capped at 1 and at
   ``q + max_rho_update``.
2. Evidence: ``log Z += log(mean_i w_i)`` (a logsumexp), so ``log Z = sum_j log mean_i w_i^(j)``.
3. Proposal: ``N(0, beta^2 C)`` with ``C`` the weighted sample covariance of the particles with the
   normalised weights ``w``: ``C = sum_i w_i (x_i - m)(x_i - m)^T / (1 - sum_i w_i^2)``
   (Korali scales ``w_i`` by the selection counts first; we do not, which lowers the noise in ``C``).
4. Selection: counts ``k ~ Multinomial(n, w)``. Korali's chains: a seed picked ``k`` times starts chains
   of total length ``k``; while ``k > max_chain_length`` it splits off a chain of length
   ``max_chain_length - (k % max_chain_length != 0)``, the rest forms the last chain (``None``: no limit,
   one chain of length ``k``: classic TMCMC). ``max_chain_length = 1`` is BASIS.
5. Chains: Metropolis at ``L^q' p``, ``accept if log u < q' (log L' - log L) + log p' - log p``; a proposal
   outside the prior's support is rejected without evaluating ``L``. A chain of length ``l`` makes
   ``burn_in + l * lmax`` steps and records its state after each ``lmax``-th step past the burn-in, so
   every stage again holds ``n`` particles (``lmax = 1, burn_in = 0`` is Korali's rule).

The run stops after the chains at ``q = 1``; the particles are then equally weighted posterior samples.
All random numbers come from one ``numpy.random.Generator(PCG64(seed))`` whose state is checkpointed. A
stage draws all of its random numbers (selection, then the proposal steps and uniforms of every chain and
step) before any evaluation, so each chain's path depends only on its own draws and likelihood values: the
chains may advance in sweeps (``dispatch="sync"``) or each as soon as its last evaluation is back
(``"async"``, as Korali's conduits do), on any executor, with bit-identical results. With ``warm_start``
every particle carries a warm start (its last inner solution) that goes with its chain's next evaluation.
What a likelihood returns besides ``log L`` (``extras``, ``stats``) travels with its particle into the
``InferenceData`` under the names it gives them.

Modules, one job each:

* ``kernel``: ``SMCSettings``, ``SMCState``, ``init``, the stage planner (``plan_stage``: every random draw
  of a stage) and the reweight / resample / move maths; ``build_kernel`` runs them in-process (blackjax's
  ``init``/``step`` shape), without the driver.
* ``chains``: the chains of one stage (and the prior draws of stage 0) as objects that hand out evaluation
  tasks and take back their results in any order.
* ``journal``: checkpoints of the state after every stage and of every finished evaluation.
* ``driver``: ``smc``, ``basis``, ``tmcmc``: executors, dispatch, resume, progress, ``InferenceData``.
* ``space``: flat particle rows <-> theta dicts, the prior density and prior draws.
"""

from .chains import Particles
from .driver import basis, smc, tmcmc
from .journal import CheckpointError
from .kernel import (SMCAlgorithm, SMCSettings, SMCState, StagePlan, build_kernel, chain_lengths, init,
                     next_exponent, plan_stage, update)
from .space import ParameterSpace

__all__ = ["CheckpointError", "ParameterSpace", "Particles", "SMCAlgorithm", "SMCSettings", "SMCState", "StagePlan",
           "basis", "build_kernel", "chain_lengths", "init", "next_exponent", "plan_stage", "smc", "tmcmc", "update"]
