"""Component families, one file each."""

from jaxem.models.bernoulli import Bernoulli, BernoulliParams, BernoulliStats
from jaxem.models.categorical import Categorical, CategoricalParams, CategoricalStats
from jaxem.models.exponential import Exponential, ExponentialParams, ExponentialStats
from jaxem.models.gamma import Gamma, GammaParams, GammaStats
from jaxem.models.gaussian import Gaussian, GaussianParams, GaussianStats
from jaxem.models.gaussian_prior import GaussianPrior, default_prior
from jaxem.models.glm import (
    GatedMixture,
    GatedParams,
    GateParams,
    GLMParams,
    LogisticRegression,
    PoissonRegression,
)
from jaxem.models.multinomial import Multinomial, MultinomialParams, MultinomialStats
from jaxem.models.poisson import Poisson, PoissonParams, PoissonStats
from jaxem.models.regression import LinearRegression, RegressionParams, RegressionStats
from jaxem.models.student_t import StudentT, StudentTParams, StudentTStats
from jaxem.models.von_mises_fisher import (
    VonMisesFisher,
    VonMisesFisherParams,
    VonMisesFisherStats,
)

__all__ = [
    "GLMParams",
    "Gamma",
    "GammaParams",
    "GammaStats",
    "GateParams",
    "GatedMixture",
    "GatedParams",
    "LogisticRegression",
    "PoissonRegression",
    "VonMisesFisher",
    "VonMisesFisherParams",
    "VonMisesFisherStats",
    "Bernoulli",
    "BernoulliParams",
    "BernoulliStats",
    "Categorical",
    "CategoricalParams",
    "CategoricalStats",
    "Exponential",
    "ExponentialParams",
    "ExponentialStats",
    "Gaussian",
    "GaussianParams",
    "GaussianPrior",
    "GaussianStats",
    "LinearRegression",
    "Multinomial",
    "MultinomialParams",
    "MultinomialStats",
    "Poisson",
    "PoissonParams",
    "PoissonStats",
    "RegressionParams",
    "RegressionStats",
    "StudentT",
    "StudentTParams",
    "StudentTStats",
    "default_prior",
]
