"""Bounds for tests that compare Monte Carlo estimates with exact values.

A test function that makes ``K`` comparisons ``|estimate - exact| < z * se`` and should raise a false alarm
(fail although the sampler is right) with probability at most ``rate`` overall uses, by Bonferroni,

    z = Phi^{-1}(1 - rate / (2 K))            (two-sided, each comparison at rate / K)

``se`` is the standard error of the estimator that is compared:

* a mean ``E[x]`` from correlated draws: ``sd(x) / sqrt(ESS(x))``;
* a variance ``E[(x - mu)^2]`` with the exact ``mu`` is the mean of ``f = (x - mu)^2``, so its standard error is
  ``sd(f) / sqrt(ESS(f))``, with the ESS of ``f``, not of ``x`` (for a Gaussian ``sd(f) = sqrt(2) var``;
  the ESS of ``f`` is typically smaller than that of ``x``, since NUTS draws can be antithetic in ``x``
  but not in ``(x - mu)^2``);
* for ``n`` independent draws the ESS is ``n``.

The rates below are for the whole test function; each test writes its ``K``.
"""

from __future__ import annotations

import arviz as az
import numpy as np
from scipy import stats

FAMILY_RATE = 1e-4  # false-alarm probability of one whole test function


def z_bound(k: int, rate: float = FAMILY_RATE) -> float:
    """Two-sided Bonferroni bound for ``k`` comparisons at family-wise false-alarm ``rate``."""
    return float(stats.norm.isf(rate / (2 * k)))


def standard_error(f, independent: bool = False) -> float:
    """Standard error of ``mean(f)``: ``f`` of shape ``(chain, draw)`` or ``(draw,)`` (ESS by arviz), or
    ``independent`` draws of any shape."""
    f = np.asarray(f, float)
    ess = f.size if independent else float(az.ess(np.atleast_2d(f), method="mean"))
    return float(f.std() / np.sqrt(ess))


def z_mean(draws, mean: float, independent: bool = False) -> float:
    """``(mean(x) - E[x]) / se`` for draws of ``x``."""
    x = np.asarray(draws, float)
    return float((x.mean() - mean) / standard_error(x, independent))


def z_variance(draws, mean: float, var: float, independent: bool = False) -> float:
    """``(mean((x - mu)^2) - Var[x]) / se`` with the exact mean ``mu``; ``se`` from the draws of ``(x - mu)^2``."""
    f = (np.asarray(draws, float) - mean) ** 2
    return float((f.mean() - var) / standard_error(f, independent))
