"""Chunked reductions over the data axis and the log-space E-step arithmetic.

Statistics add over data points, so a pass over the data is a sum of per-chunk results. The chunks
are read with ``lax.dynamic_slice`` from the data array itself (no padded copy of the data is ever
made), and a last chunk shorter than the others is handled by a second trace of the same function.
Memory is therefore O(chunk_size x K), whatever N is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

# Elements of the largest per-chunk intermediate a default chunk may hold (4 MiB in float64), with
# the chunk rounded to a power of two. Smaller chunks pay the fixed cost of a chunk (a few dozen
# small kernels) too often, larger ones leave the cache: at (10^5, 16, 16) and (10^6, 8, 8) float64
# full covariance, chunks of 4096 and 8192 rows measured 1.2-1.7x faster per EM iteration on CPU
# than 1024 and 4096 (half this budget, not rounded), and 6144 rows slower than either power of two.
DEFAULT_CHUNK_ELEMENTS = 1 << 19
# The same on GPUs and TPUs (256 MiB in float64), whose chunks cost a few kernel launches whatever
# their size: on an H100, full covariance in float64 ran (10^6, 8, 8) at 1.1-1.3 ms per EM iteration
# with chunks of 2^24-2^26 elements against 4.8 ms with the CPU's budget, 10^7 x 8 x 8 at 9-10 ms
# against 46 ms, and (2 10^4, 64, 32) at 0.71-0.76 ms against 4.0 ms.
ACCELERATOR_CHUNK_ELEMENTS = 1 << 25
# Restarts: rows per chunk wanted for the lane-shared products (1024 measured best for 32 restarts
# at (2 10^4, 8, 8): 38 ms per iteration against 55 ms with 4096 or 8192 rows), and the cap on a
# chunk's intermediates over all lanes (256 MiB in float64).
RESTART_CHUNK_ROWS = 1024
RESTART_CHUNK_ELEMENTS = 1 << 25


def num_rows(x: Any) -> int:
    """The length of the leading (data) axis shared by every leaf of ``x``."""
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


def default_chunk_size(
    num_points: int, width: int, lanes: int = 1, platform: str | None = None
) -> int:
    """A chunk size that keeps a ``chunk x width`` intermediate near a budget of elements.

    ``width`` is the per-point size of the largest intermediate (see :func:`chunk_width`); the
    size is the power of two nearest ``budget / (width x lanes)``, at least 256, where the budget
    is ``DEFAULT_CHUNK_ELEMENTS`` on a CPU and ``ACCELERATOR_CHUNK_ELEMENTS`` on other platforms
    (``platform``, by default JAX's default backend).
    Under ``vmap`` over ``lanes`` restarts the intermediates grow ``lanes`` times, but so do the
    matrix products with the shared data, which need taller chunks to run at speed: at least
    ``RESTART_CHUNK_ROWS`` rows, as long as the intermediates stay within
    ``RESTART_CHUNK_ELEMENTS``.
    """
    platform = platform or jax.default_backend()
    elements = DEFAULT_CHUNK_ELEMENTS if platform == "cpu" else ACCELERATOR_CHUNK_ELEMENTS
    rows = elements / max(width * lanes, 1)
    size = max(256, 1 << max(round(math.log2(rows)), 0))
    if lanes > 1:
        budget = RESTART_CHUNK_ELEMENTS // max(width * lanes, 1)
        size = max(min(size, budget), min(RESTART_CHUNK_ROWS, budget), 256)
    return int(min(num_points, size))


def chunk_width(model: Any, x: Any) -> int:
    """The per-point width ``default_chunk_size`` sizes chunks by.

    A model, or its component family (``model.components``), may state it as
    ``point_width(values_per_row, dtype)``; otherwise it is the data's values per row times the
    model's number of components (1 when it has none): the ``[C, K, D]`` intermediates of a
    mixture that forms differences to every component.
    """
    leaves = jax.tree.leaves(x)
    row = sum(int(np.prod(np.shape(leaf)[1:], dtype=int)) for leaf in leaves)
    for part in (model, getattr(model, "components", None)):
        stated = getattr(part, "point_width", None)
        if stated is not None:
            return int(stated(row, leaves[0].dtype))
    return row * getattr(model, "num_components", 1)


def _slice_rows(tree: Any, start: Array | int, size: int) -> Any:
    return jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, start, size, axis=0), tree)


def reduce_chunks(
    fn: Callable[[Any, Array | None, Array], Any],
    x: Any,
    weights: Array | None,
    chunk_size: int | None,
) -> Any:
    """Sum ``fn(x_chunk, weights_chunk, row_index)`` over consecutive chunks of the data.

    ``row_index`` holds the global row numbers of the chunk, so a function that draws random numbers
    per row (``jax.random.fold_in(key, row)``) gives the same answer for every chunk size.

    Example:
        >>> import jax.numpy as jnp
        >>> x = jnp.arange(10.0)[:, None]
        >>> float(reduce_chunks(lambda xc, wc, i: xc.sum(), x, None, chunk_size=4))
        45.0
    """
    n = num_rows(x)
    size = n if chunk_size is None else int(min(max(chunk_size, 1), n))
    num_full, tail = divmod(n, size)

    def chunk(start: Array | int, length: int) -> Any:
        xc = _slice_rows(x, start, length)
        wc = None if weights is None else lax.dynamic_slice_in_dim(weights, start, length)
        return fn(xc, wc, start + jnp.arange(length))

    if num_full == 1 and tail == 0:
        return fn(x, weights, jnp.arange(n))
    total = chunk(0, size)
    if num_full > 1:

        def body(i: Array, acc: Any) -> Any:
            return jax.tree.map(jnp.add, acc, chunk(i * size, size))

        total = lax.fori_loop(1, num_full, body, total)
    if tail:
        total = jax.tree.map(jnp.add, total, chunk(num_full * size, tail))
    return total


def weighted_sum(values: Array, weights: Array | None) -> Array:
    """``sum(weights * values)`` over the data axis, with zero-weight rows excluded by ``where``.

    Excluding rather than multiplying keeps a padded or zero-weight row whose value is not finite
    from turning the sum into NaN (0 x inf = NaN).
    """
    if weights is None:
        return jnp.sum(values, axis=0)
    w = weights.reshape(weights.shape + (1,) * (values.ndim - 1))
    return jnp.sum(jnp.where(w > 0, w * values, 0), axis=0)


def total_weight(x: Any, weights: Array | None, dtype: Any) -> Array:
    """The number of data points, or the sum of their weights."""
    if weights is None:
        return jnp.asarray(num_rows(x), dtype)
    return jnp.sum(weights).astype(dtype)


def normalize_log(log_joint: Array) -> tuple[Array, Array]:
    """Log-responsibilities and per-row log normaliser of a ``[C, K]`` log-joint, by logsumexp."""
    log_norm = jax.nn.logsumexp(log_joint, axis=-1)
    return log_joint - log_norm[..., None], log_norm
