"""Online EM drivers: the online kernel stepped over mini-batches.

In memory, the mini-batches are drawn by shuffling the rows at every epoch and the whole run is one
jitted ``lax.scan``; on a mesh, the same batches (the same permutations) are each sharded over the
devices, their statistics added with ``psum``, so the run equals the one-device run to rounding;
from a stream (a ``.npy`` file, a function returning chunks, a list of chunks), the batches are the
stream's blocks of ``batch_size`` rows in order, read on the host one after the other.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxem.core.estep import num_rows
from jaxem.core.inputs import is_key, model_data
from jaxem.core.kernel import EMKernel, Status, all_finite
from jaxem.core.online import OnlineEM, OnlineState
from jaxem.core.precision import jit
from jaxem.core.rows import Rows, chunk_width, default_chunk_size
from jaxem.drivers.fit import FitResult, start_params, take_lane
from jaxem.drivers.sharded import DATA_AXIS, ShardLayout, place_rows
from jaxem.drivers.stream import streamed_rows

Array = jax.Array


def _batch_rows(
    x: Any, row_weights: Array | None, rows_index: Array, chunk_size: int | None
) -> Rows:
    xb = jax.tree.map(lambda a: a[rows_index], x)
    wb = None if row_weights is None else row_weights[rows_index]
    return Rows.in_memory(xb, wb, chunk_size)


def _first_batch(key: Array, n: int, batch_size: int, num_epochs: int) -> Array:
    # The first step fixes the state's structure for the scan; its batch has a key of its own.
    return jax.random.permutation(jax.random.fold_in(key, num_epochs), n)[:batch_size]


def _epoch_order(key: Array, epoch: Any, n: int) -> Array:
    return jax.random.permutation(jax.random.fold_in(key, epoch), n)


@partial(jit, static_argnames=("online", "batch_size", "num_epochs", "chunk_size"))
def _epochs(online, state, x, row_weights, key, batch_size, num_epochs, chunk_size):
    n = num_rows(x)
    per_epoch = n // batch_size

    def epoch(state: OnlineState, e: Array) -> tuple[OnlineState, Array]:
        order = _epoch_order(key, e, n)

        def batch(state: OnlineState, b: Array) -> tuple[OnlineState, Array]:
            index = lax.dynamic_slice_in_dim(order, b * batch_size, batch_size)
            state, info = online.step(state, _batch_rows(x, row_weights, index, chunk_size))
            return state, info.log_likelihood

        return lax.scan(batch, state, jnp.arange(per_epoch))

    if state.stats is None:
        first = _first_batch(key, n, batch_size, num_epochs)
        state, _ = online.step(state, _batch_rows(x, row_weights, first, chunk_size))
    state, log_likelihoods = lax.scan(epoch, state, jnp.arange(num_epochs))
    return state, log_likelihoods.reshape(-1)


@partial(jit, static_argnames=("online", "mesh", "layout"))
def _sharded_step(online, mesh, layout, state, x, row_weights, offsets):
    def local(state: OnlineState, x: Any, row_weights: Array, offsets: Array) -> Any:
        new, info = online.step(state, layout.rows(x, row_weights, offsets))
        return new, info.log_likelihood

    specs = (P(), P(DATA_AXIS), P(DATA_AXIS), P(DATA_AXIS))
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P(), check_vma=False)(
        state, x, row_weights, offsets
    )


@partial(jit, static_argnames=("online", "chunk_size"))
def _step(online, state, x, row_weights, chunk_size):
    new, info = online.step(state, Rows.in_memory(x, row_weights, chunk_size))
    return new, info.log_likelihood


@partial(jit, static_argnames=("model",))
def _log_likelihood(model: Any, params: Any, rows: Any) -> Array:
    return EMKernel(model).log_likelihood(params, rows)


def _result(state: OnlineState, log_likelihood: Array, history: Array) -> FitResult:
    finite = jnp.isfinite(log_likelihood) & all_finite(state.params)
    status = jnp.where(finite, Status.MAX_ITER, Status.NONFINITE)
    return FitResult(
        state.params, jnp.where(finite, log_likelihood, -jnp.inf), state.count, status, history
    )


def _check_batches(batch_size: Any, num_epochs: Any, n: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= n:
        raise ValueError(
            f"batch_size must be an integer in [1, {n}] (the rows of x), got {batch_size!r}."
        )
    if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 1:
        raise ValueError(f"num_epochs must be a positive integer, got {num_epochs!r}.")


def fit_online(
    online: OnlineEM,
    init: Any,
    x: Any,
    row_weights: Any = None,
    *,
    key: Array | None = None,
    batch_size: int = 1024,
    num_epochs: int = 1,
    chunk_size: int | None = None,
    mesh: Mesh | None = None,
) -> tuple[FitResult, OnlineState]:
    """Online EM over mini-batches: shuffled from an array, or in order from a stream.

    A fast first pass: pass ``result.params`` to :func:`jaxem.fit` to finish with exact EM.

    Args:
        online: an :class:`OnlineEM`.
        init: initial parameters, a PRNG key (the one start every driver draws) or an
            :class:`OnlineState` to go on from.
        x: an array (or a pytree of arrays sharing the row axis), or a stream as
            :func:`jaxem.streaming.fit_stream` takes it (a ``.npy`` path, a function returning a
            new iterator of chunks, a list of chunks).
        row_weights: optional weight per row (for an array or ``.npy`` source).
        key: PRNG key of the shuffles (arrays only; a stream is read in order).
        batch_size: rows per mini-batch; an epoch over an array runs ``N // batch_size`` batches
            of a fresh permutation, so the rows left over in one epoch are drawn in others; a
            stream's epoch is its blocks of ``batch_size`` rows (the last may be shorter).
        num_epochs: passes over the data.
        chunk_size: rows per chunk within a batch, and of the final pass.
        mesh: a device mesh (:func:`jaxem.parallel.data_mesh`): each batch of an array is sharded
            over its data axis and the statistics added across devices; the batches are the
            one-device run's, so the result equals it to rounding.

    Returns:
        ``(result, state)``: a :class:`jaxem.FitResult` whose ``log_likelihood`` is the total
        log-likelihood of all the data at the final parameters and whose ``history`` holds each
        mini-batch's total log-likelihood before its update; and the final :class:`OnlineState`.

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (2000, 2))
        >>> online = jaxem.streaming.OnlineEM(jaxem.Mixture(jaxem.Gaussian(2)))
        >>> result, state = jaxem.streaming.fit_online(
        ...     online, jax.random.key(1), x, key=jax.random.key(2), batch_size=200)
        >>> int(result.num_iters)
        11
    """
    arrays = (
        all(isinstance(leaf, (np.ndarray, jax.Array)) for leaf in jax.tree.leaves(x))
        and not isinstance(x, list)
        and bool(jax.tree.leaves(x))
    )
    if not arrays:
        if mesh is not None:
            raise ValueError(
                "fit_online with a mesh shards mini-batches of an array: pass x as an array "
                "(a stream is read on one host, block by block)."
            )
        return _fit_online_stream(online, init, x, row_weights, batch_size, num_epochs, chunk_size)
    if key is None:
        raise ValueError("fit_online on an array needs key=, the PRNG key of the shuffles.")
    x, row_weights = model_data(online.model, x, row_weights)
    n = num_rows(x)
    _check_batches(batch_size, num_epochs, n)
    size = chunk_size or default_chunk_size(n, chunk_width(online.model, x))
    rows = Rows.in_memory(x, row_weights, size)
    state = _initial_state(online, init, rows)
    if mesh is None:
        state, history = _epochs(
            online, state, x, row_weights, key, batch_size, num_epochs, chunk_size
        )
    else:
        state, history = _sharded_epochs(
            online, state, x, row_weights, key, batch_size, num_epochs, chunk_size, mesh
        )
    return _result(state, _log_likelihood(online.model, state.params, rows), history), state


def _initial_state(online: OnlineEM, init: Any, rows: Any) -> OnlineState:
    if isinstance(init, OnlineState):
        return init
    if is_key(init):
        init = take_lane(start_params(online.model, init[None], rows), 0)
    return online.init(init)


def _sharded_epochs(
    online: OnlineEM,
    state: OnlineState,
    x: Any,
    row_weights: Array | None,
    key: Array,
    batch_size: int,
    num_epochs: int,
    chunk_size: int | None,
    mesh: Mesh,
) -> tuple[OnlineState, Array]:
    n = num_rows(x)
    host_x = jax.tree.map(np.asarray, x)
    host_w = None if row_weights is None else np.asarray(row_weights)

    def run(state: OnlineState, index: np.ndarray) -> tuple[OnlineState, Array]:
        placed = place_rows(
            jax.tree.map(lambda a: a[index], host_x),
            None if host_w is None else host_w[index],
            mesh,
        )
        layout = ShardLayout(placed.num_real_rows, placed.shard_rows, placed.weighted, chunk_size)
        return _sharded_step(
            online, mesh, layout, state, placed.x, placed.row_weights, placed.row_offsets
        )

    if state.stats is None:
        state, _ = run(state, np.asarray(_first_batch(key, n, batch_size, num_epochs)))
    history = []
    for epoch in range(num_epochs):
        order = np.asarray(_epoch_order(key, epoch, n))
        for b in range(n // batch_size):
            state, log_likelihood = run(state, order[b * batch_size : (b + 1) * batch_size])
            history.append(log_likelihood)
    return state, jnp.stack(history)


def _fit_online_stream(
    online: OnlineEM,
    init: Any,
    source: Any,
    row_weights: Any,
    batch_size: int,
    num_epochs: int,
    chunk_size: int | None,
) -> tuple[FitResult, OnlineState]:
    model = online.model
    with streamed_rows(source, row_weights, batch_size, model, chunk_size) as (reader, rows):
        _check_batches(batch_size, num_epochs, reader.num_rows)
        if not isinstance(init, OnlineState):
            init = _initial_state(online, init, rows)
            reader.raise_failure()
        state, history = init, []
        for _ in range(num_epochs):
            for block in range(reader.num_blocks):
                xb, wb = reader.read(block, reader.read_size)
                reader.raise_failure()
                state, log_likelihood = _step(online, state, xb, wb, rows.chunk_size)
                history.append(log_likelihood)
        log_likelihood = _log_likelihood(model, state.params, rows)
        reader.raise_failure()
    return _result(state, log_likelihood, jnp.stack(history)), state


__all__ = ["fit_online"]
