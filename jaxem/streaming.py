"""Fits over data that does not fit in memory, and online (stepwise) EM.

:func:`fit_stream` runs the same exact EM as :func:`jaxem.fit`, one pass over the data per
iteration, on a memory-mapped ``.npy`` file, an array, or any re-iterable source of chunks. The
host reads chunk ``i + 1`` and sends it to the device while the device reduces chunk ``i`` (double
buffering), so a pass takes as long as the slower of reading and computing. From a PRNG key, one
more pass draws the sample :func:`jaxem.fit` would initialise from (the same rows, whatever the
chunking). The fit can save its state after every iteration and resume from it.

:class:`OnlineEM` is stepwise EM (Cappé & Moulines, 2009): a running average of the statistics of
mini-batches with step size ``(t + t0) ** -kappa``, for streams seen once and as a fast first pass
before exact EM; :func:`fit_online` runs it over an array in shuffled mini-batches.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxem.core.engine import (
    EM,
    FitResult,
    Status,
    _all_finite,
    _all_finite_leaf,
    _check_iterations,
    is_key,
    next_status,
    prepare_data,
)
from jaxem.core.estep import chunk_width, default_chunk_size, num_rows, reduce_chunks, total_weight
from jaxem.core.mixture import Mixture, MixtureParams, MixtureStats
from jaxem.core.model import ConjugateComponents
from jaxem.core.mstep import ClosedForm
from jaxem.core.precision import jit
from jaxem.core.subsample import empty_ranking, rank_rows, ranked_sample, sample_size

Array = jax.Array
Chunk = tuple[Any, Any]

__all__ = [
    "OnlineEM",
    "OnlineState",
    "StreamState",
    "fit_online",
    "fit_stream",
    "load_state",
    "save_state",
]


# ---- sources of chunks --------------------------------------------------------------------------


class _Source(NamedTuple):
    chunks: Callable[[], Iterator[Chunk]]  # a fresh pass over the data each call
    num_chunks: int | None


def _as_chunk(item: Any) -> Chunk:
    if isinstance(item, tuple) and len(item) == 2:
        return item
    return item, None


def _array_source(x: Any, weights: Any, chunk_size: int) -> _Source:
    n = num_rows(x)
    if weights is not None and np.shape(weights) != (n,):
        raise ValueError(
            f"weights has shape {np.shape(weights)} but x has {n} rows: pass one weight per row."
        )

    def chunks() -> Iterator[Chunk]:
        for start in range(0, n, chunk_size):
            rows = slice(start, start + chunk_size)
            yield (
                jax.tree.map(lambda a, rows=rows: a[rows], x),
                None if weights is None else weights[rows],
            )

    return _Source(chunks, -(-n // chunk_size))


def _open(source: Any) -> Any:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix != ".npy":
            raise ValueError(f"{path} is not a .npy file: save the data with numpy.save.")
        return np.load(path, mmap_mode="r")
    return source


def _make_source(source: Any, weights: Any, chunk_size: int | None, width: int) -> _Source:
    source, weights = _open(source), _open(weights)
    if callable(source):
        return _Source(lambda: map(_as_chunk, source()), None)
    if isinstance(source, (np.ndarray, jax.Array)):
        size = chunk_size or default_chunk_size(source.shape[0], width)
        return _array_source(source, weights, size)
    if isinstance(source, Iterator):
        raise ValueError(
            "source is a one-shot iterator, but every EM iteration reads the data again: pass a "
            "function that returns a new iterator of chunks, or a list of chunks."
        )
    if isinstance(source, Iterable):
        return _Source(
            lambda: map(_as_chunk, source), len(source) if hasattr(source, "__len__") else None
        )
    raise ValueError(
        f"Cannot read chunks from a {type(source).__name__}: pass an array, a path to a .npy file, "
        "a function that yields chunks (arrays or (x, weights) pairs), or a list of chunks."
    )


# ---- one pass -----------------------------------------------------------------------------------


@partial(jit, static_argnames=("model",))
def _accumulate(
    model: Any, totals: Any, params: Any, x: Any, weights: Array | None
) -> tuple[Any, Array]:
    """Add one chunk's statistics, log-likelihood and weight to the running ``totals``.

    A chunk read from the source is reduced in the in-memory fit's default chunks: one E-step over
    a whole read chunk (2^20 rows) would build its chunk x K x D intermediates at once (256 MiB
    for K = D = 8 in float32), and run slower out of cache.
    """
    size = default_chunk_size(num_rows(x), chunk_width(model, x))
    stats, loglik = reduce_chunks(lambda xc, wc, _: model.e_step(params, xc, wc), x, weights, size)
    chunk = (stats, loglik, total_weight(x, weights, loglik.dtype))
    if totals is None:
        return chunk, _chunk_finite(x)
    return jax.tree.map(jnp.add, totals, chunk), _chunk_finite(x)


def _chunk_finite(x: Any) -> Array:
    return jnp.all(jnp.stack([_all_finite_leaf(a) for a in jax.tree.leaves(x)]))


def _put(chunk: Chunk | None, dtype: Any) -> Chunk | None:
    if chunk is None:
        return None
    x, weights = chunk
    x = jax.tree.map(lambda a: jax.device_put(np.asarray(a, dtype)), x)
    return x, None if weights is None else jax.device_put(np.asarray(weights, dtype))


def _tqdm() -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError as error:
        raise ImportError(
            "progress=True needs tqdm: pip install tqdm (or jaxem[progress])."
        ) from error
    return tqdm


@contextmanager
def _progress_bar(progress: bool, total: int | None, description: str) -> Iterator[Any]:
    """A tqdm bar over one pass's chunks, closed when the pass ends or fails (``None`` without
    ``progress``)."""
    if not progress:
        yield None
        return
    bar = _tqdm()(total=total, desc=description, unit="chunk", leave=False)
    try:
        yield bar
    finally:
        bar.close()


def _fold(step: Callable, state: Any, source: _Source, dtype: Any, check: bool, bar: Any) -> Any:
    """``state = step(state, x, weights)`` over the chunks of one pass, with double buffering;
    ``step`` returns the new state and whether its chunk was finite (checked when ``check``)."""
    chunks = source.chunks()
    upcoming = _put(next(chunks, None), dtype)
    if upcoming is None:
        raise ValueError("The source yielded no chunks: it must yield at least one.")
    index = 0
    while upcoming is not None:
        x, weights = upcoming
        # Dispatch is asynchronous: the next chunk is read and sent while this one computes.
        state, finite = step(state, x, weights)
        upcoming = _put(next(chunks, None), dtype)
        if check and not bool(finite):
            raise ValueError(
                f"Chunk {index} of the source contains NaN or infinity: remove or impute those "
                "values before fitting."
            )
        jax.block_until_ready(state)  # at most one chunk in flight and one in transfer
        index += 1
        if bar is not None:
            bar.update(1)
    return state


def _pass(
    model: Any, params: Any, source: _Source, dtype: Any, check: bool, bar: Any
) -> tuple[Any, Array, Array]:
    """Summed statistics, log-likelihood and weight of one pass."""

    def step(totals: Any, x: Any, weights: Array | None) -> tuple[Any, Array]:
        return _accumulate(model, totals, params, x, weights)

    return _fold(step, None, source, dtype, check, bar)


@jit
def _rank_chunk(ranking: Any, key: Array, x: Any, weights: Array, first_row: Array) -> tuple:
    ranked = rank_rows(ranking, key, num_rows(x), weights, first_row, values=x)
    return ranked, _chunk_finite(x)


def _initial_params(
    model: Any, key: Array, source: _Source, dtype: Any, size: int, bar: Any
) -> Any:
    """:func:`jaxem.core.subsample.initial_params` on the whole source, in one pass.

    The rows are ranked chunk by chunk at their row numbers in the whole data, carrying the best
    ``size + 1`` rows along, so the sample is the one :func:`jaxem.fit` draws from the same key on
    the data in memory, for any chunking; data of at most ``size`` rows are used whole.
    """
    key_sample, key_init = jax.random.split(key)

    def step(state: tuple, x: Any, weights: Array | None) -> tuple[tuple, Array]:
        ranking, rows, weighted = state
        n = num_rows(x)
        if ranking is None:
            row = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), x)
            # Weights of 1 give the same priorities and sample as none: carry them always, so a
            # source whose later chunks bring weights needs no second pass.
            ranking = empty_ranking(size, dtype, True, row)
        ranked, finite = _rank_chunk(
            ranking, key_sample, x, jnp.ones(n, dtype) if weights is None else weights, rows
        )
        return (ranked, rows + n, weighted or weights is not None), finite

    ranking, rows, weighted = _fold(step, (None, 0, False), source, dtype, True, bar)
    init = jit(model.init)
    if rows <= size:
        # Every row is in the ranking, after the placeholders (row -1): the data in row order.
        order = jnp.argsort(ranking.row)[-rows:]
        whole = jax.tree.map(lambda a: a[order], ranking.values)
        return init(key, whole, ranking.weight[order] if weighted else None)
    order, _, sample_weights = ranked_sample(ranking, size)
    sample = jax.tree.map(lambda a: a[:size][order], ranking.values)
    return init(key_init, sample, sample_weights if weighted else None)


@partial(jit, static_argnames=("model", "max_iter"))
def _advance(model, params, totals, previous, iteration, tol, max_iter):
    """The M-step and the engine's stopping rule, after one pass."""
    stats, loglik, total = totals
    objective = (loglik + jnp.asarray(model.log_prior(params), loglik.dtype)) / total
    new = model.m_step(params, stats)
    iteration = iteration + 1
    finite = jnp.isfinite(objective) & _all_finite(new)
    status = next_status(finite, objective, previous, iteration, max_iter, tol)
    kept = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, params)
    return kept, objective, status


@partial(jit, static_argnames=("model",))
def _final_objective(model, params, totals, status):
    _, loglik, total = totals
    objective = (loglik + jnp.asarray(model.log_prior(params), loglik.dtype)) / total
    bad = (status == Status.NONFINITE) | ~jnp.isfinite(objective)
    return jnp.where(bad, -jnp.inf, objective)


# ---- saved state --------------------------------------------------------------------------------


class StreamState(NamedTuple):
    """What :func:`fit_stream` saves after every iteration, enough to resume it.

    Attributes:
        params: the parameters after ``iteration`` iterations.
        iteration: iterations done.
        objective: the objective before the last iteration's M-step (the convergence rule's
            reference).
        status: a :class:`jaxem.Status` code (``RUNNING`` or ``MAX_ITER`` can be resumed).
        history: the objective before each iteration's M-step, shape ``[iteration]``.
    """

    params: Any
    iteration: int
    objective: float
    status: int
    history: np.ndarray


def save_state(path: str | os.PathLike, state: StreamState) -> None:
    """Write ``state`` to ``path`` (``.npz``) atomically: the flattened parameters, no pickle."""
    leaves, treedef = jax.tree.flatten(state.params)
    path = Path(path)
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez(
        tmp,
        structure=np.asarray(str(treedef)),
        iteration=np.asarray(state.iteration),
        objective=np.asarray(state.objective),
        status=np.asarray(state.status),
        history=np.asarray(state.history),
        **{f"leaf_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)},
    )
    os.replace(tmp, path)  # a stop mid-write leaves the previous state intact


def load_state(path: str | os.PathLike, like: Any) -> StreamState:
    """Read a state written by :func:`save_state`; ``like`` gives the parameters' structure."""
    leaves, treedef = jax.tree.flatten(like)
    with np.load(path, allow_pickle=False) as saved:
        if str(saved["structure"]) != str(treedef) or any(
            saved[f"leaf_{i}"].shape != np.shape(leaf) for i, leaf in enumerate(leaves)
        ):
            raise ValueError(
                f"The state in {path} was saved for other parameters (another model or shape): "
                "delete it, or pass the checkpoint of this fit."
            )
        params = treedef.unflatten([jnp.asarray(saved[f"leaf_{i}"]) for i in range(len(leaves))])
        return StreamState(
            params,
            int(saved["iteration"]),
            float(saved["objective"]),
            int(saved["status"]),
            np.asarray(saved["history"]),
        )


# ---- exact EM over a stream ---------------------------------------------------------------------


def fit_stream(
    algo: EM,
    init: Any,
    source: Any,
    weights: Any = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = False,
    verbose: int = 0,
) -> FitResult:
    """Exact EM, one pass over the data per iteration, on data read chunk by chunk.

    The stopping rule, the result and, from the same initial parameters and chunk size, the
    parameters (to rounding) are those of :func:`jaxem.fit`.

    Args:
        algo: from :func:`jaxem.em`, with the closed-form M-step; its ``chunk_size`` (or one picked
            from the sizes) splits an array source.
        init: initial parameters, or a PRNG key: one more pass then draws the sample
            :func:`jaxem.fit` draws from that key on the data in memory (the same rows, whatever
            the chunking; all rows when they are few) and the model initialises from it (see
            :mod:`jaxem.core.subsample`), so the start does not depend on the rows' order.
        source: a path to a ``.npy`` file (memory-mapped), an array (``numpy.memmap`` included), a
            function returning a new iterator of chunks on each call, or a list of chunks. A chunk
            is an array or an ``(x, weights)`` pair; the last one may be shorter.
        weights: per-row weights for an array or ``.npy`` source (also a path or memmap).
        max_iter, tol: as in :func:`jaxem.fit`.
        checkpoint: a ``.npz`` path: the state is saved there after every iteration, and a fit
            started with an existing checkpoint resumes from it (stop it at any time; raise
            ``max_iter`` to go on after it stopped at ``MAX_ITER``).
        progress: a tqdm progress bar per pass (needs tqdm).
        verbose: print the objective every ``verbose`` iterations (0: silent).

    Example:
        >>> import numpy as np, jax, jaxem
        >>> x = np.random.default_rng(0).normal(size=(1000, 2)).astype(np.float32)
        >>> algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2)), chunk_size=256)
        >>> chunks = lambda: (x[i : i + 256] for i in range(0, len(x), 256))
        >>> result = jaxem.streaming.fit_stream(algo, jax.random.key(0), chunks, max_iter=20)
        >>> result.params.weights.shape
        (2,)
    """
    if not isinstance(algo.mstep, ClosedForm) or algo.accelerate is not None:
        raise ValueError(
            "fit_stream runs plain EM with the closed-form M-step: build algo with "
            "jaxem.em(model) (no gradient M-step, no acceleration)."
        )
    _check_iterations(max_iter, tol)
    if progress:
        _tqdm()  # fail before any work when tqdm is missing
    source = _open(source)
    width = chunk_width(algo.model, source) if hasattr(source, "shape") else 1
    source = _make_source(source, weights, algo.chunk_size, width)
    first_x, first_w = next(source.chunks(), (None, None))
    if first_x is None:
        raise ValueError("The source yielded no chunks: it must yield at least one.")
    first_x, first_w = prepare_data(jax.tree.map(np.asarray, first_x), first_w)
    dtype = jax.tree.leaves(first_x)[0].dtype
    resume = checkpoint is not None and Path(checkpoint).exists()
    params = init
    if is_key(init) and resume:
        params = jax.eval_shape(algo.model.init, init, first_x, first_w)  # the structure to load
    elif is_key(init):
        with _progress_bar(progress, source.num_chunks, "Sample pass") as bar:
            params = _initial_params(algo.model, init, source, dtype, sample_size(first_x), bar)

    history = np.full(max(max_iter, 1), np.nan)
    iteration, previous, status = (
        0,
        -np.inf,
        int(Status.MAX_ITER if max_iter == 0 else Status.RUNNING),
    )
    if resume:
        saved = load_state(checkpoint, params)
        params, iteration, previous = saved.params, saved.iteration, saved.objective
        history[: min(iteration, max_iter)] = saved.history[:max_iter]
        status = saved.status
        if status in (Status.RUNNING, Status.MAX_ITER):
            status = int(Status.MAX_ITER if iteration >= max_iter else Status.RUNNING)

    tol = jnp.asarray(tol, dtype)
    while status == Status.RUNNING:
        with _progress_bar(progress, source.num_chunks, f"EM pass {iteration + 1}") as bar:
            totals = _pass(algo.model, params, source, dtype, iteration == 0, bar)
        params, objective, new_status = _advance(
            algo.model, params, totals, jnp.asarray(previous, dtype), iteration, tol, max_iter
        )
        previous, status = float(objective), int(new_status)
        history[iteration] = previous
        iteration += 1
        if verbose and (iteration % verbose == 0 or status != Status.RUNNING):
            print(f"jaxem: iteration {iteration}, mean log-likelihood {previous:.6f}")
        if checkpoint is not None:
            save_state(
                checkpoint, StreamState(params, iteration, previous, status, history[:iteration])
            )

    totals = _pass(algo.model, params, source, dtype, False, None)
    log_likelihood = _final_objective(algo.model, params, totals, status)
    return FitResult(
        params,
        log_likelihood,
        jnp.asarray(iteration),
        jnp.asarray(status),
        jnp.asarray(history[:max_iter], dtype),
    )


# ---- online (stepwise) EM -----------------------------------------------------------------------


class OnlineState(NamedTuple):
    """State of online EM.

    Attributes:
        params: the current parameters.
        reference: the parameters the statistics are accumulated about (the initial ones), so that
            statistics of different mini-batches can be averaged.
        stats: running average of the per-unit-weight statistics (``None`` before the first update).
        seen: total weight of the data seen.
        count: updates done.
    """

    params: MixtureParams
    reference: MixtureParams
    stats: MixtureStats | None
    seen: Array
    count: Array


@dataclass(frozen=True)
class OnlineEM:
    """Stepwise EM (Cappé & Moulines, 2009) for a mixture whose components have a closed form.

    After the ``t``-th mini-batch (``t = 0, 1, ...``) the running statistics move toward the batch's
    by the step ``(t + step_offset) ** -step_exponent`` (the first step is 1), and the parameters
    are the M-step of the running statistics. ``0.5 < step_exponent <= 1`` makes the steps' sum
    diverge and their squares' sum converge, as convergence needs.

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (512, 2))
        >>> model = jaxem.Mixture(jaxem.Gaussian(2))
        >>> online = jaxem.streaming.OnlineEM(model)
        >>> state = online.init(model.init(jax.random.key(1), x, None))
        >>> for batch in x.reshape(8, 64, 2):
        ...     state, batch_loglik = online.update(state, batch)
        >>> int(state.count)
        8
    """

    model: Mixture
    step_exponent: float = 0.6
    step_offset: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.model, Mixture) or not isinstance(
            self.model.components, ConjugateComponents
        ):
            raise ValueError(
                "OnlineEM needs a jaxem.Mixture of components with a closed-form M-step "
                "(ConjugateComponents): online EM averages their statistics."
            )
        if not 0.5 < self.step_exponent <= 1:
            raise ValueError(
                f"step_exponent must be in (0.5, 1] for online EM to converge, got "
                f"{self.step_exponent!r}."
            )
        if not self.step_offset >= 0:
            raise ValueError(f"step_offset must be non-negative, got {self.step_offset!r}.")

    def step_size(self, count: Array) -> Array:
        """The weight of the ``count``-th mini-batch in the running statistics."""
        count = jnp.asarray(count)
        decayed = (count + self.step_offset) ** -self.step_exponent
        return jnp.where(count == 0, 1.0, decayed)

    def init(self, params: MixtureParams) -> OnlineState:
        """The state before any data, from initial parameters."""
        dtype = params.weights.dtype
        return OnlineState(params, params, None, jnp.zeros((), dtype), jnp.zeros((), jnp.int32))

    def update(
        self, state: OnlineState, x: Any, weights: Array | None = None
    ) -> tuple[OnlineState, Array]:
        """One mini-batch: the new state and the batch's mean log-likelihood before the update."""
        stats, loglik = self.model.e_step(state.params, x, weights, reference=state.reference)
        batch = total_weight(x, weights, loglik.dtype)
        gamma = self.step_size(state.count).astype(loglik.dtype)
        fresh = jax.tree.map(lambda s: s / batch, stats)
        if state.stats is None:
            average = fresh
        else:
            average = jax.tree.map(lambda a, s: a + gamma * (s - a), state.stats, fresh)
        seen = state.seen + batch
        # Scaled to the weight seen, so a weight prior counts as much as in a batch fit of it.
        params = self.model.m_step(state.reference, jax.tree.map(lambda a: a * seen, average))
        return OnlineState(params, state.reference, average, seen, state.count + 1), loglik / batch


# Compiled once per model and shapes, for every call (each of partial_fit's mini-batches).
_online_update = jit(OnlineEM.update, static_argnums=0)
_objective = jit(EM.objective, static_argnums=0)


@partial(jit, static_argnames=("online", "batch_size", "num_epochs"))
def _online_epochs(online, state, x, weights, key, batch_size, num_epochs):
    n = num_rows(x)
    per_epoch = n // batch_size

    def epoch(state: OnlineState, e: Array) -> tuple[OnlineState, Array]:
        order = jax.random.permutation(jax.random.fold_in(key, e), n)

        def batch(state: OnlineState, b: Array) -> tuple[OnlineState, Array]:
            rows = lax.dynamic_slice_in_dim(order, b * batch_size, batch_size)
            xb = jax.tree.map(lambda a: a[rows], x)
            wb = None if weights is None else weights[rows]
            return online.update(state, xb, wb)

        return lax.scan(batch, state, jnp.arange(per_epoch))

    if state.stats is None:  # the first update fixes the state's structure for the scan
        first = jax.random.permutation(jax.random.fold_in(key, num_epochs), n)[:batch_size]
        state, _ = online.update(
            state, jax.tree.map(lambda a: a[first], x), None if weights is None else weights[first]
        )
    state, objectives = lax.scan(epoch, state, jnp.arange(num_epochs))
    return state, objectives.reshape(-1)


def fit_online(
    online: OnlineEM,
    init: Any,
    x: Any,
    weights: Any = None,
    *,
    key: Array,
    batch_size: int = 1024,
    num_epochs: int = 1,
    chunk_size: int | None = None,
) -> tuple[FitResult, OnlineState]:
    """Online EM over an in-memory array in shuffled mini-batches (one jitted computation).

    A fast first pass: pass ``result.params`` to :func:`jaxem.fit` to finish with exact EM.

    Args:
        online: an :class:`OnlineEM`.
        init: initial parameters, a PRNG key (``online.model.init`` on ``x``) or an
            :class:`OnlineState` to go on from.
        key: PRNG key of the shuffles.
        batch_size: rows per mini-batch; each epoch runs ``N // batch_size`` batches over a fresh
            permutation, so the rows left over in one epoch are drawn in others.
        num_epochs: passes over the data.
        chunk_size: chunk size of the final pass that evaluates the objective.

    Returns:
        ``(result, state)``: a :class:`jaxem.FitResult` whose ``log_likelihood`` is the mean
        objective on all of ``x`` at the final parameters and whose ``history`` holds each
        mini-batch's mean log-likelihood before its update; and the final :class:`OnlineState`.

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (2000, 2))
        >>> online = jaxem.streaming.OnlineEM(jaxem.Mixture(jaxem.Gaussian(2)))
        >>> result, state = jaxem.streaming.fit_online(
        ...     online, jax.random.key(1), x, key=jax.random.key(2), batch_size=200)
        >>> int(result.num_iters)
        11
    """
    x, weights = prepare_data(x, weights)
    n = num_rows(x)
    if not isinstance(batch_size, int) or not 1 <= batch_size <= n:
        raise ValueError(
            f"batch_size must be an integer in [1, {n}] (the rows of x), got {batch_size!r}."
        )
    if not isinstance(num_epochs, int) or num_epochs < 1:
        raise ValueError(f"num_epochs must be a positive integer, got {num_epochs!r}.")
    if isinstance(init, OnlineState):
        state = init
    else:
        params = jit(online.model.init)(init, x, weights) if is_key(init) else init
        state = online.init(params)
    state, objectives = _online_epochs(online, state, x, weights, key, batch_size, num_epochs)
    algo = EM(
        online.model,
        chunk_size=chunk_size or default_chunk_size(n, chunk_width(online.model, x)),
    )
    objective = _objective(algo, state.params, x, weights)
    finite = jnp.isfinite(objective) & _all_finite(state.params)
    status = jnp.where(finite, Status.MAX_ITER, Status.NONFINITE)
    result = FitResult(
        state.params, jnp.where(finite, objective, -jnp.inf), state.count, status, objectives
    )
    return result, state
