"""Component families, one file each."""

from jaxem.models.bernoulli import Bernoulli, BernoulliParams, BernoulliStats
from jaxem.models.categorical import Categorical, CategoricalParams, CategoricalStats
from jaxem.models.exponential import Exponential, ExponentialParams, ExponentialStats
from jaxem.models.gaussian import Gaussian, GaussianParams, GaussianStats
from jaxem.models.multinomial import Multinomial, MultinomialParams, MultinomialStats
from jaxem.models.poisson import Poisson, PoissonParams, PoissonStats
from jaxem.models.regression import LinearRegression, RegressionParams, RegressionStats

__all__ = [
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
]
