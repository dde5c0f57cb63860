"""The EM engine: contracts, passes over the rows, the kernel, M-step strategies, acceleration."""

from jaxem.core import constraints
from jaxem.core.accelerate import Squarem, SquaremKernel, squarem
from jaxem.core.algorithm import EM, em
from jaxem.core.inputs import ConvergenceWarning, PrecisionWarning
from jaxem.core.kernel import EMInfo, EMKernel, EMState, Status
from jaxem.core.mixture import Mixture, MixtureParams, MixtureStats
from jaxem.core.model import Components, ConjugateComponents, Model, WrappedComponents
from jaxem.core.mstep import ClosedForm, Gradient, Optimizer
from jaxem.core.online import OnlineEM, OnlineState
from jaxem.core.rows import Rows, StreamedRows

__all__ = [
    "EM",
    "ClosedForm",
    "Components",
    "ConjugateComponents",
    "ConvergenceWarning",
    "EMInfo",
    "EMKernel",
    "EMState",
    "Gradient",
    "Mixture",
    "MixtureParams",
    "MixtureStats",
    "Model",
    "OnlineEM",
    "OnlineState",
    "Optimizer",
    "PrecisionWarning",
    "Rows",
    "Squarem",
    "SquaremKernel",
    "Status",
    "StreamedRows",
    "WrappedComponents",
    "constraints",
    "em",
    "squarem",
]
