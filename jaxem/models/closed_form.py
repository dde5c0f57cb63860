"""Pieces shared by the closed-form families (Bernoulli, categorical, multinomial, Poisson,
exponential, linear regression): first parameters from hard or random responsibilities, logs that
stay finite at probability 0, and eager checks of the configuration and the data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxem import init as initializers
from jaxem.core.constraints import floored_log
from jaxem.core.estep import num_rows
from jaxem.core.model import ConjugateComponents
from jaxem.core.rows import default_chunk_size, reduce_chunks

Array = jax.Array

INIT_METHODS = ("kmeans++", "random_rows", "random_resp")


class ChunkConjugateComponents(ConjugateComponents):
    """A closed-form family written for chunks: the per-datum methods are chunks of one row."""

    def log_prob(self, params: Any, x_one: Any) -> Array:
        return self.log_prob_chunk(params, jax.tree.map(lambda a: a[None], x_one))[0]

    def suff_stats(self, params: Any, x_one: Any, resp: Array) -> Any:
        return self.chunk_stats(params, jax.tree.map(lambda a: a[None], x_one), resp[None])


def divide_or_keep(numerator: Array, denominator: Array, previous: Array) -> Array:
    """``numerator / denominator`` where the denominator is positive, else ``previous``.

    A zero denominator only happens to a component that is empty under maximum likelihood (no
    prior pseudo-counts): it keeps its parameters rather than turning into NaN.
    """
    safe = jnp.where(denominator > 0, denominator, 1)
    return jnp.where(denominator > 0, numerator / safe, previous).astype(previous.dtype)


def gamma_log_prior(rates: Array, gamma_prior: tuple[float, float]) -> Array:
    """Gamma(shape, rate) log density summed over ``rates``, up to its normalising constant."""
    shape, rate = gamma_prior
    lp = jnp.zeros((), rates.dtype)
    if shape != 1:
        lp = lp + (shape - 1.0) * jnp.sum(floored_log(rates))
    if rate != 0:
        lp = lp - rate * jnp.sum(rates)
    return lp


def check_num_components(num_components: Any) -> None:
    if not isinstance(num_components, (int, np.integer)) or num_components < 1:
        raise ValueError(f"num_components must be a positive integer, got {num_components!r}.")


def check_init_method(init_method: str) -> None:
    if init_method not in INIT_METHODS:
        raise ValueError(
            f"Unknown init_method {init_method!r}: use one of {', '.join(INIT_METHODS)}."
        )


def check_at_least_one(name: str, value: Any, meaning: str) -> None:
    """A prior parameter that must be >= 1 so that the MAP estimate lies inside the domain."""
    if not (np.isscalar(value) and np.isfinite(value) and value >= 1):
        raise ValueError(f"{name} must be a number >= 1 ({meaning}), got {value!r}.")


def check_gamma_prior(gamma_prior: Any) -> None:
    """``(shape, rate)`` of a Gamma prior: shape >= 1 and rate >= 0."""
    ok = isinstance(gamma_prior, tuple) and len(gamma_prior) == 2
    ok = ok and all(np.isscalar(v) and np.isfinite(v) for v in gamma_prior)
    if not (ok and gamma_prior[0] >= 1 and gamma_prior[1] >= 0):
        raise ValueError(
            f"gamma_prior must be a tuple (shape, rate) with shape >= 1 and rate >= 0 "
            f"((1.0, 0.0) is maximum likelihood), got {gamma_prior!r}."
        )


def as_matrix(x: Any, family: str) -> np.ndarray:
    """``x`` as a 2-D NumPy array of finite numbers, or a ValueError naming the family."""
    array = np.asarray(x)
    if array.ndim != 2:
        raise ValueError(
            f"{family} components need x as a 2-D array (one row per data point), "
            f"got shape {array.shape}."
        )
    if not np.issubdtype(array.dtype, np.number) or not np.all(np.isfinite(array)):
        raise ValueError(f"{family} components need finite numbers in x.")
    return array


def check_non_negative_integers(x: Any, family: str, num_features: int | None = None) -> None:
    array = as_matrix(x, family)
    if num_features is not None and array.shape[1] != num_features:
        raise ValueError(f"x has {array.shape[1]} columns but the model has {num_features}.")
    if np.any(array < 0) or np.any(array != np.round(array)):
        raise ValueError(f"{family} components model counts: x must hold non-negative integers.")


def init_from_responsibilities(
    components: ConjugateComponents,
    key: Array,
    x: Any,
    row_weights: Array | None,
    reference: Any,
    features: Callable[[Any], Array] | None = None,
    m_step: Callable[[Any, Any], Any] | None = None,
) -> Any:
    """First parameters: one M-step from responsibilities that need no parameters.

    ``components.init_method`` picks them: ``"kmeans++"`` and ``"random_rows"`` assign each point to
    its nearest seed (k-means++ seeds or random rows) in the space of ``features(x)`` (the rows
    themselves by default); ``"random_resp"`` draws uniform random responsibilities per row. The
    statistics are reduced chunk by chunk and ``components.m_step(reference, stats)`` turns them
    into parameters (``reference`` is what an empty component keeps); ``m_step`` replaces it, for
    a family that also estimates the blocks its own M-step passes through (a gamma shape).
    """
    k = components.num_components
    features = (lambda a: a) if features is None else features
    n = num_rows(x)
    width = int(np.prod(jax.eval_shape(features, x).shape[1:], dtype=int))
    chunk_size = default_chunk_size(n, k * max(width, 1))
    method = components.init_method
    if method == "random_resp":

        def resp_fn(xc: Any, rows: Array) -> Array:
            return initializers.random_resp(key, rows, k, features(xc).dtype)

    else:
        key_rows, key_seed = jax.random.split(key)
        sample, sample_weights = x, row_weights
        if n > initializers.KMEANS_PLUSPLUS_MAX_ROWS:
            # Seed from a weighted sample, so that the features of all rows are never held at once.
            p = None if row_weights is None else row_weights / jnp.sum(row_weights)
            idx = jax.random.choice(
                key_rows, n, (initializers.KMEANS_PLUSPLUS_MAX_ROWS,), replace=True, p=p
            )
            sample, sample_weights = jax.tree.map(lambda a: a[idx], x), None
        points = features(sample)
        if method == "kmeans++":
            centers = initializers.kmeans_plusplus(key_seed, points, sample_weights, k)
        else:
            centers = initializers.random_rows(key_seed, points, sample_weights, k)

        def resp_fn(xc: Any, rows: Array) -> Array:
            return initializers.nearest_center(features(xc), centers)

    def chunk(xc: Any, wc: Array | None, rows: Array) -> Any:
        resp = resp_fn(xc, rows)
        if wc is not None:
            resp = resp * wc[:, None]
        return components.chunk_stats(reference, xc, resp)

    stats = reduce_chunks(chunk, x, row_weights, chunk_size)
    return (components.m_step if m_step is None else m_step)(reference, stats)
