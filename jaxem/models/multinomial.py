"""Multinomial components: each row is a vector of counts over D categories (e.g. word counts).

``p(x | k) = n! / prod_d x_d! * prod_d p_kd^x_d`` with ``n = sum_d x_d``; the number of trials is
taken as given (it is not modelled), so the multinomial coefficient is the same for every component.
The log density of a chunk is one matrix product. A symmetric Dirichlet(alpha) prior on every
``p_k`` gives the MAP M-step ``p_kd = (sum_n r_nk x_nd + alpha - 1) / (sum_n r_nk n_n +
D (alpha - 1))``; the default alpha = 2 adds one pseudo-count per category (Laplace smoothing), so a
category never seen in a component keeps a probability above 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from jaxem.core.constraints import Simplex, floored_log
from jaxem.models.closed_form import (
    ChunkConjugateComponents,
    check_at_least_one,
    check_init_method,
    check_non_negative_integers,
    check_num_components,
    divide_or_keep,
    init_from_responsibilities,
)

Array = jax.Array


class MultinomialParams(NamedTuple):
    """Category probabilities ``[K, D]``, each row on the simplex."""

    probs: Array


class MultinomialStats(NamedTuple):
    """Sums over data of ``r`` (``[K]``) and ``r x`` (``[K, D]``)."""

    counts: Array
    category_counts: Array


def log_multinomial_coefficient(x: Array) -> Array:
    """``log(n! / prod_d x_d!)`` per row."""
    return gammaln(jnp.sum(x, axis=-1) + 1) - jnp.sum(gammaln(x + 1), axis=-1)


@dataclass(frozen=True)
class Multinomial(ChunkConjugateComponents):
    """K multinomial distributions over D categories.

    Args:
        num_components: K.
        dirichlet_concentration: alpha >= 1 of the symmetric Dirichlet prior on each component's
            probabilities; 1 is maximum likelihood, the default 2 is Laplace smoothing.
        init_method: ``"kmeans++"`` (default, on the rows' proportions), ``"random_rows"`` or
            ``"random_resp"``.

    Example:
        >>> import jax, jaxem
        >>> counts = jax.random.poisson(jax.random.key(0), 3.0, (200, 6))
        >>> model = jaxem.Mixture(jaxem.Multinomial(2))
        >>> jaxem.fit(jaxem.em(model), jax.random.key(1), counts).params.components.probs.shape
        (2, 6)
    """

    num_components: int
    dirichlet_concentration: float = 2.0
    init_method: str = "kmeans++"

    def __post_init__(self) -> None:
        check_num_components(self.num_components)
        check_at_least_one(
            "dirichlet_concentration", self.dirichlet_concentration, "1 is maximum likelihood"
        )
        check_init_method(self.init_method)

    def log_prob_chunk(self, params: MultinomialParams, x: Array) -> Array:
        return x @ floored_log(params.probs).T + log_multinomial_coefficient(x)[:, None]

    def chunk_stats(self, params: MultinomialParams, x: Array, resp: Array) -> MultinomialStats:
        return MultinomialStats(jnp.sum(resp, axis=0), resp.T @ x)

    def m_step(self, params: MultinomialParams, stats: MultinomialStats) -> MultinomialParams:
        numerator = stats.category_counts + (self.dirichlet_concentration - 1.0)
        denominator = jnp.sum(numerator, axis=-1, keepdims=True)
        return MultinomialParams(divide_or_keep(numerator, denominator, params.probs))

    def log_prior(self, params: MultinomialParams) -> Array:
        """Dirichlet(alpha) log density summed over components, up to its normalising constant."""
        alpha = self.dirichlet_concentration
        if alpha == 1:
            return jnp.zeros((), params.probs.dtype)
        return (alpha - 1.0) * jnp.sum(floored_log(params.probs))

    def init(self, key: Array, x: Array, row_weights: Array | None) -> MultinomialParams:
        k, d = self.num_components, x.shape[1]
        reference = MultinomialParams(jnp.full((k, d), 1.0 / d, x.dtype))

        def proportions(xc: Array) -> Array:
            total = jnp.sum(xc, axis=-1, keepdims=True)
            return xc / jnp.where(total > 0, total, 1)

        return init_from_responsibilities(self, key, x, row_weights, reference, proportions)

    def num_free_parameters(self, num_features: int) -> int:
        """K x (D - 1) probabilities (mixture weights not included)."""
        return self.num_components * (num_features - 1)

    def check_data(self, x: Any) -> None:
        """Raise ``ValueError`` unless ``x`` is a 2-D array of non-negative integer counts."""
        check_non_negative_integers(x, "Multinomial")

    def constraints(self) -> MultinomialParams:
        return MultinomialParams(Simplex())
