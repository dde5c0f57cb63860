"""Estimators with scikit-learn's and hmmlearn's interfaces, on one base.

:mod:`jaxem.estimators.base` holds what they share (settings, input and feature-name checks,
restarts, convergence warnings, progress, persistence); :mod:`jaxem.estimators.mixture` the
mixture estimators and :mod:`jaxem.estimators.hmm` the hidden Markov model estimators.
"""

from jaxem.estimators.base import EMEstimator, EstimatorConvergenceWarning, NotFittedError
from jaxem.estimators.hmm import (
    HMM,
    CategoricalHMM,
    ConvergenceMonitor,
    GaussianHMM,
    HMMEstimator,
    PoissonHMM,
)
from jaxem.estimators.mixture import (
    ILL_DEFINED_MESSAGE,
    GaussianMixture,
    MixtureModel,
    SemiSupervisedMixture,
)

__all__ = [
    "HMM",
    "ILL_DEFINED_MESSAGE",
    "CategoricalHMM",
    "ConvergenceMonitor",
    "EMEstimator",
    "EstimatorConvergenceWarning",
    "GaussianHMM",
    "GaussianMixture",
    "HMMEstimator",
    "MixtureModel",
    "NotFittedError",
    "PoissonHMM",
    "SemiSupervisedMixture",
]
