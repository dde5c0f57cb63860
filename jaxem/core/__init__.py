"""The EM engine: contracts, chunked E-step, M-step strategies and the fit loop."""

from jaxem.core import constraints
from jaxem.core.accelerate import Squarem
from jaxem.core.engine import EM, FitResult, PrecisionWarning, Status, em, fit, fit_restarts
from jaxem.core.mixture import Mixture, MixtureParams, MixtureStats
from jaxem.core.model import Components, ConjugateComponents, Model
from jaxem.core.mstep import ClosedForm, Gradient, Optimizer

__all__ = [
    "EM",
    "ClosedForm",
    "Components",
    "ConjugateComponents",
    "FitResult",
    "Gradient",
    "Mixture",
    "MixtureParams",
    "MixtureStats",
    "Model",
    "Optimizer",
    "PrecisionWarning",
    "Squarem",
    "Status",
    "constraints",
    "em",
    "fit",
    "fit_restarts",
]
