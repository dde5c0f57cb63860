"""A random sample of a bounded number of rows, so that initialisation costs no memory in N.

Initialising from a key (k-means++ seeds, their responsibilities, the first M-step) looks at a
sample of at most :func:`sample_size` rows once the data have more rows than that; smaller data are
used whole. The sample is drawn by priority sampling (Duffield, Lund & Thorup, 2007): row ``r``
with weight ``w_r > 0`` gets the priority ``w_r / u_r``, ``u_r`` uniform on ``(0, 1]`` drawn from
the key and the row number alone; the ``S`` rows of highest priority are kept with the weight
``max(w_r, tau)``, ``tau`` the ``(S + 1)``-th highest priority, which makes weighted sums over the
sample unbiased estimates of the sums over all rows. The highest priorities are found by merging
per-chunk and per-device lists of ``S + 1`` (ties go to the lower row number), so the sample is the
same for every chunk size and every number of devices: a sharded fit draws exactly the rows that a
fit on one device draws.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxem.core.estep import num_rows

Array = jax.Array

# A sample holds at most this many rows, and at most this many bytes (long sequences as rows).
SAMPLE_ROWS = 1 << 16
SAMPLE_BYTES = 1 << 28
# Rows whose priorities are ranked at a time. Each ranked row holds about 40 bytes of temporaries
# (the per-row random draws), each merge costs a top-k over the kept list and the chunk: at 10^7
# rows, 2^18 measured 15 MiB and 0.5 s, 2^17 9 MiB and 0.8 s, 2^16 7 MiB and 2 s.
_RANK_CHUNK_ROWS = 1 << 17


def sample_size(x: Any) -> int:
    """The number of rows an initialisation sample of ``x`` holds (static).

    Example:
        >>> import numpy as np
        >>> sample_size(np.zeros((10, 8), np.float32))
        65536
    """
    row_bytes = sum(
        int(np.prod(leaf.shape[1:], dtype=int)) * np.dtype(leaf.dtype).itemsize
        for leaf in jax.tree.leaves(x)
    )
    return int(max(1, min(SAMPLE_ROWS, SAMPLE_BYTES // max(row_bytes, 1))))


def _priority_dtype(x: Any, weights: Array | None) -> Any:
    if weights is not None:
        return weights.dtype
    floats = [leaf.dtype for leaf in jax.tree.leaves(x) if jnp.issubdtype(leaf.dtype, jnp.floating)]
    return floats[0] if floats else jnp.result_type(float)


def _top(priority: Array, rows: Array, weight: Array, size: int) -> tuple[Array, Array, Array]:
    # top_k puts the lower index first among equal values; every list merged here holds lower row
    # numbers at lower indices, so ties go to the lower row number whatever the chunking.
    priority, index = lax.top_k(priority, size)
    return priority, rows[index], weight[index]


def sample_rows(
    key: Array,
    x: Any,
    weights: Array | None,
    size: int,
    *,
    weighted: bool | None = None,
    axis_name: str | None = None,
    row_offset: Array | int = 0,
) -> tuple[Any, Array | None]:
    """``size`` rows of ``x`` by priority sampling, in row order, and their weights.

    Args:
        key: the sample's key.
        x: the rows (a pytree sharing the row axis); with ``axis_name``, this device's shard.
        weights: per-row weights, or ``None`` for 1 each; rows of weight 0 are drawn only when
            fewer than ``size + 1`` rows have a positive weight, and then keep weight 0.
        size: rows in the sample; ``x`` must hold more (over all devices).
        weighted: return weights (default: whether ``weights`` were given). Without them the rows
            stand for equal shares of the data.
        axis_name: inside ``shard_map``, the axis the rows are sharded over.
        row_offset: the row number of this shard's first row in the whole data.

    Returns:
        ``(sample, sample_weights)``, the sample replicated on every device.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = jnp.arange(20.0).reshape(10, 2)
        >>> sample, w = sample_rows(jax.random.key(0), x, None, 4)
        >>> sample.shape, w is None
        ((4, 2), True)
    """
    weighted = weights is not None if weighted is None else weighted
    n = num_rows(x)
    dtype = _priority_dtype(x, weights)
    keep = size + 1  # the (size + 1)-th priority is the threshold tau

    # The weights ride along only when they differ between rows; without them every row has 1.
    carry_weights = weights is not None

    def priorities(start: Array | int, length: int) -> tuple[Array, Array | None]:
        # int32 row numbers in 32- and 64-bit mode alike, so both draw the same numbers.
        rows = (row_offset + start + jnp.arange(length)).astype(jnp.int32)
        u = jax.vmap(lambda r: jax.random.uniform(jax.random.fold_in(key, r), (), dtype))(rows)
        if not carry_weights:
            return 1 / (1 - u), None
        w = lax.dynamic_slice_in_dim(weights, start, length).astype(dtype)
        return jnp.where(w > 0, w / (1 - u), 0), w

    def merge(best: tuple, start: Array | int, length: int) -> tuple:
        # Only the priorities are joined: a winner's row number and weight follow from its index
        # (the kept list first, then the chunk), so no row-number array of the chunk is built.
        new_priority, new_w = priorities(start, length)
        priority, index = lax.top_k(jnp.concatenate([best[0], new_priority]), keep)
        kept = index < keep
        from_best, from_new = jnp.minimum(index, keep - 1), jnp.maximum(index - keep, 0)
        rows = jnp.where(
            kept, best[1][from_best], (row_offset + start + from_new).astype(jnp.int32)
        )
        if not carry_weights:
            return priority, rows, None
        return priority, rows, jnp.where(kept, best[2][from_best], new_w[from_new])

    # Placeholders rank below every row (priority -1) and come first, as lower "row numbers".
    best = (
        jnp.full(keep, -1, dtype),
        jnp.full(keep, -1, jnp.int32),
        jnp.zeros(keep, dtype) if carry_weights else None,
    )
    chunk = int(min(n, max(_RANK_CHUNK_ROWS, keep)))
    num_full, tail = divmod(n, chunk)
    best = lax.fori_loop(0, num_full, lambda i, b: merge(b, i * chunk, chunk), best)
    if tail:
        best = merge(best, num_full * chunk, tail)
    if not carry_weights:
        best = (*best[:2], jnp.ones(keep, dtype))
    if axis_name is not None:
        # Devices in axis order hold increasing row numbers, so the gathered lists keep the rule.
        gathered = [lax.all_gather(a, axis_name, tiled=True) for a in best]
        best = _top(*gathered, keep)

    priority, rows, w = best
    tau = priority[size]
    order = jnp.argsort(rows[:size])
    rows, w = rows[:size][order], w[:size][order]
    local = rows - row_offset
    inside = (local >= 0) & (local < n)

    def take(leaf: Array) -> Array:
        picked = leaf[jnp.clip(local, 0, n - 1)]
        if axis_name is None:
            return picked
        mask = inside.reshape(inside.shape + (1,) * (leaf.ndim - 1))
        # Exactly one device holds each row: the sum over devices is that row, exactly.
        return lax.psum(jnp.where(mask, picked, jnp.zeros_like(picked)), axis_name)

    sample = jax.tree.map(take, x)
    if not weighted:
        return sample, None
    return sample, jnp.where(w > 0, jnp.maximum(w, tau), 0)


def initial_params(model: Any, key: Array, x: Any, weights: Array | None) -> Any:
    """``model.init`` on all rows, or on a :func:`sample_rows` sample when there are more than
    :func:`sample_size`.

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (100, 2))
        >>> model = jaxem.Mixture(jaxem.Gaussian(2))
        >>> initial_params(model, jax.random.key(1), x, None).weights.shape
        (2,)
    """
    size = sample_size(x)
    if num_rows(x) <= size:
        return model.init(key, x, weights)
    key_sample, key_init = jax.random.split(key)
    sample, sample_weights = sample_rows(key_sample, x, weights, size)
    return model.init(key_init, sample, sample_weights)


__all__ = ["SAMPLE_BYTES", "SAMPLE_ROWS", "initial_params", "sample_rows", "sample_size"]
