"""Poisson components: D independent Poisson counts per component.

``p(x | k) = prod_d rate_kd^x_d exp(-rate_kd) / x_d!``; the log density of a chunk is one matrix
product. A Gamma(shape, rate) prior on every rate gives the MAP M-step
``rate_kd = (sum_n r_nk x_nd + shape - 1) / (sum_n r_nk + rate)``. The default Gamma(1.01, 0.01)
adds 0.01 pseudo-counts over 0.01 pseudo-observations: enough to keep a rate of a feature never seen
in a component above 0 (so its log stays finite), too little to move a fitted rate noticeably.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from jaxem.core.constraints import Positive, floored_log
from jaxem.models.closed_form import (
    ChunkConjugateComponents,
    check_gamma_prior,
    check_init_method,
    check_non_negative_integers,
    check_num_components,
    divide_or_keep,
    gamma_log_prior,
    init_from_responsibilities,
)

Array = jax.Array


class PoissonParams(NamedTuple):
    """Rates ``[K, D]``."""

    rates: Array


class PoissonStats(NamedTuple):
    """Sums over data of ``r`` (``[K]``) and ``r x`` (``[K, D]``)."""

    counts: Array
    sums: Array


@dataclass(frozen=True)
class Poisson(ChunkConjugateComponents):
    """K products of independent Poisson distributions (count features).

    Args:
        num_components: K.
        gamma_prior: ``(shape, rate)`` of the Gamma prior on every rate, shape >= 1, rate >= 0;
            ``(1.0, 0.0)`` is maximum likelihood.
        init_method: ``"kmeans++"`` (default), ``"random_rows"`` or ``"random_resp"``.

    Example:
        >>> import jax, jaxem
        >>> counts = jax.random.poisson(jax.random.key(0), 4.0, (200, 3))
        >>> model = jaxem.Mixture(jaxem.Poisson(2))
        >>> jaxem.fit(jaxem.em(model), jax.random.key(1), counts).params.components.rates.shape
        (2, 3)
    """

    num_components: int
    gamma_prior: tuple[float, float] = (1.01, 0.01)
    init_method: str = "kmeans++"

    def __post_init__(self) -> None:
        check_num_components(self.num_components)
        check_gamma_prior(self.gamma_prior)
        check_init_method(self.init_method)

    def log_prob_chunk(self, params: PoissonParams, x: Array) -> Array:
        rates = params.rates
        log_factorials = jnp.sum(gammaln(x + 1), axis=-1)
        return x @ floored_log(rates).T - jnp.sum(rates, axis=-1) - log_factorials[:, None]

    def chunk_stats(self, params: PoissonParams, x: Array, resp: Array) -> PoissonStats:
        return PoissonStats(jnp.sum(resp, axis=0), resp.T @ x)

    def m_step(self, params: PoissonParams, stats: PoissonStats) -> PoissonParams:
        shape, rate = self.gamma_prior
        numerator = stats.sums + (shape - 1.0)
        denominator = (stats.counts + rate)[:, None]
        return PoissonParams(divide_or_keep(numerator, denominator, params.rates))

    def log_prior(self, params: PoissonParams) -> Array:
        """Gamma(shape, rate) log density summed over every rate, up to its normalising constant."""
        return gamma_log_prior(params.rates, self.gamma_prior)

    def init(self, key: Array, x: Array, row_weights: Array | None) -> PoissonParams:
        reference = PoissonParams(jnp.ones((self.num_components, x.shape[1]), x.dtype))
        return init_from_responsibilities(self, key, x, row_weights, reference)

    def sample(self, key: Array, params: PoissonParams, labels: Array) -> Array:
        """One draw per entry of ``labels`` (component indices), shape ``[n, D]``."""
        rates = params.rates[labels]
        return jax.random.poisson(key, rates).astype(rates.dtype)

    def num_free_parameters(self, num_features: int) -> int:
        """K x D rates (mixture weights not included)."""
        return self.num_components * num_features

    def check_data(self, x: Any) -> None:
        """Raise ``ValueError`` unless ``x`` is a 2-D array of non-negative integer counts."""
        check_non_negative_integers(x, "Poisson")

    def constraints(self) -> PoissonParams:
        return PoissonParams(Positive())
