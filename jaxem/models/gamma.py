"""Gamma components: D independent gamma features per component (positive data: sizes, durations).

Parameterised by shape ``a`` and mean ``m`` (the rate is ``a / m``):
``log p(x | a, m) = a log(a / m) - log Gamma(a) + (a - 1) log x - a x / m``. Given the
responsibilities the mean has a closed form, ``m = sum r x / sum r``, whatever the shape; the shape
has none (its equation involves the digamma function), so ``closed_form_blocks`` leaves it to the
gradient M-step. With ``jaxem.Gradient()`` each M-step sets the means exactly and then maximises Q
over the shapes, a concave one-dimensional problem per feature (ECM, monotone); with
``jaxem.ClosedForm()`` the shapes stay at their initial values. Working with the mean rather than
the rate makes that ECM step the joint maximiser of Q, where a rate given the old shape would not
be.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from jaxem.core.constraints import Positive
from jaxem.core.model import ConjugateComponents
from jaxem.models.closed_form import (
    as_matrix,
    check_init_method,
    check_num_components,
    divide_or_keep,
    init_from_responsibilities,
)

Array = jax.Array


class GammaParams(NamedTuple):
    """Shapes ``[K, D]`` and means ``[K, D]``; :attr:`rates` is ``shapes / means``."""

    shapes: Array
    means: Array

    @property
    def rates(self) -> Array:
        return self.shapes / self.means


class GammaStats(NamedTuple):
    """Sums over data of ``r`` (``[K]``), ``r x`` and ``r log x`` (``[K, D]``)."""

    counts: Array
    sums: Array
    log_sums: Array


def approximate_shape(mean: Array, mean_log: Array) -> Array:
    """Minka's (2002) closed-form approximation of the maximum-likelihood gamma shape from the
    mean and the mean log of the data: with ``s = log(mean) - mean_log``,
    ``a = (3 - s + sqrt((s - 3)^2 + 24 s)) / (12 s)``."""
    s = jnp.maximum(jnp.log(mean) - mean_log, 1e-8)
    return (3 - s + jnp.sqrt((s - 3) ** 2 + 24 * s)) / (12 * s)


@dataclass(frozen=True)
class Gamma(ConjugateComponents):
    """K products of independent gamma distributions (strictly positive features).

    Fit with ``jaxem.Gradient()``: the means take their closed form, the shapes the gradient path.

    Args:
        num_components: K.
        min_shape: shapes stay above this.
        init_method: ``"kmeans++"`` (default), ``"random_rows"`` or ``"random_resp"``; the first
            shapes follow from the same assignment by Minka's approximation.

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.gamma(jax.random.key(0), 3.0, (300, 1))
        >>> model = jaxem.Mixture(jaxem.Gamma(2))
        >>> result = jaxem.fit(jaxem.em(model, jaxem.Gradient()), jax.random.key(1), x)
        >>> result.params.components.shapes.shape
        (2, 1)
    """

    num_components: int
    min_shape: float = 1e-6
    init_method: str = "kmeans++"

    def __post_init__(self) -> None:
        check_num_components(self.num_components)
        if not (np.isscalar(self.min_shape) and self.min_shape > 0):
            raise ValueError(f"min_shape must be positive, got {self.min_shape!r}.")
        check_init_method(self.init_method)

    def constraints(self) -> GammaParams:
        return GammaParams(Positive(self.min_shape), Positive())

    def closed_form_blocks(self) -> GammaParams:
        return GammaParams(False, True)

    def log_prob_chunk(self, params: GammaParams, x: Array) -> Array:
        a, rates = params.shapes, params.rates
        norm = jnp.sum(a * jnp.log(rates) - gammaln(a), axis=-1)
        return norm + jnp.log(x) @ (a - 1).T - x @ rates.T

    def log_prob(self, params: GammaParams, x_one: Array) -> Array:
        return self.log_prob_chunk(params, x_one[None])[0]

    def chunk_stats(self, params: GammaParams, x: Array, resp: Array) -> GammaStats:
        return GammaStats(jnp.sum(resp, axis=0), resp.T @ x, resp.T @ jnp.log(x))

    def suff_stats(self, params: GammaParams, x_one: Array, resp: Array) -> GammaStats:
        return self.chunk_stats(params, x_one[None], resp[None])

    def m_step(self, params: GammaParams, stats: GammaStats) -> GammaParams:
        """Closed-form means; the shapes pass through unchanged."""
        counts = jnp.broadcast_to(stats.counts[:, None], stats.sums.shape)
        return GammaParams(params.shapes, divide_or_keep(stats.sums, counts, params.means))

    def init(self, key: Array, x: Array, row_weights: Array | None) -> GammaParams:
        ones = jnp.ones((self.num_components, x.shape[1]), x.dtype)
        return init_from_responsibilities(
            self, key, x, row_weights, GammaParams(ones, ones), m_step=self._first_estimate
        )

    def _first_estimate(self, params: GammaParams, stats: GammaStats) -> GammaParams:
        """Closed-form means and shapes by Minka's approximation, for the first parameters."""
        means = self.m_step(params, stats).means
        counts = jnp.broadcast_to(stats.counts[:, None], stats.sums.shape)
        mean_log = divide_or_keep(stats.log_sums, counts, jnp.log(means))
        shapes = jnp.maximum(approximate_shape(means, mean_log), self.min_shape)
        return GammaParams(jnp.where(counts > 0, shapes, params.shapes).astype(means.dtype), means)

    def sample(self, key: Array, params: GammaParams, labels: Array) -> Array:
        """One draw per entry of ``labels`` (component indices), shape ``[n, D]``."""
        shapes = params.shapes[labels]
        return jax.random.gamma(key, shapes, dtype=shapes.dtype) / params.rates[labels]

    def num_free_parameters(self, num_features: int) -> int:
        """K x D shapes and K x D means (mixture weights not included)."""
        return 2 * self.num_components * num_features

    def check_data(self, x: Any) -> None:
        """Raise ``ValueError`` unless ``x`` is a 2-D array of positive numbers."""
        if np.any(as_matrix(x, "Gamma") <= 0):
            raise ValueError(
                "Gamma components need strictly positive x (the density involves log x): drop or "
                "shift the zeros and negative values first."
            )


__all__ = ["Gamma", "GammaParams", "GammaStats", "approximate_shape"]
