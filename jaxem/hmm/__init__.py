"""Hidden Markov models on the EM engine: the model, inference in one chain, and estimators."""

from jaxem.hmm.estimators import (
    HMM,
    CategoricalHMM,
    ConvergenceMonitor,
    GaussianHMM,
    GaussianParts,
    PoissonHMM,
)
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

__all__ = [
    "HMM",
    "CategoricalHMM",
    "ConvergenceMonitor",
    "GaussianHMM",
    "GaussianParts",
    "PoissonHMM",
    "HMMParams",
    "HMMStats",
    "HiddenMarkovModel",
    "Sequences",
    "Smoothed",
    "forward_backward",
    "pad_sequences",
    "sample_states",
    "sequences_from_mask",
    "unpad",
    "viterbi",
]
