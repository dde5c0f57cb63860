"""jaxem: Expectation-Maximization on accelerators, built on JAX."""

from jaxem import datasets, io, parallel, streaming
from jaxem.core import (
    EM,
    ClosedForm,
    Components,
    ConjugateComponents,
    ConvergenceWarning,
    EMInfo,
    EMKernel,
    EMState,
    Gradient,
    Mixture,
    MixtureParams,
    MixtureStats,
    Model,
    Optimizer,
    PrecisionWarning,
    Squarem,
    Status,
    constraints,
    em,
    squarem,
)
from jaxem.drivers.bound import BoundTrace, trace_bound
from jaxem.drivers.fit import FitResult, fit, fit_restarts
from jaxem.drivers.prune import fit_restarts_pruned
from jaxem.hmm import HiddenMarkovModel, HMMParams, Sequences, pad_sequences
from jaxem.labels import Labelled
from jaxem.missing import MissingValues
from jaxem.models import (
    Bernoulli,
    Categorical,
    Exponential,
    Gaussian,
    GaussianParams,
    LinearRegression,
    Multinomial,
    Poisson,
)
from jaxem.models.gamma import Gamma, GammaParams
from jaxem.models.gaussian_prior import GaussianPrior, default_prior
from jaxem.models.glm import GatedMixture, LogisticRegression, PoissonRegression
from jaxem.models.student_t import StudentT, StudentTParams
from jaxem.models.von_mises_fisher import VonMisesFisher, VonMisesFisherParams
from jaxem.select import Selection, aic, bic, icl, select

__version__ = "0.1.0"

__all__ = [
    "Gamma",
    "GammaParams",
    "GatedMixture",
    "LogisticRegression",
    "PoissonRegression",
    "VonMisesFisher",
    "VonMisesFisherParams",
    "Bernoulli",
    "BoundTrace",
    "Categorical",
    "CategoricalHMM",
    "EM",
    "ClosedForm",
    "Components",
    "ConjugateComponents",
    "ConvergenceWarning",
    "EMInfo",
    "EMKernel",
    "EMState",
    "Exponential",
    "FitResult",
    "Gradient",
    "Gaussian",
    "GaussianHMM",
    "GaussianMixture",
    "GaussianParams",
    "GaussianPrior",
    "HMM",
    "HMMParams",
    "HiddenMarkovModel",
    "Labelled",
    "LinearRegression",
    "MissingValues",
    "Mixture",
    "MixtureModel",
    "MixtureParams",
    "MixtureStats",
    "Model",
    "Multinomial",
    "Optimizer",
    "Poisson",
    "PoissonHMM",
    "PrecisionWarning",
    "SemiSupervisedMixture",
    "Selection",
    "Sequences",
    "Squarem",
    "Status",
    "StudentT",
    "StudentTParams",
    "__version__",
    "aic",
    "bic",
    "constraints",
    "datasets",
    "default_prior",
    "em",
    "fit",
    "fit_restarts",
    "fit_restarts_pruned",
    "icl",
    "pad_sequences",
    "io",
    "parallel",
    "select",
    "squarem",
    "streaming",
    "trace_bound",
]


def __getattr__(name: str):
    # The estimators import scikit-learn when it is installed: load them on first use only.
    if name in ("GaussianMixture", "MixtureModel", "SemiSupervisedMixture"):
        from jaxem.estimators import mixture

        return getattr(mixture, name)
    if name in ("GaussianHMM", "CategoricalHMM", "PoissonHMM", "HMM"):
        from jaxem.estimators import hmm

        return getattr(hmm, name)
    raise AttributeError(f"module 'jaxem' has no attribute {name!r}")
