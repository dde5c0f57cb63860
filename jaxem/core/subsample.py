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

from typing import Any, NamedTuple

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


def _priority_dtype(x: Any, row_weights: Array | None) -> Any:
    if row_weights is not None:
        return row_weights.dtype
    floats = [leaf.dtype for leaf in jax.tree.leaves(x) if jnp.issubdtype(leaf.dtype, jnp.floating)]
    return floats[0] if floats else jnp.result_type(float)


class Ranking(NamedTuple):
    """The running list of the ``size + 1`` highest priorities, best first.

    Attributes:
        priority: the priorities; ``-1`` marks a placeholder, which ranks below every row.
        row: the rows' numbers in the whole data (``-1`` for a placeholder).
        weight: the rows' weights, or ``None`` when every row weighs 1.
        values: the rows themselves (a pytree), or ``None`` when they are taken from the data
            afterwards; a source read once, chunk by chunk, carries them along.
    """

    priority: Array
    row: Array
    weight: Array | None
    values: Any = None


def empty_ranking(size: int, dtype: Any, weighted: bool, values: Any = None) -> Ranking:
    """The ranking before any row, for a sample of ``size`` rows (it keeps ``size + 1``).

    ``values``, a pytree of arrays (or shape-dtype structs) shaped like one row each, or ``None``,
    makes the ranking carry the rows themselves along.

    Example:
        >>> import jax.numpy as jnp
        >>> empty_ranking(4, jnp.float32, False).priority.shape
        (5,)
    """
    keep = size + 1
    # Placeholders rank below every row (priority -1) and come first, as lower "row numbers".
    return Ranking(
        jnp.full(keep, -1, dtype),
        jnp.full(keep, -1, jnp.int32),
        jnp.zeros(keep, dtype) if weighted else None,
        jax.tree.map(lambda a: jnp.zeros((keep, *a.shape), a.dtype), values),
    )


def rank_rows(
    ranking: Ranking,
    key: Array,
    length: int,
    row_weights: Array | None,
    first_row: Array | int,
    values: Any = None,
) -> Ranking:
    """Merge ``length`` consecutive rows, numbered from ``first_row`` in the whole data, into
    ``ranking`` (rows after every row ranked so far, so that ties go to the lower row number).

    Args:
        ranking: from :func:`empty_ranking` or an earlier call.
        key: the sample's key; a row's priority depends on it and the row number alone.
        length: the rows to rank (static).
        row_weights: their weights when ``ranking`` carries weights, else ``None``.
        first_row: the number of the first of them in the whole data.
        values: the rows themselves when ``ranking`` carries them, else ``None``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> ranking = empty_ranking(2, jnp.float32, False)
        >>> ranking = rank_rows(ranking, jax.random.key(0), 10, None, 0)
        >>> bool((ranking.row >= 0).all())
        True
    """
    dtype = ranking.priority.dtype
    keep = ranking.priority.shape[0]
    carry_weights = ranking.weight is not None

    def merge(best: Ranking, start: Array | int, size: int) -> Ranking:
        # int32 row numbers in 32- and 64-bit mode alike, so both draw the same numbers.
        rows = (first_row + start + jnp.arange(size)).astype(jnp.int32)
        u = jax.vmap(lambda r: jax.random.uniform(jax.random.fold_in(key, r), (), dtype))(rows)
        if carry_weights:
            w = lax.dynamic_slice_in_dim(row_weights, start, size).astype(dtype)
            new_priority = jnp.where(w > 0, w / (1 - u), 0)
        else:
            new_priority = 1 / (1 - u)
        # Only the priorities are joined: a winner's row number, weight and values follow from its
        # index (the kept list first, then the chunk), so no row-number array of the chunk is built.
        priority, index = lax.top_k(jnp.concatenate([best.priority, new_priority]), keep)
        kept = index < keep
        from_best, from_new = jnp.minimum(index, keep - 1), jnp.maximum(index - keep, 0)

        def pick(old: Array, new: Array) -> Array:
            mask = kept.reshape(kept.shape + (1,) * (old.ndim - 1))
            return jnp.where(mask, old[from_best], new[from_new])

        new_values = jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, start, size), values)
        return Ranking(
            priority,
            jnp.where(kept, best.row[from_best], (first_row + start + from_new).astype(jnp.int32)),
            pick(best.weight, w) if carry_weights else None,
            jax.tree.map(pick, best.values, new_values),
        )

    chunk = int(min(length, max(_RANK_CHUNK_ROWS, keep)))
    num_full, tail = divmod(length, chunk)
    ranking = lax.fori_loop(0, num_full, lambda i, b: merge(b, i * chunk, chunk), ranking)
    if tail:
        ranking = merge(ranking, num_full * chunk, tail)
    return ranking


def _top(priority: Array, rows: Array, weight: Array, size: int) -> tuple[Array, Array, Array]:
    # top_k puts the lower index first among equal values; every list merged here holds lower row
    # numbers at lower indices, so ties go to the lower row number whatever the chunking.
    priority, index = lax.top_k(priority, size)
    return priority, rows[index], weight[index]


def ranked_sample(ranking: Ranking, size: int) -> tuple[Array, Array, Array]:
    """The ``size`` best rows of a final ranking in row order: ``(order, rows, weights)``.

    ``order`` sorts the ranking's first ``size`` entries by row number; the weights are
    ``max(w, tau)`` (0 for weight 0), ``tau`` the ``(size + 1)``-th priority, so that weighted sums
    over the sample estimate sums over all rows without bias (1 for every row without weights).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> ranking = empty_ranking(2, jnp.float32, False)
        >>> ranking = rank_rows(ranking, jax.random.key(0), 10, None, 0)
        >>> order, rows, weights = ranked_sample(ranking, 2)
        >>> bool(rows[0] < rows[1])
        True
    """
    weight = ranking.weight
    if weight is None:
        weight = jnp.ones_like(ranking.priority)
    tau = ranking.priority[size]
    order = jnp.argsort(ranking.row[:size])
    w = weight[:size][order]
    return order, ranking.row[:size][order], jnp.where(w > 0, jnp.maximum(w, tau), 0)


def sample_rows(
    key: Array,
    x: Any,
    row_weights: Array | None,
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
        row_weights: per-row weights, or ``None`` for 1 each; rows of weight 0 are drawn only when
            fewer than ``size + 1`` rows have a positive weight, and then keep weight 0.
        size: rows in the sample; ``x`` must hold more (over all devices).
        weighted: return weights (default: whether ``row_weights`` were given). Without them the
            rows stand for equal shares of the data.
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
    weighted = row_weights is not None if weighted is None else weighted
    n = num_rows(x)
    # The weights ride along only when they differ between rows; without them every row has 1.
    ranking = empty_ranking(size, _priority_dtype(x, row_weights), row_weights is not None)
    ranking = rank_rows(ranking, key, n, row_weights, row_offset)
    if axis_name is not None:
        weight = ranking.weight
        if weight is None:
            weight = jnp.ones_like(ranking.priority)
        # Devices in axis order hold increasing row numbers, so the gathered lists keep the rule.
        gathered = [lax.all_gather(a, axis_name, tiled=True) for a in (*ranking[:2], weight)]
        ranking = Ranking(*_top(*gathered, size + 1))

    _, rows, sample_weights = ranked_sample(ranking, size)
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
    return sample, sample_weights if weighted else None


__all__ = [
    "SAMPLE_BYTES",
    "SAMPLE_ROWS",
    "Ranking",
    "empty_ranking",
    "rank_rows",
    "ranked_sample",
    "sample_rows",
    "sample_size",
]
