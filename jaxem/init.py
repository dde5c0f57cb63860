"""Initialisation strategies in pure JAX: k-means++, k-means (Lloyd), random rows, random
responsibilities, and hard assignment of points to centres.

Every function takes explicit PRNG keys and optional per-point weights, works chunk by chunk
where it passes over the data, and gives the same answer for any ``chunk_size``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxem.core.rows import reduce_chunks

Array = jax.Array

# k-means++ seeds from at most this many rows, so its O(N) distance vector stays bounded; with fewer
# rows it uses all of them.
KMEANS_PLUSPLUS_MAX_ROWS = 1 << 16


def _as_arrays(x: Any, row_weights: Any) -> tuple[Array, Array | None]:
    """JAX arrays of the data and weights: rows are picked by traced indices, which a NumPy array
    cannot take."""
    return jnp.asarray(x), None if row_weights is None else jnp.asarray(row_weights)


def squared_distances(x: Array, centers: Array) -> Array:
    """``|x_n - c_k|^2`` for a chunk ``[C, D]`` and centres ``[K, D]``, shape ``[C, K]``.

    Differences are formed directly (not ``|x|^2 - 2 x.c + |c|^2``) so far-from-origin data keep
    their precision.
    """
    diff = x[:, None, :] - centers[None, :, :]
    return jnp.sum(diff * diff, axis=-1)


def nearest_center(x: Array, centers: Array) -> Array:
    """One-hot responsibilities of the nearest centre, shape ``[C, K]``."""
    labels = jnp.argmin(squared_distances(x, centers), axis=-1)
    return jax.nn.one_hot(labels, centers.shape[0], dtype=x.dtype)


def random_rows(key: Array, x: Array, row_weights: Array | None, num_centers: int) -> Array:
    """``num_centers`` distinct rows drawn with probability proportional to ``row_weights``.

    Drawn one after another without replacement (each next row with probability proportional to the
    weights of the rows not yet drawn), as the ``num_centers`` largest of ``log w + Gumbel`` noise,
    taken by repeated argmax: O(N K), where a random permutation or ``top_k`` sorts all N rows
    (measured 12 ms per draw at N = 2 10^4 on CPU, more than an EM iteration). With fewer rows than
    centres, rows are drawn with replacement.

    Example:
        >>> import jax
        >>> x = jax.numpy.arange(10.0)[:, None]
        >>> random_rows(jax.random.key(0), x, None, 3).shape
        (3, 1)
    """
    x, row_weights = _as_arrays(x, row_weights)
    n = x.shape[0]
    if n < num_centers:
        p = None if row_weights is None else row_weights / jnp.sum(row_weights)
        return x[jax.random.choice(key, n, (num_centers,), replace=True, p=p)]
    score = jax.random.gumbel(key, (n,), x.dtype)
    if row_weights is not None:
        positive = row_weights > 0
        score = jnp.where(positive, score + jnp.log(jnp.where(positive, row_weights, 1)), -jnp.inf)

    def draw(i: Array, carry: tuple[Array, Array]) -> tuple[Array, Array]:
        score, idx = carry
        best = jnp.argmax(score)
        return score.at[best].set(-jnp.inf), idx.at[i].set(best.astype(idx.dtype))

    _, idx = lax.fori_loop(0, num_centers, draw, (score, jnp.zeros((num_centers,), jnp.int32)))
    return x[idx]


def kmeans_plusplus(key: Array, x: Array, row_weights: Array | None, num_centers: int) -> Array:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007) with point weights.

    Each new centre is a row drawn with probability proportional to weight x squared distance to the
    nearest centre so far. With more than ``KMEANS_PLUSPLUS_MAX_ROWS`` rows, seeding uses a weighted
    sample of that many rows.

    Example:
        >>> import jax
        >>> x = jax.random.normal(jax.random.key(0), (100, 2))
        >>> kmeans_plusplus(jax.random.key(1), x, None, 3).shape
        (3, 2)
    """
    x, row_weights = _as_arrays(x, row_weights)
    n = x.shape[0]
    key_sample, key_first, key_rest = jax.random.split(key, 3)
    if n > KMEANS_PLUSPLUS_MAX_ROWS:
        p = None if row_weights is None else row_weights / jnp.sum(row_weights)
        idx = jax.random.choice(key_sample, n, (KMEANS_PLUSPLUS_MAX_ROWS,), replace=True, p=p)
        x, row_weights = x[idx], None
    w = jnp.ones(x.shape[0], x.dtype) if row_weights is None else row_weights.astype(x.dtype)
    log_w = jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1)), -jnp.inf)
    first = x[jax.random.categorical(key_first, log_w)]
    centers = jnp.zeros((num_centers, x.shape[1]), x.dtype).at[0].set(first)
    closest = jnp.sum((x - first) ** 2, axis=-1)

    def body(i: Array, carry: tuple[Array, Array]) -> tuple[Array, Array]:
        centers, closest = carry
        score = jnp.where(
            (w > 0) & (closest > 0), log_w + jnp.log(jnp.where(closest > 0, closest, 1)), -jnp.inf
        )
        # All remaining mass at distance 0 (fewer distinct points than centres): use the weights.
        score = jnp.where(jnp.any(jnp.isfinite(score)), score, log_w)
        new = x[jax.random.categorical(jax.random.fold_in(key_rest, i), score)]
        closest = jnp.minimum(closest, jnp.sum((x - new) ** 2, axis=-1))
        return centers.at[i].set(new), closest

    centers, _ = lax.fori_loop(1, num_centers, body, (centers, closest))
    return centers


def kmeans(
    key: Array,
    x: Array,
    row_weights: Array | None,
    num_centers: int,
    *,
    num_iters: int = 20,
    chunk_size: int | None = None,
) -> Array:
    """Lloyd's k-means from k-means++ seeds, a fixed number of chunked passes.

    An empty cluster keeps its previous centre.
    """
    centers = kmeans_plusplus(key, x, row_weights, num_centers)

    def lloyd(_: Array, centers: Array) -> Array:
        def chunk(xc: Array, wc: Array | None, _rows: Array) -> tuple[Array, Array]:
            onehot = nearest_center(xc, centers)
            if wc is not None:
                onehot = onehot * wc[:, None]
            return onehot.T @ xc, jnp.sum(onehot, axis=0)

        sums, counts = reduce_chunks(chunk, x, row_weights, chunk_size)
        return jnp.where(
            counts[:, None] > 0, sums / jnp.where(counts > 0, counts, 1)[:, None], centers
        )

    return lax.fori_loop(0, num_iters, lloyd, centers)


def random_resp(key: Array, rows: Array, num_components: int, dtype: jnp.dtype) -> Array:
    """Uniform random responsibilities for the given global row numbers, shape ``[C, K]``.

    Each row's draw depends only on ``key`` and its row number, so the result is the same for any
    chunking of the data.
    """
    draw = jax.vmap(
        lambda r: jax.random.uniform(jax.random.fold_in(key, r), (num_components,), dtype)
    )
    u = draw(rows)
    return u / jnp.sum(u, axis=-1, keepdims=True)
