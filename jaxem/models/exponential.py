"""Exponential components: D independent exponential (waiting-time) features per component.

``p(x | k) = prod_d rate_kd exp(-rate_kd x_d)`` for ``x_d >= 0``; the log density of a chunk is one
matrix product. A Gamma(shape, rate) prior on every rate gives the MAP M-step
``rate_kd = (sum_n r_nk + shape - 1) / (sum_n r_nk x_nd + rate)``. The default Gamma(1.01, 0.01)
keeps a rate finite when a component holds only zeros and positive when it holds no point; its
second number is a pseudo-sum in the units of ``x``, so data on a very small scale (say 1e-4) want a
smaller one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxem.core.constraints import Positive, floored_log
from jaxem.models.closed_form import (
    ChunkConjugateComponents,
    as_matrix,
    check_gamma_prior,
    check_init_method,
    check_num_components,
    divide_or_keep,
    gamma_log_prior,
    init_from_responsibilities,
)

Array = jax.Array


class ExponentialParams(NamedTuple):
    """Rates ``[K, D]`` (the inverse of the means)."""

    rates: Array


class ExponentialStats(NamedTuple):
    """Sums over data of ``r`` (``[K]``) and ``r x`` (``[K, D]``)."""

    counts: Array
    sums: Array


@dataclass(frozen=True)
class Exponential(ChunkConjugateComponents):
    """K products of independent exponential distributions (non-negative features).

    Args:
        num_components: K.
        gamma_prior: ``(shape, rate)`` of the Gamma prior on every rate, shape >= 1, rate >= 0;
            ``(1.0, 0.0)`` is maximum likelihood.
        init_method: ``"kmeans++"`` (default), ``"random_rows"`` or ``"random_resp"``.

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.exponential(jax.random.key(0), (200, 2))
        >>> model = jaxem.Mixture(jaxem.Exponential(2))
        >>> jaxem.fit(jaxem.em(model), jax.random.key(1), x).params.components.rates.shape
        (2, 2)
    """

    num_components: int
    gamma_prior: tuple[float, float] = (1.01, 0.01)
    init_method: str = "kmeans++"

    def __post_init__(self) -> None:
        check_num_components(self.num_components)
        check_gamma_prior(self.gamma_prior)
        check_init_method(self.init_method)

    def log_prob_chunk(self, params: ExponentialParams, x: Array) -> Array:
        rates = params.rates
        return jnp.sum(floored_log(rates), axis=-1) - x @ rates.T

    def chunk_stats(self, params: ExponentialParams, x: Array, resp: Array) -> ExponentialStats:
        return ExponentialStats(jnp.sum(resp, axis=0), resp.T @ x)

    def m_step(self, params: ExponentialParams, stats: ExponentialStats) -> ExponentialParams:
        shape, rate = self.gamma_prior
        numerator = jnp.broadcast_to((stats.counts + (shape - 1.0))[:, None], stats.sums.shape)
        denominator = stats.sums + rate
        return ExponentialParams(divide_or_keep(numerator, denominator, params.rates))

    def log_prior(self, params: ExponentialParams) -> Array:
        """Gamma(shape, rate) log density summed over every rate, up to its normalising constant."""
        return gamma_log_prior(params.rates, self.gamma_prior)

    def init(self, key: Array, x: Array, row_weights: Array | None) -> ExponentialParams:
        reference = ExponentialParams(jnp.ones((self.num_components, x.shape[1]), x.dtype))
        return init_from_responsibilities(self, key, x, row_weights, reference)

    def sample(self, key: Array, params: ExponentialParams, labels: Array) -> Array:
        """One draw per entry of ``labels`` (component indices), shape ``[n, D]``."""
        rates = params.rates[labels]
        return jax.random.exponential(key, rates.shape, rates.dtype) / rates

    def num_free_parameters(self, num_features: int) -> int:
        """K x D rates (mixture weights not included)."""
        return self.num_components * num_features

    def check_data(self, x: Any) -> None:
        """Raise ``ValueError`` unless ``x`` is a 2-D array of non-negative numbers."""
        if np.any(as_matrix(x, "Exponential") < 0):
            raise ValueError(
                "Exponential components need non-negative x (waiting times, sizes): shift or "
                "transform the data first."
            )

    def constraints(self) -> ExponentialParams:
        return ExponentialParams(Positive())
