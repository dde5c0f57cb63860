"""Passes over the data: one interface, three places the rows can live.

Everything the EM kernel does with the data is a sum over rows of a per-chunk function: the
E-step's statistics and log-likelihood, Q and its gradient for a gradient M-step, the entropy of the
responsibilities. A *rows* object does that sum, ``rows.reduce(fn)``, and knows the total row
weight, how to draw an initialisation sample, and how to hand the model's prepared rows to ``fn``:

* :class:`Rows` with ``axis_name=None``: the rows are arrays in memory, reduced chunk by chunk
  (``lax.fori_loop`` over ``lax.dynamic_slice``), so memory is O(chunk x K) whatever N is;
* :class:`Rows` with an ``axis_name``: inside ``shard_map``, each device reduces its own shard and
  ``lax.psum`` adds the results over the axis (devices of one host, or of many);
* :class:`StreamedRows`: the rows stay on the host (a memory-mapped file, an iterable of chunks)
  and each chunk is read into the program when its turn comes, by ``jax.pure_callback``, so the
  whole EM step, a gradient M-step's optimizer included, is one compiled program on any backend.

Row weights, missing values (NaN), labels and any other per-row data travel inside the rows (``x``
may be any pytree with a shared leading axis), so every feature reaches every pass. Derivatives
never flow through a reduction: a function that needs a gradient returns it per chunk (see
:func:`jaxem.core.mstep.expected_objective`), which keeps memory bounded and makes the three passes
interchangeable.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxem.core.estep import num_rows
from jaxem.core.subsample import empty_ranking, rank_rows, ranked_sample, sample_rows

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

    Example:
        >>> default_chunk_size(10**6, 168, platform="cpu")
        4096
    """
    platform = platform or jax.default_backend()
    elements = DEFAULT_CHUNK_ELEMENTS if platform == "cpu" else ACCELERATOR_CHUNK_ELEMENTS
    rows = elements / max(width * lanes, 1)
    size = max(256, 1 << max(round(math.log2(rows)), 0))
    if lanes > 1:
        budget = RESTART_CHUNK_ELEMENTS // max(width * lanes, 1)
        size = max(min(size, budget), min(RESTART_CHUNK_ROWS, budget), 256)
    return int(min(num_points, size))


def row_width(x: Any) -> int:
    """Values per row of ``x`` (a pytree whose leaves share the leading axis)."""
    return sum(int(np.prod(np.shape(leaf)[1:], dtype=int)) for leaf in jax.tree.leaves(x))


def chunk_width(model: Any, x: Any) -> int:
    """The per-point width ``default_chunk_size`` sizes chunks by.

    A model, or its component family (``model.components``), may state it as
    ``point_width(values_per_row, dtype)``; otherwise it is the data's values per row times the
    model's number of components (1 when it has none): the ``[C, K, D]`` intermediates of a
    mixture that forms differences to every component.

    Example:
        >>> import jax.numpy as jnp, jaxem
        >>> chunk_width(jaxem.Mixture(jaxem.Poisson(3)), jnp.zeros((1, 5)))
        15
    """
    row = row_width(x)
    for part in (model, getattr(model, "components", None)):
        stated = getattr(part, "point_width", None)
        if stated is not None:
            return int(stated(row, jax.tree.leaves(x)[0].dtype))
    return row * getattr(model, "num_components", 1)


def _slice_rows(tree: Any, start: Array | int, size: int) -> Any:
    return jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, start, size, axis=0), tree)


def add_trees(a: Any, b: Any) -> Any:
    """Leafwise sum of two pytrees of the same structure."""
    return jax.tree.map(jnp.add, a, b)


def reduce_chunks(
    fn: Callable[[Any, Array | None, Array], Any],
    x: Any,
    row_weights: Array | None,
    chunk_size: int | None,
) -> Any:
    """Sum ``fn(x_chunk, weights_chunk, row_index)`` over consecutive chunks of the data.

    ``row_index`` holds the row numbers of the chunk, so a function that draws random numbers
    per row (``jax.random.fold_in(key, row)``) gives the same answer for every chunk size. The
    chunks are sliced from the data itself (no padded copy is made); a last chunk shorter than the
    others is a second trace of ``fn``.

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
        wc = None if row_weights is None else lax.dynamic_slice_in_dim(row_weights, start, length)
        return fn(xc, wc, start + jnp.arange(length))

    if num_full == 1 and tail == 0:
        return fn(x, row_weights, jnp.arange(n))
    total = chunk(0, size)
    if num_full > 1:
        total = lax.fori_loop(
            1, num_full, lambda i, acc: add_trees(acc, chunk(i * size, size)), total
        )
    if tail:
        total = add_trees(total, chunk(num_full * size, tail))
    return total


class RowPass(Protocol):
    """What the kernel needs of the rows, whichever of the three passes holds them."""

    num_rows: int
    weighted: bool

    def reduce(self, fn: Callable[[Any, Array | None, Array], Any]) -> Any: ...

    def total_weight(self, dtype: Any) -> Array: ...

    def prepare(self, model: Any) -> RowPass: ...

    def sample(self, key: Array, size: int) -> tuple[Any, Array | None]: ...

    def all_rows(self) -> tuple[Any, Array | None]: ...


# ---- rows in memory, on one device or sharded ---------------------------------------------------


@partial(
    jax.tree_util.register_dataclass,
    data_fields=["x", "row_weights", "prepared", "row_offset"],
    meta_fields=["chunk_size", "axis_name", "num_rows", "weighted", "shard_rows"],
)
@dataclass(frozen=True)
class Rows:
    """Rows held as arrays: in memory on one device, or (with ``axis_name``) this device's shard.

    Attributes:
        x: the rows, a pytree of arrays sharing the leading axis (this shard's rows when sharded).
        row_weights: a non-negative weight per row, or ``None`` (every row counts once). Padding
            rows of a shard have weight 0.
        prepared: the model's prepared rows (``model.prepare_rows(x)``), handed to reductions in
            place of ``x``; ``None`` until :meth:`prepare` is called, or when the model prepares
            nothing.
        row_offset: the number of this shard's first row in the whole data (0 in memory).
        chunk_size: rows per chunk of every reduction (``None``: one chunk).
        axis_name: the mesh axis the rows are sharded over (``None``: not sharded).
        num_rows: rows in the whole data, padding excluded.
        weighted: whether the user gave row weights (padding alone does not count).
        shard_rows: when sharded, the real rows of each shard (padding excluded), in axis order.

    Example:
        >>> import jax.numpy as jnp
        >>> rows = Rows.in_memory(jnp.arange(6.0)[:, None], chunk_size=4)
        >>> float(rows.reduce(lambda x, w, i: x.sum())), float(rows.total_weight(jnp.float32))
        (15.0, 6.0)
    """

    x: Any
    row_weights: Array | None = None
    prepared: Any = None
    row_offset: Array | None = None
    chunk_size: int | None = None
    axis_name: str | None = None
    num_rows: int = 0
    weighted: bool = False
    shard_rows: tuple[int, ...] | None = None

    @classmethod
    def in_memory(
        cls, x: Any, row_weights: Array | None = None, chunk_size: int | None = None
    ) -> Rows:
        """Rows held whole on one device."""
        return cls(
            x,
            row_weights,
            chunk_size=chunk_size,
            num_rows=num_rows(x),
            weighted=row_weights is not None,
        )

    @property
    def dtype(self) -> Any:
        """The dtype of the rows (of the first leaf of ``x``), which a fit runs in."""
        return jax.tree.leaves(self.x)[0].dtype

    def _offset(self) -> Array | int:
        return 0 if self.row_offset is None else self.row_offset

    def reduce(self, fn: Callable[[Any, Array | None, Array], Any]) -> Any:
        """``sum over rows of fn(x_chunk, weights_chunk, row_index)`` (over every shard)."""
        source = self.x if self.prepared is None else self.prepared
        offset = self._offset()
        total = reduce_chunks(
            lambda xc, wc, idx: fn(xc, wc, idx + offset), source, self.row_weights, self.chunk_size
        )
        return total if self.axis_name is None else lax.psum(total, self.axis_name)

    def total_weight(self, dtype: Any) -> Array:
        """The number of rows, or the sum of their weights (over every shard)."""
        if self.row_weights is None:
            return jnp.asarray(self.num_rows, dtype)
        total = jnp.sum(self.row_weights).astype(dtype)
        return total if self.axis_name is None else lax.psum(total, self.axis_name)

    def prepare(self, model: Any) -> Rows:
        """These rows with ``model.prepare_rows`` applied once (see :mod:`jaxem.core.model`)."""
        prepare = getattr(model, "prepare_rows", None)
        if prepare is None or self.prepared is not None:
            return self
        prepared = prepare(self.x)
        return self if prepared is self.x else dataclasses.replace(self, prepared=prepared)

    def sample(self, key: Array, size: int) -> tuple[Any, Array | None]:
        """``size`` rows by priority sampling (see :mod:`jaxem.core.subsample`), on every shard."""
        return sample_rows(
            key,
            self.x,
            self.row_weights,
            size,
            weighted=self.weighted,
            axis_name=self.axis_name,
            row_offset=self._offset(),
        )

    def all_rows(self) -> tuple[Any, Array | None]:
        """Every real row in order (gathered from the shards), and the user's weights."""
        if self.axis_name is None:
            return self.x, self.row_weights if self.weighted else None
        length = num_rows(self.x)
        # Padding sits at the end of each shard: the real rows' positions in the gathered array.
        index = np.concatenate(
            [s * length + np.arange(count) for s, count in enumerate(self.shard_rows)]
        )

        def gather(a: Array) -> Array:
            return lax.all_gather(a, self.axis_name, tiled=True)[index]

        x = jax.tree.map(gather, self.x)
        return x, gather(self.row_weights) if self.weighted else None

    def with_chunk_size(self, chunk_size: int | None) -> Rows:
        return dataclasses.replace(self, chunk_size=chunk_size)


# ---- rows streamed from the host ----------------------------------------------------------------


class ChunkSource(Protocol):
    """A host-side reader of fixed-size blocks of rows, for :class:`StreamedRows`.

    ``read(index, size)`` returns the rows ``index * read_size`` onwards (``size`` of them) as
    NumPy arrays of the declared dtypes: ``(x, row_weights)`` with ``row_weights`` ``None`` when
    the source has none. It may be called from a thread of the runtime, in any order.
    """

    def read(self, index: int, size: int) -> tuple[Any, np.ndarray | None]: ...


_OPEN_SOURCES: dict[int, ChunkSource] = {}
_SOURCE_IDS = itertools.count(1)
_SOURCES_LOCK = threading.Lock()


@contextmanager
def open_source(source: ChunkSource) -> Iterator[int]:
    """Make ``source`` readable by compiled programs for the duration of the block; yields its id.

    The compiled programs name a source by this id (an operand), so programs compiled for one
    source serve every other source of the same shapes.
    """
    with _SOURCES_LOCK:
        source_id = next(_SOURCE_IDS) % (1 << 31)
        _OPEN_SOURCES[source_id] = source
    try:
        yield source_id
    finally:
        with _SOURCES_LOCK:
            _OPEN_SOURCES.pop(source_id, None)


def _read_block(size: int, source_id: Any, index: Any, after: Any = None) -> Any:
    del after  # an operand only so that the read waits for it
    source = _OPEN_SOURCES.get(int(source_id))
    if source is None:
        raise RuntimeError("A streamed source was read after its fit ended.")
    return source.read(int(index), size)


@partial(
    jax.tree_util.register_dataclass,
    data_fields=["source_id", "num_reads", "weight_sum"],
    meta_fields=["read_size", "tail", "row_shapes", "weighted", "chunk_size", "num_rows"],
)
@dataclass(frozen=True)
class StreamedRows:
    """Rows read from a host source block by block while the program runs.

    Attributes:
        source_id: the id :func:`open_source` gave the source (an operand, so one compiled program
            serves every source of the same shapes).
        num_reads: the number of full blocks of ``read_size`` rows (an operand: the loop over
            blocks has a run-time length, so the compiler neither unrolls nor hoists the reads).
        weight_sum: the sum of the row weights (the number of rows without weights).
        read_size: rows per block read from the source.
        tail: rows of the last, shorter block (0: none).
        row_shapes: ``(treedef, ((shape, dtype), ...))`` of one row of ``x``.
        weighted: whether the source holds row weights.
        chunk_size: rows per chunk of the reductions within a block.
        num_rows: rows in the whole data.
    """

    source_id: Array
    num_reads: Array
    weight_sum: Array
    read_size: int
    tail: int
    row_shapes: tuple
    weighted: bool
    chunk_size: int
    num_rows: int

    @classmethod
    def describe(
        cls,
        source_id: int,
        row_example: Any,
        num_rows_total: int,
        read_size: int,
        weighted: bool,
        weight_sum: float,
        chunk_size: int,
    ) -> StreamedRows:
        """Streamed rows of ``num_rows_total`` rows shaped like ``row_example`` (one row, a pytree
        of arrays or shape-dtype structs)."""
        leaves, treedef = jax.tree.flatten(row_example)
        shapes = tuple((tuple(np.shape(leaf)), np.dtype(leaf.dtype).name) for leaf in leaves)
        dtype = jnp.dtype(shapes[0][1]) if shapes else jnp.result_type(float)
        return cls(
            jnp.asarray(source_id, jnp.int32),
            jnp.asarray(num_rows_total // read_size, jnp.int32),
            jnp.asarray(weight_sum, dtype),
            int(read_size),
            int(num_rows_total % read_size),
            (treedef, shapes),
            bool(weighted),
            int(min(chunk_size, read_size)),
            int(num_rows_total),
        )

    @property
    def dtype(self) -> Any:
        """The dtype of the rows (of the first leaf of ``x``), which a fit runs in."""
        return jnp.dtype(self.row_shapes[1][0][1])

    def _block(self, index: Array, size: int, after: Any = None) -> tuple[Any, Array | None]:
        """Block ``index`` of ``size`` rows, read once ``after`` (any pytree) is computed: a read
        is a callback, which XLA runs as soon as its operands are ready, and a source of chunks
        must be read in order."""
        treedef, shapes = self.row_shapes
        leaves = [jax.ShapeDtypeStruct((size, *shape), dtype) for shape, dtype in shapes]
        row_weights = jax.ShapeDtypeStruct((size,), shapes[0][1]) if self.weighted else None
        result = (jax.tree.unflatten(treedef, leaves), row_weights)
        waited = jax.tree.leaves(after)
        wait = (jnp.ravel(waited[0])[:1],) if waited else ()
        return jax.pure_callback(
            partial(_read_block, size),
            result,
            self.source_id,
            index,
            *wait,
            vmap_method="sequential",
        )

    def _fold(self, step: Callable[[Any, Any, Array | None, Array, int], Any], init: Any) -> Any:
        """``init`` folded with ``step(carry, x_block, weights_block, first_row, size)`` over the
        blocks in order."""

        def full(i: Array, carry: Any) -> Any:
            xb, wb = self._block(i, self.read_size)
            return step(carry, xb, wb, i * self.read_size, self.read_size)

        carry = lax.fori_loop(0, self.num_reads, full, init)
        if self.tail:
            xb, wb = self._block(self.num_reads, self.tail, after=carry)
            carry = step(carry, xb, wb, self.num_reads * self.read_size, self.tail)
        return carry

    def reduce(self, fn: Callable[[Any, Array | None, Array], Any]) -> Any:
        """``sum over rows of fn(x_chunk, weights_chunk, row_index)``, block by block."""

        def block_total(xb: Any, wb: Array | None, first: Array, size: int) -> Any:
            return reduce_chunks(
                lambda xc, wc, idx: fn(xc, wc, idx + first), xb, wb, min(self.chunk_size, size)
            )

        def add_block(total: Any, xb: Any, wb: Array | None, first: Array, size: int) -> Any:
            return add_trees(total, block_total(xb, wb, first, size))

        # The running total starts at zero, so that every read is inside the fold's loop (or waits
        # for it): the loop runs once all it closes over (this pass's parameters, computed by the
        # last pass) is ready, so the passes read the source in turn.
        shapes = jax.eval_shape(
            lambda: block_total(
                *self._block(jnp.asarray(0, jnp.int32), self.read_size), 0, self.read_size
            )
        )
        zeros = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes)
        return self._fold(add_block, zeros)

    def total_weight(self, dtype: Any) -> Array:
        return self.weight_sum.astype(dtype)

    def prepare(self, model: Any) -> StreamedRows:
        """Unchanged: a block's prepared rows would be built at every pass anyway."""
        del model
        return self

    def _ranking(self, key: Array, size: int) -> Any:
        _, shapes = self.row_shapes
        treedef = self.row_shapes[0]
        dtype = shapes[0][1]
        row = jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(shape, d) for shape, d in shapes])
        # Weights of 1 give the same priorities as none: carry them always.
        ranking = empty_ranking(size, dtype, True, row)

        def step(ranking: Any, xb: Any, wb: Array | None, first: Array, length: int) -> Any:
            w = jnp.ones((length,), dtype) if wb is None else wb
            return rank_rows(ranking, key, length, w, first, values=xb)

        return self._fold(step, ranking)

    def sample(self, key: Array, size: int) -> tuple[Any, Array | None]:
        """The sample :meth:`Rows.sample` draws from the same rows, in one pass."""
        ranking = self._ranking(key, size)
        order, _, sample_weights = ranked_sample(ranking, size)
        sample = jax.tree.map(lambda a: a[:size][order], ranking.values)
        return sample, sample_weights if self.weighted else None

    def all_rows(self) -> tuple[Any, Array | None]:
        """Every row in order (for data of at most a sample's size), in one pass."""
        ranking = self._ranking(jax.random.key(0), self.num_rows)
        # Every row is in the ranking, after the placeholder (row -1): sort by row number.
        order = jnp.argsort(ranking.row)[-self.num_rows :]
        x = jax.tree.map(lambda a: a[order], ranking.values)
        return x, ranking.weight[order] if self.weighted else None


def initial_params(model: Any, key: Array, rows: Any, size: int) -> Any:
    """The one start from a key, for every pass: ``model.init`` on every row when there are at
    most ``size``, else on a priority sample of ``size`` rows (see :mod:`jaxem.core.subsample`).

    The sample is the same rows whichever pass holds the data and however it is chunked, sharded
    or read, so every driver starts from the same parameters for the same key.

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (100, 2))
        >>> model = jaxem.Mixture(jaxem.Gaussian(2))
        >>> initial_params(model, jax.random.key(1), Rows.in_memory(x), 4096).weights.shape
        (2,)
    """
    if rows.num_rows <= size:
        x, row_weights = rows.all_rows()
        return model.init(key, x, row_weights)
    key_sample, key_init = jax.random.split(key)
    sample, sample_weights = rows.sample(key_sample, size)
    return model.init(key_init, sample, sample_weights)


__all__ = [
    "ACCELERATOR_CHUNK_ELEMENTS",
    "DEFAULT_CHUNK_ELEMENTS",
    "RESTART_CHUNK_ELEMENTS",
    "RESTART_CHUNK_ROWS",
    "ChunkSource",
    "RowPass",
    "Rows",
    "StreamedRows",
    "add_trees",
    "chunk_width",
    "default_chunk_size",
    "initial_params",
    "open_source",
    "reduce_chunks",
    "row_width",
]
