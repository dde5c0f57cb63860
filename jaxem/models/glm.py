"""Mixtures of experts: mixtures of generalized linear regressions, with constant or gated weights.

The data are a pair ``(covariates [N, P], target [N])`` sharing the row axis. Each component is a
regression of the target on the covariates with linear predictor ``eta_k = covariates . beta_k +
b_k``:

* :class:`LogisticRegression`: a binary target (or a proportion in [0, 1]),
  ``log p = y eta - softplus(eta)``;
* :class:`PoissonRegression`: a count target with a log link,
  ``log p = y eta - exp(eta) - log y!``;
* :class:`jaxem.LinearRegression` (``jaxem/models/regression.py``): a Gaussian target, closed form.

Logistic and Poisson regressions have no closed-form M-step: fit them with ``jaxem.Gradient()``,
which maximises each component's responsibility-weighted log-likelihood (a concave problem) and
keeps the result only if Q went up.

``jaxem.Mixture(experts)`` mixes the experts with constant weights. :class:`GatedMixture` mixes them
with a softmax gate on the same covariates, ``p(k | covariates) = softmax(covariates . W + c)_k``
(Jacobs et al., 1991): the responsibilities are computed as usual and the gate, which has no closed
form, is updated by the gradient M-step on Q together with the experts (a closed-form expert such as
:class:`jaxem.LinearRegression` takes its exact update first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from jaxem.core.mixture import Mixture, MixtureStats
from jaxem.core.model import Components, ConjugateComponents, count_free_parameters
from jaxem.models.closed_form import check_init_method, check_num_components
from jaxem.models.regression import LinearRegression, check_regression_data

Array = jax.Array


class GLMParams(NamedTuple):
    """Coefficients ``[K, P]`` and intercepts ``[K]`` of the linear predictors."""

    coefficients: Array
    intercepts: Array


def _check_precision(name: str, value: Any) -> None:
    if not (np.isscalar(value) and np.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a non-negative number (0: no prior), got {value!r}.")


def _ridge_log_prior(coefficients: Array, precision: float) -> Array:
    """Zero-mean Gaussian log prior with ``precision`` on every coefficient (up to a constant)."""
    if precision == 0:
        return jnp.zeros((), coefficients.dtype)
    return -0.5 * precision * jnp.sum(coefficients**2)


@dataclass(frozen=True)
class _GeneralizedLinear(Components):
    """K regressions with linear predictors; subclasses give the density of the target."""

    num_components: int
    fit_intercept: bool = True
    coefficient_precision: float = 0.0
    # Random responsibilities: every expert starts near the one-component fit and the noise breaks
    # the tie. Partitions of the rows [covariates, target] (k-means++) cut across the regression
    # lines and lead far more restarts into poor local optima.
    init_method: str = "random_resp"

    def __post_init__(self) -> None:
        check_num_components(self.num_components)
        _check_precision("coefficient_precision", self.coefficient_precision)
        check_init_method(self.init_method)

    def linear_predictor(self, params: GLMParams, covariates: Array) -> Array:
        """``eta``, shape ``[C, K]``."""
        eta = covariates @ params.coefficients.T
        return eta + params.intercepts if self.fit_intercept else eta

    def log_density(self, eta: Array, target: Array) -> Array:
        """Log density of the target given the linear predictor (broadcasting)."""
        raise NotImplementedError

    def working_target(self, target: Array) -> Array:
        """The target on the scale of the linear predictor, for the first least-squares fit."""
        raise NotImplementedError

    def log_prob_chunk(self, params: GLMParams, x: tuple[Array, Array]) -> Array:
        covariates, target = x
        return self.log_density(self.linear_predictor(params, covariates), target[:, None])

    def log_prob(self, params: GLMParams, x_one: tuple[Array, Array]) -> Array:
        return self.log_prob_chunk(params, jax.tree.map(lambda a: a[None], x_one))[0]

    def log_prior(self, params: GLMParams) -> Array:
        return _ridge_log_prior(params.coefficients, self.coefficient_precision)

    def init(self, key: Array, x: tuple[Array, Array], row_weights: Array | None) -> GLMParams:
        """Weighted least squares of the working target under the responsibilities
        ``init_method`` draws: a cheap start near the right slopes."""
        covariates, target = x
        linear = LinearRegression(self.num_components, self.fit_intercept, 1e-6, self.init_method)
        start = linear.init(key, (covariates, self.working_target(target)), row_weights)
        return GLMParams(start.coefficients, start.intercepts)

    def num_free_parameters(self, num_features: int) -> int:
        """Per component: P coefficients and the intercept if fitted."""
        return self.num_components * (num_features + int(self.fit_intercept))


@dataclass(frozen=True)
class LogisticRegression(_GeneralizedLinear):
    """K logistic regressions of a binary target (0/1, or a proportion in [0, 1]).

    Args:
        num_components: K.
        fit_intercept: whether each component has an intercept.
        coefficient_precision: precision of a zero-mean Gaussian prior on the coefficients (not
            the intercepts); 0 (default) is maximum likelihood. A small value keeps the slopes of
            a component whose points are linearly separable finite.
        init_method: ``"random_resp"`` (default: a weighted least-squares fit of the working
            target under random responsibilities), ``"kmeans++"`` or ``"random_rows"``.

    Example:
        >>> import jax, jax.numpy as jnp, jaxem
        >>> covariates = jax.random.normal(jax.random.key(0), (300, 1))
        >>> target = (covariates[:, 0] > 0).astype(float)
        >>> model = jaxem.Mixture(jaxem.LogisticRegression(2, coefficient_precision=0.1))
        >>> algo = jaxem.em(model, jaxem.Gradient())
        >>> result = jaxem.fit(algo, jax.random.key(1), (covariates, target), max_iter=20)
        >>> result.params.components.coefficients.shape
        (2, 1)
    """

    def log_density(self, eta: Array, target: Array) -> Array:
        return target * eta - jax.nn.softplus(eta)

    def working_target(self, target: Array) -> Array:
        # A linear probability fit, scaled by 4 (the logistic slope at 1/2) onto the logit scale.
        return 4 * (target - 0.5)

    def predict(self, params: GLMParams, covariates: Array) -> Array:
        """Each component's probability that the target is 1, shape ``[C, K]``."""
        return jax.nn.sigmoid(self.linear_predictor(params, covariates))

    def sample(self, key: Array, params: GLMParams, labels: Array, covariates: Array) -> Array:
        """A 0/1 target per row of ``covariates`` from the component in ``labels``."""
        p = jnp.take_along_axis(self.predict(params, covariates), labels[:, None], axis=1)[:, 0]
        return jax.random.bernoulli(key, p).astype(p.dtype)

    def check_data(self, x: Any) -> None:
        """Raise ``ValueError`` unless ``x`` is ``(covariates [N, P], target [N])`` with the
        target in [0, 1]."""
        _, target = check_regression_data(x, "LogisticRegression")
        if np.any(target < 0) or np.any(target > 1):
            raise ValueError(
                "LogisticRegression components need a target in [0, 1] (0/1 labels or "
                "proportions): recode the classes as 0 and 1."
            )


@dataclass(frozen=True)
class PoissonRegression(_GeneralizedLinear):
    """K Poisson regressions of a count target with a log link.

    Args:
        num_components: K.
        fit_intercept: whether each component has an intercept.
        coefficient_precision: precision of a zero-mean Gaussian prior on the coefficients (not
            the intercepts); 0 (default) is maximum likelihood.
        init_method: ``"random_resp"`` (default), ``"kmeans++"`` or ``"random_rows"``.

    Example:
        >>> import jax, jax.numpy as jnp, jaxem
        >>> covariates = jax.random.normal(jax.random.key(0), (300, 1))
        >>> target = jax.random.poisson(jax.random.key(1), jnp.exp(1 + covariates[:, 0]))
        >>> model = jaxem.Mixture(jaxem.PoissonRegression(2))
        >>> algo = jaxem.em(model, jaxem.Gradient())
        >>> result = jaxem.fit(algo, jax.random.key(2), (covariates, target), max_iter=20)
        >>> result.params.components.intercepts.shape
        (2,)
    """

    def log_density(self, eta: Array, target: Array) -> Array:
        return target * eta - jnp.exp(eta) - gammaln(target + 1)

    def working_target(self, target: Array) -> Array:
        return jnp.log(target + 0.5)

    def predict(self, params: GLMParams, covariates: Array) -> Array:
        """Each component's expected count, shape ``[C, K]``."""
        return jnp.exp(self.linear_predictor(params, covariates))

    def sample(self, key: Array, params: GLMParams, labels: Array, covariates: Array) -> Array:
        """A count per row of ``covariates`` from the component in ``labels``."""
        rate = jnp.take_along_axis(self.predict(params, covariates), labels[:, None], axis=1)[:, 0]
        return jax.random.poisson(key, rate).astype(rate.dtype)

    def check_data(self, x: Any) -> None:
        """Raise ``ValueError`` unless ``x`` is ``(covariates [N, P], target [N])`` with a
        non-negative target."""
        _, target = check_regression_data(x, "PoissonRegression")
        if np.any(target < 0):
            raise ValueError(
                "PoissonRegression components model counts: the target must be non-negative."
            )


# ---- gated mixtures ------------------------------------------------------------------------------


class GateParams(NamedTuple):
    """Softmax gate: coefficients ``[K, P]`` and intercepts ``[K]`` of the gate's logits."""

    coefficients: Array
    intercepts: Array


class GatedParams(NamedTuple):
    """Parameters of a :class:`GatedMixture`: the gate and the experts' (``components``)."""

    gate: GateParams
    components: Any


@dataclass(frozen=True)
class GatedMixture:
    """A mixture of experts whose weights depend on the covariates through a softmax gate.

    A :class:`jaxem.Model` for :func:`jaxem.em`, :func:`jaxem.fit` and :func:`jaxem.fit_restarts`;
    use ``jaxem.Gradient()`` (the gate has no closed form; with ``jaxem.ClosedForm()`` it stays
    at its start, uniform weights).

    Args:
        components: the experts, a regression family over ``x = (covariates, target)``
            (:class:`LogisticRegression`, :class:`PoissonRegression`,
            :class:`jaxem.LinearRegression` or a user's own).
        gate_precision: precision of a zero-mean Gaussian prior on the gate's coefficients; 0
            (default) is maximum likelihood.

    Example:
        >>> import jax, jax.numpy as jnp, jaxem
        >>> covariates = jax.random.normal(jax.random.key(0), (300, 1))
        >>> target = jnp.where(covariates[:, 0] > 0, 3.0, -3.0) + covariates[:, 0]
        >>> model = jaxem.GatedMixture(jaxem.LinearRegression(2))
        >>> result = jaxem.fit(jaxem.em(model, jaxem.Gradient()), jax.random.key(1),
        ...                    (covariates, target), max_iter=30)
        >>> model.gate_probabilities(result.params, covariates).shape
        (300, 2)
    """

    components: Components
    gate_precision: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.components, Components):
            raise ValueError(
                "components must be a jaxem.Components regression family over (covariates, "
                f"target), e.g. jaxem.LogisticRegression(2); got {type(self.components).__name__}."
            )
        _check_precision("gate_precision", self.gate_precision)

    @property
    def num_components(self) -> int:
        return self.components.num_components

    def init(self, key: Array, x: tuple[Array, Array], row_weights: Array | None) -> GatedParams:
        experts = self.components.init(key, x, row_weights)
        covariates = x[0]
        k, p = self.num_components, covariates.shape[1]
        gate = GateParams(jnp.zeros((k, p), covariates.dtype), jnp.zeros((k,), covariates.dtype))
        return GatedParams(gate, experts)

    def gate_log_probabilities(self, params: GatedParams, covariates: Array) -> Array:
        """``log p(k | covariates)``, shape ``[C, K]``."""
        gate = params.gate
        return jax.nn.log_softmax(covariates @ gate.coefficients.T + gate.intercepts, axis=-1)

    def gate_probabilities(self, params: GatedParams, covariates: Array) -> Array:
        """``p(k | covariates)``, shape ``[C, K]``."""
        return jnp.exp(self.gate_log_probabilities(params, covariates))

    def log_joint(self, params: GatedParams, x: tuple[Array, Array]) -> Array:
        """``log p(k | covariates) + log p_k(target | covariates)`` for a chunk, ``[C, K]``."""
        log_prob = self.components.log_prob_chunk(params.components, x)
        return self.gate_log_probabilities(params, x[0]) + log_prob

    # Responsibilities, statistics, Q and the entropy follow from log_joint exactly as for a
    # Mixture (which reads only log_joint, params.components and self.components).
    log_resp = Mixture.log_resp
    e_step = Mixture.e_step
    expected_log_joint = Mixture.expected_log_joint
    entropy = Mixture.entropy

    def m_step(self, params: GatedParams, stats: MixtureStats) -> GatedParams:
        """The experts' closed form where they have one; the gate is left to the gradient path."""
        if stats.components is None:
            return params
        return GatedParams(params.gate, self.components.m_step(params.components, stats.components))

    def log_prior(self, params: GatedParams) -> Array:
        gate = _ridge_log_prior(params.gate.coefficients, self.gate_precision)
        return self.components.log_prior(params.components) + gate

    def constraints(self) -> GatedParams:
        return GatedParams(None, self.components.constraints())

    def closed_form_blocks(self) -> GatedParams:
        conjugate = isinstance(self.components, ConjugateComponents)
        return GatedParams(False, self.components.closed_form_blocks() if conjugate else False)

    def num_free_parameters(self, num_features: int) -> int:
        """The gate's ``(K - 1) (P + 1)`` (softmax logits are defined up to a common shift) plus
        the experts' parameters, for ``P = num_features`` covariates."""
        gate = (self.num_components - 1) * (num_features + 1)
        return gate + count_free_parameters(self.components, num_features)

    def check_data(self, x: Any) -> None:
        """The experts' data check (a pair ``(covariates, target)``)."""
        check = getattr(self.components, "check_data", None)
        if check is None:
            check_regression_data(x, type(self.components).__name__)
        else:
            check(x)


__all__ = [
    "GLMParams",
    "GateParams",
    "GatedMixture",
    "GatedParams",
    "LogisticRegression",
    "PoissonRegression",
    "check_regression_data",
]
