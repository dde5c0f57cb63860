"""The HMM estimators under their first module name; they live in :mod:`jaxem.estimators.hmm`."""

from jaxem.estimators.base import NotFittedError
from jaxem.estimators.hmm import (
    DECODERS,
    HMM,
    CategoricalHMM,
    ConvergenceMonitor,
    GaussianHMM,
    HMMEstimator,
    PoissonHMM,
)

__all__ = [
    "DECODERS",
    "HMM",
    "CategoricalHMM",
    "ConvergenceMonitor",
    "GaussianHMM",
    "HMMEstimator",
    "NotFittedError",
    "PoissonHMM",
]
