"""The mixture estimators under their first module name; they live in
:mod:`jaxem.estimators.mixture` (and their shared base in :mod:`jaxem.estimators.base`)."""

from jaxem.core.inputs import ConvergenceWarning
from jaxem.estimators.base import NotFittedError
from jaxem.estimators.mixture import (
    ILL_DEFINED_MESSAGE,
    INIT_PARAMS,
    GaussianMixture,
    MixtureModel,
    SemiSupervisedMixture,
)

__all__ = [
    "ILL_DEFINED_MESSAGE",
    "INIT_PARAMS",
    "ConvergenceWarning",
    "GaussianMixture",
    "MixtureModel",
    "NotFittedError",
    "SemiSupervisedMixture",
]
