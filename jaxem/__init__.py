"""jaxem: Expectation-Maximization on accelerators, built on JAX."""

from jaxem.core import (
    EM,
    ClosedForm,
    Components,
    ConjugateComponents,
    FitResult,
    Mixture,
    MixtureParams,
    MixtureStats,
    Model,
    PrecisionWarning,
    Squarem,
    Status,
    em,
    fit,
    fit_restarts,
)
from jaxem.models import Gaussian, GaussianParams

__version__ = "0.1.0"

__all__ = [
    "EM",
    "ClosedForm",
    "Components",
    "ConjugateComponents",
    "FitResult",
    "Gaussian",
    "GaussianParams",
    "Mixture",
    "MixtureParams",
    "MixtureStats",
    "Model",
    "PrecisionWarning",
    "Squarem",
    "Status",
    "__version__",
    "em",
    "fit",
    "fit_restarts",
]
