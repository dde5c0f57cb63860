"""Hidden Markov models on the EM engine: the model, inference in one chain, and estimators."""

from jaxem.hmm.emissions import MixtureEmissionParams, MixtureEmissions
from jaxem.hmm.inference import Smoothed, forward_backward, sample_states, viterbi
from jaxem.hmm.model import (
    HiddenMarkovModel,
    HMMParams,
    HMMStats,
    Sequences,
    pad_sequences,
    sequences_from_mask,
    unpad,
)

_ESTIMATORS = (
    "HMM",
    "CategoricalHMM",
    "ConvergenceMonitor",
    "GaussianHMM",
    "PoissonHMM",
)

__all__ = [
    "HMM",
    "CategoricalHMM",
    "ConvergenceMonitor",
    "GaussianHMM",
    "HMMParams",
    "HMMStats",
    "HiddenMarkovModel",
    "MixtureEmissionParams",
    "MixtureEmissions",
    "PoissonHMM",
    "Sequences",
    "Smoothed",
    "forward_backward",
    "pad_sequences",
    "sample_states",
    "sequences_from_mask",
    "unpad",
    "viterbi",
]


def __getattr__(name: str):
    # The estimators import scikit-learn when it is installed: load them on first use only.
    if name in _ESTIMATORS:
        from jaxem.estimators import hmm

        return getattr(hmm, name)
    raise AttributeError(f"module 'jaxem.hmm' has no attribute {name!r}")
