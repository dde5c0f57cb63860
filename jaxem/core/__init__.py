"""The EM engine: contracts, chunked E-step, M-step strategies and the fit loop."""

from jaxem.core.accelerate import Squarem
from jaxem.core.engine import EM, FitResult, PrecisionWarning, Status, em, fit, fit_restarts
from jaxem.core.mixture import Mixture, MixtureParams, MixtureStats
from jaxem.core.model import Components, ConjugateComponents, Model
from jaxem.core.mstep import ClosedForm

__all__ = [
    "EM",
    "ClosedForm",
    "Components",
    "ConjugateComponents",
    "FitResult",
    "Mixture",
    "MixtureParams",
    "MixtureStats",
    "Model",
    "PrecisionWarning",
    "Squarem",
    "Status",
    "em",
    "fit",
    "fit_restarts",
]
