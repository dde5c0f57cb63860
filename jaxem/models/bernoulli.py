"""Multivariate Bernoulli components: D independent binary features per component.

``p(x | k) = prod_d p_kd^x_d (1 - p_kd)^(1 - x_d)``. The log density of a chunk is one matrix
product with the log-odds. A Beta(a, b) prior on every ``p_kd`` gives the MAP M-step
``p_kd = (sum_n r_nk x_nd + a - 1) / (sum_n r_nk + a + b - 2)``; the default Beta(2, 2) adds one
pseudo-success and one pseudo-failure (Laplace smoothing), which keeps every probability off 0
and 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxem.core.constraints import Interval, floored_log, floored_log1m
from jaxem.models.closed_form import (
    ChunkConjugateComponents,
    as_matrix,
    check_at_least_one,
    check_init_method,
    check_num_components,
    divide_or_keep,
    init_from_responsibilities,
)

Array = jax.Array


class BernoulliParams(NamedTuple):
    """Success probabilities ``[K, D]``."""

    probs: Array


class BernoulliStats(NamedTuple):
    """Sums over data of ``r`` (``[K]``) and ``r x`` (``[K, D]``)."""

    counts: Array
    successes: Array


@dataclass(frozen=True)
class Bernoulli(ChunkConjugateComponents):
    """K products of independent Bernoulli distributions (binary features).

    Args:
        num_components: K.
        beta_prior: ``(a, b)`` of the Beta prior on every probability, both >= 1; ``(1, 1)`` is
            maximum likelihood, the default ``(2, 2)`` is Laplace smoothing.
        init_method: ``"kmeans++"`` (default), ``"random_rows"`` or ``"random_resp"``.

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.bernoulli(jax.random.key(0), 0.3, (200, 5)).astype(float)
        >>> model = jaxem.Mixture(jaxem.Bernoulli(2))
        >>> jaxem.fit(jaxem.em(model), jax.random.key(1), x).params.components.probs.shape
        (2, 5)
    """

    num_components: int
    beta_prior: tuple[float, float] = (2.0, 2.0)
    init_method: str = "kmeans++"

    def __post_init__(self) -> None:
        check_num_components(self.num_components)
        if not (isinstance(self.beta_prior, tuple) and len(self.beta_prior) == 2):
            raise ValueError(f"beta_prior must be a tuple (a, b), got {self.beta_prior!r}.")
        for name, value in zip(("a", "b"), self.beta_prior, strict=True):
            check_at_least_one(f"beta_prior's {name}", value, "(1, 1) is maximum likelihood")
        check_init_method(self.init_method)

    def log_prob_chunk(self, params: BernoulliParams, x: Array) -> Array:
        log_p, log_q = floored_log(params.probs), floored_log1m(params.probs)
        return x @ (log_p - log_q).T + jnp.sum(log_q, axis=-1)

    def chunk_stats(self, params: BernoulliParams, x: Array, resp: Array) -> BernoulliStats:
        return BernoulliStats(jnp.sum(resp, axis=0), resp.T @ x)

    def m_step(self, params: BernoulliParams, stats: BernoulliStats) -> BernoulliParams:
        a, b = self.beta_prior
        numerator = stats.successes + (a - 1.0)
        denominator = (stats.counts + (a + b - 2.0))[:, None]
        return BernoulliParams(divide_or_keep(numerator, denominator, params.probs))

    def log_prior(self, params: BernoulliParams) -> Array:
        """Beta(a, b) log density summed over every probability, up to its normalising constant."""
        a, b = self.beta_prior
        lp = jnp.zeros((), params.probs.dtype)
        if a != 1:
            lp = lp + (a - 1.0) * jnp.sum(floored_log(params.probs))
        if b != 1:
            lp = lp + (b - 1.0) * jnp.sum(floored_log1m(params.probs))
        return lp

    def init(self, key: Array, x: Array, row_weights: Array | None) -> BernoulliParams:
        reference = BernoulliParams(jnp.full((self.num_components, x.shape[1]), 0.5, x.dtype))
        return init_from_responsibilities(self, key, x, row_weights, reference)

    def sample(self, key: Array, params: BernoulliParams, labels: Array) -> Array:
        """One draw per entry of ``labels`` (component indices), shape ``[n, D]``."""
        probs = params.probs[labels]
        return jax.random.bernoulli(key, probs).astype(probs.dtype)

    def num_free_parameters(self, num_features: int) -> int:
        """K x D probabilities (mixture weights not included)."""
        return self.num_components * num_features

    def check_data(self, x: Any) -> None:
        """Raise ``ValueError`` unless ``x`` is a 2-D array of values in [0, 1]."""
        array = as_matrix(x, "Bernoulli")
        if np.any(array < 0) or np.any(array > 1):
            raise ValueError(
                "Bernoulli components need x in [0, 1] (binary features): binarise the data first, "
                "e.g. x > threshold."
            )

    def constraints(self) -> BernoulliParams:
        return BernoulliParams(Interval(0.0, 1.0))
