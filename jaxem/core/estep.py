"""The log-space arithmetic of E-steps: row counts, weighted sums and normalisation by logsumexp.

Passes over the rows (chunked, sharded, streamed) live in :mod:`jaxem.core.rows`; this module holds
the small functions every E-step uses inside a chunk.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def num_rows(x: Any) -> int:
    """The length of the leading (data) axis shared by every leaf of ``x``.

    Example:
        >>> import jax.numpy as jnp
        >>> num_rows((jnp.zeros((3, 2)), jnp.zeros(3)))
        3
    """
    leaves = jax.tree.leaves(x)
    if not leaves:
        raise ValueError("x holds no arrays: pass an array with one row per data point.")
    n = leaves[0].shape[0]
    for leaf in leaves[1:]:
        if leaf.shape[0] != n:
            raise ValueError(
                f"The arrays in x disagree on the number of rows ({n} and {leaf.shape[0]}): "
                "every leaf must have one row per data point."
            )
    return n


def weighted_sum(values: Array, row_weights: Array | None) -> Array:
    """``sum(row_weights * values)`` over the data axis, zero-weight rows excluded by ``where``.

    Excluding rather than multiplying keeps a padded or zero-weight row whose value is not finite
    from turning the sum into NaN (0 x inf = NaN).

    Example:
        >>> import jax.numpy as jnp
        >>> float(weighted_sum(jnp.array([1.0, jnp.inf]), jnp.array([2.0, 0.0])))
        2.0
    """
    if row_weights is None:
        return jnp.sum(values, axis=0)
    w = row_weights.reshape(row_weights.shape + (1,) * (values.ndim - 1))
    return jnp.sum(jnp.where(w > 0, w * values, 0), axis=0)


def total_weight(x: Any, row_weights: Array | None, dtype: Any) -> Array:
    """The number of data points, or the sum of their weights."""
    if row_weights is None:
        return jnp.asarray(num_rows(x), dtype)
    return jnp.sum(row_weights).astype(dtype)


def normalize_log(log_joint: Array) -> tuple[Array, Array]:
    """Log-responsibilities and per-row log normaliser of a ``[C, K]`` log-joint, by logsumexp."""
    log_norm = jax.nn.logsumexp(log_joint, axis=-1)
    return log_joint - log_norm[..., None], log_norm
