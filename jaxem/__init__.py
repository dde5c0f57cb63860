"""jaxem: Expectation-Maximization on accelerators, built on JAX."""

from jaxem import parallel, streaming
from jaxem.core import (
    EM,
    ClosedForm,
    Components,
    ConjugateComponents,
    FitResult,
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
    fit,
    fit_restarts,
)
from jaxem.core.engine import ConvergenceWarning
from jaxem.core.prune import fit_restarts_pruned
from jaxem.models import Gaussian, GaussianParams

__version__ = "0.1.0"

__all__ = [
    "EM",
    "ClosedForm",
    "Components",
    "ConjugateComponents",
    "ConvergenceWarning",
    "FitResult",
    "Gradient",
    "Gaussian",
    "GaussianMixture",
    "GaussianParams",
    "Mixture",
    "MixtureModel",
    "MixtureParams",
    "MixtureStats",
    "Model",
    "Optimizer",
    "PrecisionWarning",
    "Squarem",
    "Status",
    "__version__",
    "constraints",
    "em",
    "fit",
    "fit_restarts",
    "fit_restarts_pruned",
    "parallel",
    "streaming",
]


def __getattr__(name: str):
    # The estimators import scikit-learn when it is installed: load them on first use only.
    if name in ("GaussianMixture", "MixtureModel"):
        from jaxem import sklearn

        return getattr(sklearn, name)
    raise AttributeError(f"module 'jaxem' has no attribute {name!r}")
