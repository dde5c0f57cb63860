"""Restart pruning by successive halving: lagging restarts are dropped so they do not hold up the
batch.

The lanes run in rounds of ``prune_every`` iterations, as one vmapped computation per round: each
round resumes every running lane's whole kernel state (an accelerator's cycle and a gradient
M-step's optimizer memory included) where the last one paused. After each round the lanes still
running whose log-likelihood is below the best ``keep_fraction`` of the lanes still in the race are
dropped (status ``PRUNED``); lanes that have finished stay candidates and cost nothing more. A
surviving lane's result is the one it would have had without pruning.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxem.core.algorithm import EM
from jaxem.core.inputs import check_iterations, is_key, model_data, num_lanes, restart_keys
from jaxem.core.kernel import Status
from jaxem.core.precision import jit
from jaxem.drivers.fit import (
    FitResult,
    empty_history,
    finish,
    fit_loop,
    start_params,
    take_lane,
)

Array = jax.Array


@partial(jit, static_argnames=("kernel", "max_iter"))
def _start(kernel, params, rows, tol, max_iter):
    rows = rows.prepare(kernel.model)

    def one(p: Any) -> Any:
        return kernel.init(p, rows, tol=tol, max_iter=max_iter), empty_history(max_iter, rows.dtype)

    return jax.vmap(one)(params)


@partial(jit, static_argnames=("kernel", "verbose"))
def _round(kernel, lanes, rows, pause_at, verbose):
    """Resume the lanes until they stop or reach ``pause_at``; also each lane's log-likelihood at
    its current parameters, which the cut ranks by."""
    rows = rows.prepare(kernel.model)

    def one(lane: Any) -> Any:
        state, history = lane
        state, history = fit_loop(kernel, state, history, rows, verbose=verbose, pause_at=pause_at)
        return (state, history), kernel.log_likelihood(state.params, rows)

    return jax.vmap(one)(lanes)


@partial(jit, static_argnames=("kernel", "max_iter"))
def _finish(kernel, lanes, rows, max_iter):
    rows = rows.prepare(kernel.model)
    return jax.vmap(lambda lane: finish(kernel, *lane, rows, max_iter))(lanes)


def fit_restarts_pruned(
    algo: EM,
    init: Any,
    x: Any,
    row_weights: Any = None,
    *,
    num_restarts: int | None = None,
    max_iter: int = 100,
    tol: float = 1e-3,
    prune_every: int = 10,
    keep_fraction: float = 0.5,
    min_restarts: int = 1,
    verbose: int = 0,
) -> tuple[FitResult, FitResult]:
    """:func:`jaxem.fit_restarts` that drops lagging restarts every ``prune_every`` iterations.

    Args:
        algo, init, x, row_weights, num_restarts, max_iter, tol: as in
            :func:`jaxem.fit_restarts`.
        prune_every: iterations between two cuts.
        keep_fraction: fraction of the lanes still in the race (not dropped, finite) kept at a cut.
        min_restarts: never keep fewer lanes than this.
        verbose: print progress every ``verbose`` iterations, and the lanes dropped at each cut
            (0: silent).

    Returns:
        ``(best, all)``: the best surviving lane, and every lane; a dropped lane has status
        ``Status.PRUNED``, the parameters and log-likelihood it had when dropped, and
        ``num_iters`` the iteration at which it was dropped
        (``jnp.flatnonzero(all.status == Status.PRUNED)`` lists them).

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (300, 2))
        >>> algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(3)))
        >>> best, lanes = jaxem.fit_restarts_pruned(
        ...     algo, jax.random.key(0), x, num_restarts=8, prune_every=5, tol=0.0, max_iter=20)
        >>> int((lanes.status == jaxem.Status.PRUNED).sum())
        7
    """
    x, row_weights = model_data(algo.model, x, row_weights)
    check_iterations(max_iter, tol)
    if isinstance(prune_every, bool) or not isinstance(prune_every, int) or prune_every < 1:
        raise ValueError(f"prune_every must be a positive integer, got {prune_every!r}.")
    if not 0 < keep_fraction < 1:
        raise ValueError(f"keep_fraction must be in (0, 1), got {keep_fraction!r}.")
    if isinstance(min_restarts, bool) or not isinstance(min_restarts, int) or min_restarts < 1:
        raise ValueError(f"min_restarts must be a positive integer, got {min_restarts!r}.")
    tol = float(tol)
    if is_key(init):
        init = restart_keys(init, num_restarts)
    algo = algo.for_data(x, num_lanes(init))
    rows = algo.rows(x, row_weights)
    if is_key(init):
        init = start_params(algo.model, init, rows)
    kernel = algo.kernel
    lanes = _start(kernel, init, rows, tol, max_iter)

    status = np.asarray(lanes[0].status).copy()
    score = np.full(status.shape, -np.inf)
    pause_at = 0
    while np.any(status == Status.RUNNING):
        pause_at = min(pause_at + prune_every, max_iter)
        running = np.flatnonzero(status == Status.RUNNING)
        advanced, current = _round(kernel, take_lane(lanes, running), rows, pause_at, verbose)
        lanes = jax.tree.map(lambda a, b, rows=running: a.at[rows].set(b), lanes, advanced)
        score[running] = np.asarray(current)
        status = np.asarray(lanes[0].status).copy()
        in_race = np.flatnonzero((status != Status.PRUNED) & (status != Status.NONFINITE))
        keep = max(min_restarts, math.ceil(keep_fraction * in_race.size))
        if not np.any(status == Status.RUNNING) or in_race.size <= keep:
            continue
        threshold = np.sort(score[in_race])[::-1][keep - 1]
        dropped = in_race[(status[in_race] == Status.RUNNING) & (score[in_race] < threshold)]
        if dropped.size:
            status[dropped] = Status.PRUNED
            state = lanes[0]._replace(status=jnp.asarray(status, lanes[0].status.dtype))
            lanes = (state, lanes[1])
            if verbose:
                print(f"jaxem: iteration {pause_at}, dropped restarts {dropped.tolist()}")

    results = _finish(kernel, lanes, rows, max_iter)
    candidate = (status != Status.PRUNED) & (status != Status.NONFINITE)
    best = int(np.argmax(np.where(candidate, np.asarray(results.log_likelihood), -np.inf)))
    return take_lane(results, best), results


__all__ = ["fit_restarts_pruned"]
