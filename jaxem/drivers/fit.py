"""The fit loop: the kernel's ``step`` in one jitted ``lax.while_loop``, and restarts as ``vmap``.

Every other driver reuses these pieces: :func:`fit_loop` (the loop, resumable, with an optional
pause), :func:`finish` (the result of a loop), and :func:`start_params` (the one start from keys,
on any rows).
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxem.core.algorithm import EM
from jaxem.core.inputs import (
    check_iterations,
    is_key,
    model_data,
    num_lanes,
    power_of_two_bucket,
    restart_keys,
)
from jaxem.core.kernel import EMKernel, EMState, Status
from jaxem.core.program_cache import cached_jit
from jaxem.core.rows import initial_params
from jaxem.core.subsample import sample_size

Array = jax.Array

# Restart lanes whose starts are computed together (see start_params).
INIT_BATCH_LANES = 4


class FitResult(NamedTuple):
    """The outcome of a fit; under :func:`fit_restarts` every leaf gains a leading restart axis.

    Attributes:
        params: the fitted parameters (the last finite ones if the fit went non-finite).
        log_likelihood: total log-likelihood of the rows at ``params``, summed over the (weighted)
            rows, plus the log prior under MAP-EM (the log-posterior up to a constant); ``-inf``
            for a non-finite fit.
        num_iters: EM iterations run (E-steps, i.e. passes over the data, under SQUAREM).
        status: a :class:`jaxem.Status` code.
        history: the same total before each iteration's M-step, shape ``[max_iter]``, NaN after
            ``num_iters``; divided by the total row weight it is what scikit-learn records as
            the lower bound. Under SQUAREM one entry per E-step; a rejected extrapolation records
            the objective that the plain EM step taken instead is known to exceed, so the history
            never decreases.
    """

    params: Any
    log_likelihood: Array
    num_iters: Array
    status: Array
    history: Array


class FinalStats(NamedTuple):
    """The summed statistics at a fit's final parameters, and the total row weight they share."""

    stats: Any
    total_weight: Array


def report_progress(iteration: Array, log_likelihood: Array) -> None:
    """The progress line every driver prints with ``verbose``."""
    print(f"jaxem: iteration {int(iteration)}, log-likelihood {float(log_likelihood):.6f}")


def fit_loop(
    kernel: Any,
    state: EMState,
    history: Array,
    rows: Any,
    *,
    verbose: int = 0,
    pause_at: Array | None = None,
) -> tuple[EMState, Array]:
    """Run ``kernel.step`` until the state stops (or reaches ``pause_at`` iterations), recording
    the total log-likelihood of every step in ``history``. Resumes any state it returned."""

    def cond(carry: tuple[EMState, Array]) -> Array:
        state = carry[0]
        running = state.status == Status.RUNNING
        return running if pause_at is None else running & (state.iteration < pause_at)

    def body(carry: tuple[EMState, Array]) -> tuple[EMState, Array]:
        state, history = carry
        new, _ = kernel.step(state, rows)
        if verbose:
            lax.cond(
                (new.iteration % verbose == 0) | (new.status != Status.RUNNING),
                lambda: jax.debug.callback(report_progress, new.iteration, new.log_likelihood),
                lambda: None,
            )
        return new, history.at[state.iteration].set(new.log_likelihood)

    return lax.while_loop(cond, body, (state, history))


def empty_history(max_iter: int, dtype: Any) -> Array:
    """The history buffer of a fit of at most ``max_iter`` iterations (NaN: not run)."""
    return jnp.full((max(max_iter, 1),), jnp.nan, dtype)


def finish(
    kernel: Any,
    state: EMState,
    history: Array,
    rows: Any,
    max_iter: int,
    *,
    with_stats: bool = False,
) -> Any:
    """The :class:`FitResult` of a stopped loop: the log-likelihood at the final parameters (one
    more pass), ``-inf`` for a non-finite fit. With ``with_stats``, also that pass's summed
    statistics and total row weight: ``(result, stats, total)``."""
    # Every kernel's log-likelihood is the plain E-pass's (neither the M-step nor an acceleration
    # enters it), and that pass also gives the statistics at the final parameters.
    stats, final, total = EMKernel(kernel.model).e_pass(state.params, rows)
    bad = (state.status == Status.NONFINITE) | ~jnp.isfinite(final)
    result = FitResult(
        state.params,
        jnp.where(bad, -jnp.inf, final),
        state.iteration,
        state.status,
        history[:max_iter],
    )
    return (result, stats, total) if with_stats else result


def run_fit(
    kernel: Any,
    params: Any,
    rows: Any,
    tol: Array,
    max_iter: Any,
    verbose: int = 0,
    history_size: int | None = None,
    *,
    with_stats: bool = False,
) -> Any:
    """One whole fit from ``params`` (traceable: jit it, vmap it, put it in ``shard_map``).

    ``max_iter`` is an integer, or a traced one when ``history_size`` (at least ``max_iter``) gives
    the history's length; the history then keeps that length, NaN beyond the iterations run.
    With ``with_stats``: ``(result, stats, total)`` as :func:`finish` gives them.
    """
    rows = rows.prepare(kernel.model)  # data-only work, once per fit (see jaxem.core.model)
    state = kernel.init(params, rows, tol=tol, max_iter=max_iter)
    size = max_iter if history_size is None else history_size
    state, history = fit_loop(kernel, state, empty_history(size, rows.dtype), rows, verbose=verbose)
    return finish(kernel, state, history, rows, size, with_stats=with_stats)


def history_length(max_iter: int) -> int:
    """The history buffer of a compiled fit: the next power of two of ``max_iter``, at least 16,
    so that every ``max_iter`` of a bucket runs one compiled program (``max_iter`` itself is a
    run-time value).

    Example:
        >>> [history_length(n) for n in (0, 16, 17, 100, 1000)]
        [16, 16, 32, 128, 1024]
    """
    return power_of_two_bucket(max_iter, minimum=16)


def trim_history(result: FitResult, max_iter: int) -> FitResult:
    """``result`` with its history cut to ``max_iter`` entries (on the host: a slice on the device
    would compile a program per length)."""
    history = np.asarray(result.history)[..., :max_iter]
    return result._replace(history=jax.device_put(history))


@partial(cached_jit, static_argnames=("kernel", "history_size", "verbose"))
def _fit_program(kernel, params, rows, tol, max_iter, history_size, verbose):
    return run_fit(kernel, params, rows, tol, max_iter, verbose, history_size)


@partial(cached_jit, static_argnames=("kernel", "history_size", "verbose"), lanes_argname="params")
def _restarts_program(kernel, params, rows, tol, max_iter, history_size, verbose):
    results, stats, total = jax.vmap(
        lambda p: run_fit(kernel, p, rows, tol, max_iter, verbose, history_size, with_stats=True)
    )(params)
    # The best lane is taken in the program: taken outside, each leaf's slice compiles on its own.
    best = best_restart(results)
    return take_lane(results, best), results, take_lane(stats, best), total[0]


# Starts from keys compile as programs of their own, not inside the fit's: XLA's compile-time
# memory is returned to the heap between compilations, so two programs peak at the larger one's
# (measured at (10^6, 8, 8): 175 MiB against 252 MiB for one program holding both). The sample
# size is a static argument, so a compiled start is reused only for the same sample size.
@partial(cached_jit, static_argnames=("model", "size"), lanes_argname="keys")
def _start_program(model, keys, rows, size):
    # Starts in batches of lanes: each batch shares its passes over the data (half the time of one
    # lane at a time for 32 restarts at (2 10^4, 8, 8)), while the sample ranking's temporaries grow
    # with the batch, not with every lane.
    return lax.map(
        lambda key: initial_params(model, key, rows, size), keys, batch_size=INIT_BATCH_LANES
    )


def start_params(model: Any, keys: Array, rows: Any) -> Any:
    """Initial parameters for a batch of keys (a leading lane axis), drawn by the one start of
    every driver: :func:`jaxem.core.rows.initial_params` on these rows, whatever holds them."""
    return _start_program(model, keys, rows, sample_size_of(rows))


def sample_size_of(rows: Any) -> int:
    """The initialisation sample's size for ``rows`` (see
    :func:`jaxem.core.subsample.sample_size`)."""
    shapes = getattr(rows, "row_shapes", None)
    if shapes is None:
        return sample_size(rows.x)
    example = [jax.ShapeDtypeStruct((1, *shape), dtype) for shape, dtype in shapes[1]]
    return sample_size(example)


def best_restart(results: FitResult) -> Array:
    """Index of the lane with the highest log-likelihood; non-finite lanes never win."""
    score = jnp.where(results.status == Status.NONFINITE, -jnp.inf, results.log_likelihood)
    return jnp.argmax(score)


def take_lane(results: Any, lane: Any) -> Any:
    """Lane ``lane`` of a pytree with a leading lane axis."""
    return jax.tree.map(lambda a: a[lane], results)


def fit(
    algo: EM,
    init: Any,
    x: Any,
    row_weights: Any = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    verbose: int = 0,
) -> FitResult:
    """Fit by EM until the mean log-likelihood changes by less than ``tol`` (scikit-learn's rule).

    Args:
        algo: from :func:`jaxem.em`.
        init: a PRNG key (parameters are drawn by ``algo.model.init``, from a sample of 65536 rows
            when there are more: see :mod:`jaxem.core.subsample`) or initial parameters.
        x: data, one row per point (an array, or a pytree of arrays sharing the row axis).
        row_weights: optional non-negative weight per row.
        max_iter: the most EM iterations.
        tol: convergence threshold on the change of the mean log-likelihood per unit of row
            weight.
        verbose: print progress every ``verbose`` iterations from inside the loop (0: silent).

    Returns:
        A :class:`FitResult`; check ``status`` for convergence.

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (200, 2))
        >>> algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2, covariance_type="diag")))
        >>> result = jaxem.fit(algo, jax.random.key(0), x, max_iter=50)
        >>> int(result.status) in (1, 2)
        True
    """
    x, row_weights = model_data(algo.model, x, row_weights)
    check_iterations(max_iter, tol)
    tol = float(tol)  # an int tol would trace as another dtype and compile the fit again
    algo = algo.for_data(x)
    rows = algo.rows(x, row_weights)
    if is_key(init):
        init = take_lane(start_params(algo.model, init[None], rows), 0)
    result = _fit_program(algo.kernel, init, rows, tol, max_iter, history_length(max_iter), verbose)
    return trim_history(result, max_iter)


def fit_restarts(
    algo: EM,
    init: Any,
    x: Any,
    row_weights: Any = None,
    *,
    num_restarts: int | None = None,
    max_iter: int = 100,
    tol: float = 1e-3,
    verbose: int = 0,
    final_stats: bool = False,
) -> Any:
    """Run many EM fits as one vmapped computation and return the best and all of them.

    Each lane stops on its own criterion and then stays frozen while the others run. Lane ``i``
    started from ``jax.random.split(key, num_restarts)[i]`` equals ``fit(algo, that key, x)``.

    Args:
        algo: from :func:`jaxem.em`.
        init: a PRNG key (split into ``num_restarts`` keys), a batch of keys, or initial parameters
            with a leading restart axis on every leaf.
        num_restarts: required when ``init`` is a single key.
        final_stats: also return the best lane's :class:`FinalStats` (the statistics of the
            pass that gives its final log-likelihood: no extra pass over the data).

    Returns:
        ``(best, all)``: the best lane's :class:`FitResult`, and every lane's with a leading axis;
        ``(best, all, stats)`` with ``final_stats``.

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (200, 2))
        >>> algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2)))
        >>> best, lanes = jaxem.fit_restarts(algo, jax.random.key(0), x, num_restarts=8)
        >>> lanes.log_likelihood.shape
        (8,)
    """
    x, row_weights = model_data(algo.model, x, row_weights)
    check_iterations(max_iter, tol)
    tol = float(tol)  # an int tol would trace as another dtype and compile the fit again
    if is_key(init):
        init = restart_keys(init, num_restarts)
    algo = algo.for_data(x, num_lanes(init))
    rows = algo.rows(x, row_weights)
    if is_key(init):
        init = start_params(algo.model, init, rows)
    best, results, stats, total = _restarts_program(
        algo.kernel, init, rows, tol, max_iter, history_length(max_iter), verbose
    )
    best, results = trim_history(best, max_iter), trim_history(results, max_iter)
    return (best, results, FinalStats(stats, total)) if final_stats else (best, results)


__all__ = [
    "INIT_BATCH_LANES",
    "FinalStats",
    "FitResult",
    "best_restart",
    "empty_history",
    "finish",
    "fit",
    "fit_loop",
    "fit_restarts",
    "history_length",
    "report_progress",
    "run_fit",
    "sample_size_of",
    "start_params",
    "take_lane",
    "trim_history",
]
