"""Fits over data that does not fit in memory: the kernel's step, once per pass, on streamed rows.

:func:`fit_stream` runs the same kernel as :func:`jaxem.fit` (any M-step, SQUAREM, every feature
that travels in the rows), one compiled step per pass over the data, on a memory-mapped ``.npy``
file, an array, or any re-iterable source of chunks. The rows are
:class:`jaxem.core.rows.StreamedRows`: the program reads each block of rows from the host when its
turn comes, while a host thread reads the next block, so a pass takes about as long as the slower
of reading and computing and memory does not grow with N. From a PRNG key, one more pass draws the
sample :func:`jaxem.fit` would initialise from (the same rows, whatever the chunking). The kernel's
state is written through :func:`jaxem.io.save_checkpoint` after every pass, and a fit resumes from
it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxem import io
from jaxem.core.algorithm import EM
from jaxem.core.estep import num_rows
from jaxem.core.inputs import check_iterations, first_row, is_key
from jaxem.core.kernel import Status
from jaxem.core.precision import jit
from jaxem.core.rows import StreamedRows, chunk_width, default_chunk_size, open_source
from jaxem.drivers.fit import FitResult, report_progress, start_params, take_lane

Array = jax.Array
Chunk = tuple[Any, Any]

# Rows per block read from a source that does not say (an array or a .npy file without
# chunk_size): large reads keep the per-block cost of a host call small beside the block's work.
DEFAULT_READ_ROWS = 1 << 16


def as_chunk(item: Any) -> Chunk:
    """A chunk from a source: ``(x, row_weights)`` for a pair, ``(x, None)`` otherwise."""
    if isinstance(item, tuple) and len(item) == 2:
        return item
    return item, None


def _open(source: Any) -> Any:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix != ".npy":
            raise ValueError(f"{path} is not a .npy file: save the data with numpy.save.")
        return np.load(path, mmap_mode="r")
    return source


def _is_array_tree(source: Any) -> bool:
    leaves = jax.tree.leaves(source)
    return (
        bool(leaves)
        and not isinstance(source, list)
        and all(isinstance(leaf, (np.ndarray, jax.Array)) for leaf in leaves)
    )


class HostReader:
    """Reads fixed-size blocks of rows for :class:`jaxem.core.rows.StreamedRows`, converting them
    to the fit's dtype, checking them on their first read, and reading the next block in a
    thread while the program computes.

    A failure while reading (an error of the source, non-finite values, an interrupt) is kept and
    raised by :meth:`raise_failure` in the calling thread once the program returns.
    """

    def __init__(
        self,
        read: Callable[[int, int], Chunk],
        example: Any,
        num_rows_total: int,
        read_size: int,
        weighted: bool,
        check: bool,
        allow_missing: bool,
    ) -> None:
        self._read = read
        self.example = example  # one row (or a few), converted to the fit's dtype
        self.num_rows = num_rows_total
        self.read_size = read_size
        self.dtype = np.dtype(jax.tree.leaves(example)[0].dtype)
        self.weighted = weighted
        self.num_blocks = -(-num_rows_total // read_size)
        self._checked = np.zeros(self.num_blocks, bool) if check else np.ones(self.num_blocks, bool)
        self._allow_missing = allow_missing
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._ahead: tuple[int, Future] | None = None
        self.failure: BaseException | None = None
        self.on_read: Callable[[], None] | None = None

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _size(self, index: int) -> int:
        return min(self.read_size, self.num_rows - index * self.read_size)

    def _load(self, index: int) -> Chunk:
        x, row_weights = self._read(index, self._size(index))
        x = jax.tree.map(lambda a: np.asarray(a, self.dtype), x)
        if self.weighted:
            row_weights = np.ones(num_rows(x), self.dtype) if row_weights is None else row_weights
            row_weights = np.asarray(row_weights, self.dtype)
        return x, row_weights

    def _check(self, index: int, chunk: Chunk) -> None:
        x, row_weights = chunk
        for leaf in jax.tree.leaves(x):
            bad = np.isinf(leaf) if self._allow_missing else ~np.isfinite(leaf)
            if np.any(bad):
                raise ValueError(
                    f"Chunk {index} of the source contains "
                    f"{'infinity' if self._allow_missing else 'NaN or infinity'}: remove or "
                    "impute those values before fitting."
                )
        if row_weights is not None and not np.all(np.isfinite(row_weights) & (row_weights >= 0)):
            raise ValueError(f"The weights of chunk {index} must be finite and non-negative.")

    def read(self, index: int, size: int) -> Chunk:
        """Block ``index`` (``size`` rows), from the read ahead when it is the one prepared."""
        with self._lock:
            try:
                if self.failure is not None:
                    raise self.failure
                ahead, self._ahead = self._ahead, None
                chunk = ahead[1].result() if ahead is not None and ahead[0] == index else None
                if chunk is None:
                    chunk = self._load(index)
                if not self._checked[index]:
                    self._check(index, chunk)
                    self._checked[index] = True
                if index + 1 < self.num_blocks:
                    self._ahead = (index + 1, self._pool.submit(self._load, index + 1))
                if self.on_read is not None:
                    self.on_read()
                return chunk
            except BaseException as failure:  # raised again in the calling thread
                if self.failure is None:
                    self.failure = failure
                return self._filler(size)

    def _filler(self, size: int) -> Chunk:
        x = jax.tree.map(lambda a: np.zeros((size, *a.shape[1:]), self.dtype), self.example)
        return x, np.zeros(size, self.dtype) if self.weighted else None

    def raise_failure(self) -> None:
        """Raise the failure of a read, if there was one (the program's result is then void)."""
        failure, self.failure = self.failure, None
        if failure is not None:
            self._ahead = None
            raise failure


def _array_reader(x: Any, row_weights: Any, block: int) -> Callable[[int, int], Chunk]:
    """Blocks of ``block`` rows sliced from arrays (memory-mapped or not)."""

    def read(index: int, size: int) -> Chunk:
        rows = slice(index * block, index * block + size)
        block_weights = None if row_weights is None else row_weights[rows]
        return jax.tree.map(lambda a: a[rows], x), block_weights

    return read


class _Rechunked:
    """Blocks of ``read_size`` rows cut from a re-iterable source of chunks of any size."""

    def __init__(self, chunks: Callable[[], Iterator[Any]], read_size: int, weighted: bool):
        self._chunks = chunks
        self._read_size = read_size
        self._weighted = weighted
        self._iterator: Iterator[Any] | None = None
        self._next = 0
        self._pending: list[Chunk] = []

    def __call__(self, index: int, size: int) -> Chunk:
        if self._iterator is None or index != self._next:
            # A new pass (or a block out of order): read from the start, skipping to the block.
            self._iterator, self._next, self._pending = iter(self._chunks()), 0, []
            while self._next < index:
                self._take(self._read_size)
                self._next += 1
        self._next += 1
        return self._take(size)

    def _take(self, size: int) -> Chunk:
        have = sum(num_rows(x) for x, _ in self._pending)
        while have < size:
            x, w = as_chunk(next(self._iterator))
            x = jax.tree.map(np.asarray, x)
            if self._weighted and w is None:
                w = np.ones(num_rows(x))
            self._pending.append((x, w))
            have += num_rows(x)
        xs = jax.tree.map(lambda *a: np.concatenate(a), *[x for x, _ in self._pending])
        ws = np.concatenate([w for _, w in self._pending]) if self._weighted else None
        head = (jax.tree.map(lambda a: a[:size], xs), None if ws is None else ws[:size])
        rest = (jax.tree.map(lambda a: a[size:], xs), None if ws is None else ws[size:])
        self._pending = [rest] if num_rows(rest[0]) else []
        return head


def _scan_chunks(chunks: Callable[[], Iterator[Any]], allow_missing: bool) -> tuple:
    """One host pass over a source of chunks: its rows, weight total, whether it has weights, a
    first chunk (for the dtype), and a check of every value."""
    total, weight_sum, weighted, first = 0, 0.0, False, None
    for index, item in enumerate(chunks()):
        x, w = as_chunk(item)
        x = jax.tree.map(np.asarray, x)
        n = num_rows(x)
        for leaf in jax.tree.leaves(x):
            bad = np.isinf(leaf) if allow_missing else ~np.isfinite(leaf)
            if np.any(bad):
                raise ValueError(
                    f"Chunk {index} of the source contains "
                    f"{'infinity' if allow_missing else 'NaN or infinity'}: remove or impute "
                    "those values before fitting."
                )
        if w is not None:
            w = np.asarray(w, dtype=float)
            if w.shape != (n,) or np.any(~np.isfinite(w)) or np.any(w < 0):
                raise ValueError(
                    f"The weights of chunk {index} must be finite and non-negative, one per row."
                )
            weighted = True
        weight_sum += float(np.sum(w)) if w is not None else float(n)
        total += n
        if first is None and n:
            first = (jax.tree.map(lambda a: a[:1], x), None if w is None else w[:1])
    if first is None:
        raise ValueError("The source yielded no chunks: it must yield at least one.")
    return total, weight_sum, weighted, first


def make_reader(
    source: Any,
    row_weights: Any,
    read_size: int | None,
    model: Any,
) -> tuple[HostReader, float]:
    """A :class:`HostReader` over ``source`` (a ``.npy`` path, an array or a pytree of arrays
    sharing the row axis, a function returning a new iterator of chunks, or a list of chunks),
    and the total row weight."""
    source, row_weights = _open(source), _open(row_weights)
    allow_missing = getattr(model, "handles_missing", False)
    if isinstance(source, Iterator):
        raise ValueError(
            "source is a one-shot iterator, but every EM iteration reads the data again: pass a "
            "function that returns a new iterator of chunks, or a list of chunks."
        )
    if _is_array_tree(source):
        n = num_rows(source)
        if row_weights is not None and np.shape(row_weights) != (n,):
            raise ValueError(
                f"row_weights has shape {np.shape(row_weights)} but x has {n} rows: pass one "
                "weight per row."
            )
        head = jax.tree.map(lambda a: np.asarray(a[:1]), source)
        first_x = first_row(head)
        size = read_size or min(n, DEFAULT_READ_ROWS)
        weighted = row_weights is not None
        weight_sum = float(np.sum(np.asarray(row_weights, np.float64))) if weighted else float(n)
        read = _array_reader(source, row_weights, size)
        check = True
    else:
        if callable(source):
            chunks = lambda: map(as_chunk, source())  # noqa: E731
        elif isinstance(source, Iterable):
            items = list(source) if not isinstance(source, (list, tuple)) else source
            chunks = lambda: map(as_chunk, items)  # noqa: E731
        else:
            raise ValueError(
                f"Cannot read chunks from a {type(source).__name__}: pass an array, a path to a "
                ".npy file, a function that yields chunks (arrays or (x, row_weights) pairs), or a "
                "list of chunks."
            )
        n, weight_sum, weighted, (head, _) = _scan_chunks(chunks, allow_missing)
        first_x = first_row(head)
        size = read_size or n
        read = _Rechunked(chunks, size, weighted)
        check = False  # every value was checked by the scan
    example = jax.tree.map(np.asarray, first_x)
    reader = HostReader(read, example, n, int(min(size, n)), weighted, check, allow_missing)
    return reader, weight_sum


@contextmanager
def streamed_rows(
    source: Any, row_weights: Any, read_size: int | None, model: Any, chunk_size: int | None = None
) -> Iterator[tuple[HostReader, StreamedRows]]:
    """Open ``source`` for the programs run inside the block: its reader, and the
    :class:`jaxem.core.rows.StreamedRows` that read it (blocks of ``read_size`` rows, reduced in
    chunks of ``chunk_size``, by default the in-memory fit's size)."""
    reader, weight_sum = make_reader(source, row_weights, read_size, model)
    try:
        with open_source(reader) as source_id:
            width = chunk_width(model, reader.example)
            yield (
                reader,
                StreamedRows.describe(
                    source_id,
                    jax.tree.map(lambda a: a[0], reader.example),
                    reader.num_rows,
                    reader.read_size,
                    reader.weighted,
                    weight_sum,
                    chunk_size or default_chunk_size(reader.read_size, width),
                ),
            )
    finally:
        reader.close()


# ---- the programs -------------------------------------------------------------------------------


@partial(jit, static_argnames=("kernel",))
def _step(kernel: Any, state: Any, rows: StreamedRows) -> Any:
    return kernel.step(state, rows)[0]


@partial(jit, static_argnames=("kernel",))
def _log_likelihood(kernel: Any, params: Any, rows: StreamedRows) -> Array:
    return kernel.log_likelihood(params, rows)


@partial(jit, static_argnames=("kernel",))
def _init(kernel: Any, params: Any, rows: StreamedRows, tol: Array, max_iter: Array) -> Any:
    return kernel.init(params, rows, tol=tol, max_iter=max_iter)


def _tqdm() -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError as error:
        raise ImportError(
            "progress=True needs tqdm: pip install tqdm (or jaxem[progress])."
        ) from error
    return tqdm


@contextmanager
def _progress_bar(reader: HostReader, progress: bool, description: str) -> Iterator[None]:
    """A tqdm bar over one pass's blocks (nothing without ``progress``)."""
    if not progress:
        yield
        return
    bar = _tqdm()(total=reader.num_blocks, desc=description, unit="block", leave=False)
    reader.on_read = lambda: bar.update(1)
    try:
        yield
    finally:
        reader.on_read = None
        bar.close()


def _run(reader: HostReader, program: Callable[..., Any], *args: Any) -> Any:
    """Run a program that reads the source; raise a failure of the reads if there was one."""
    result = jax.block_until_ready(program(*args))
    reader.raise_failure()
    return result


def fit_stream(
    algo: EM,
    init: Any,
    source: Any,
    row_weights: Any = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = False,
    verbose: int = 0,
) -> FitResult:
    """Exact EM, one pass over the data per iteration, on data read block by block.

    The kernel, the stopping rule and the result are those of :func:`jaxem.fit`: from the same
    initial parameters the result equals it to rounding, for any M-step (gradient M-steps
    included), with SQUAREM, and with any feature that travels in the rows (row weights, missing
    values, labels).

    Args:
        algo: from :func:`jaxem.em`; its ``chunk_size`` (default 65536 rows for an array or a
            file, the whole source otherwise) is the block of rows read at a time; each block is
            reduced in chunks of the in-memory fit's default size.
        init: initial parameters, or a PRNG key: one more pass then draws the sample
            :func:`jaxem.fit` draws from that key on the data in memory (the same rows, whatever
            the chunking; all rows when they are few), so the start does not depend on the rows'
            order.
        source: a path to a ``.npy`` file (memory-mapped), an array (``numpy.memmap`` included) or
            a tuple of arrays sharing the row axis (``(x, labels)``), a function returning a new
            iterator of chunks on each call, or a list of chunks. A chunk is ``x`` or an
            ``(x, row_weights)`` pair (so a labelled chunk is ``((x, labels), row_weights)``), of
            any size.
        row_weights: per-row weights for an array or ``.npy`` source (also a path or memmap).
        max_iter, tol, verbose: as in :func:`jaxem.fit`.
        checkpoint: a path: the kernel's state is saved there (:func:`jaxem.io.save_checkpoint`)
            after every iteration, and a fit started with an existing checkpoint resumes from it
            (stop it at any time; raise ``max_iter`` to go on after it stopped at ``MAX_ITER``).
        progress: a tqdm progress bar per pass (needs tqdm).

    Example:
        >>> import numpy as np, jax, jaxem
        >>> x = np.random.default_rng(0).normal(size=(1000, 2)).astype(np.float32)
        >>> algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2)), chunk_size=256)
        >>> chunks = lambda: (x[i : i + 256] for i in range(0, len(x), 256))
        >>> result = jaxem.streaming.fit_stream(algo, jax.random.key(0), chunks, max_iter=20)
        >>> result.params.weights.shape
        (2,)
    """
    check_iterations(max_iter, tol)
    if progress:
        _tqdm()  # fail before any work when tqdm is missing
    with streamed_rows(source, row_weights, algo.chunk_size, algo.model) as (reader, rows):
        return _fit_stream(
            algo.kernel, init, rows, reader, max_iter, tol, checkpoint, progress, verbose
        )


def _fit_stream(
    kernel: Any,
    init: Any,
    rows: StreamedRows,
    reader: HostReader,
    max_iter: int,
    tol: float,
    checkpoint: Any,
    progress: bool,
    verbose: int,
) -> FitResult:
    dtype = rows.dtype
    tol = jnp.asarray(tol, dtype)
    resume = checkpoint is not None and Path(checkpoint).exists()
    if is_key(init) and resume:  # the structure to load into
        params = jax.eval_shape(
            lambda k: take_lane(start_params(kernel.model, k[None], rows), 0), init
        )
    elif is_key(init):
        with _progress_bar(reader, progress, "Sample pass"):
            params = _run(
                reader, lambda: take_lane(start_params(kernel.model, init[None], rows), 0)
            )
    else:
        params = init
    like = jax.eval_shape(partial(_init, kernel), params, rows, tol, max_iter)
    history = np.full(max(max_iter, 1), np.nan)
    if resume:
        saved = io.load_checkpoint(checkpoint, like)
        state = saved.state._replace(
            tol=tol, max_iter=jnp.asarray(max_iter, saved.state.max_iter.dtype)
        )
        done = int(state.iteration)
        history[: min(done, max_iter)] = saved.history[:max_iter]
        if int(state.status) in (Status.RUNNING, Status.MAX_ITER):
            status = Status.MAX_ITER if done >= max_iter else Status.RUNNING
            state = state._replace(status=jnp.asarray(status, state.status.dtype))
    else:
        state = _init(kernel, params, rows, tol, max_iter)

    while int(state.status) == Status.RUNNING:
        iteration = int(state.iteration)
        with _progress_bar(reader, progress, f"EM pass {iteration + 1}"):
            state = _run(reader, _step, kernel, state, rows)
        history[iteration] = float(state.log_likelihood)
        done = int(state.iteration)
        if verbose and (done % verbose == 0 or int(state.status) != Status.RUNNING):
            report_progress(done, history[iteration])
        if checkpoint is not None:
            io.save_checkpoint(checkpoint, state, history[:done])

    final = _run(reader, _log_likelihood, kernel, state.params, rows)
    bad = int(state.status) == Status.NONFINITE or not np.isfinite(float(final))
    return FitResult(
        state.params,
        jnp.asarray(-np.inf if bad else final, dtype),
        state.iteration,
        state.status,
        jnp.asarray(history[:max_iter], dtype),
    )


__all__ = [
    "DEFAULT_READ_ROWS",
    "HostReader",
    "as_chunk",
    "fit_stream",
    "make_reader",
    "streamed_rows",
]
