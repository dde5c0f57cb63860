"""Restart pruning by successive halving: lagging restarts are dropped so they do not hold up the
batch.

The lanes run in rounds of ``prune_every`` iterations, as one vmapped computation per round. After
each round the lanes still running whose objective is below the best ``keep_fraction`` of the lanes
still in the race are dropped (status ``PRUNED``); lanes that have finished stay candidates and
cost nothing more. A surviving lane's result is the one it would have had without pruning.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxem.core.engine import (
    EM,
    FitResult,
    Status,
    _check_iterations,
    _resolve,
    _run,
    _starts_from_keys,
    is_key,
    prepare_data,
)
from jaxem.core.precision import jit
from jaxem.core.subsample import sample_size

Array = jax.Array


@partial(jit, static_argnames=("algo", "max_iter"))
def _start(
    algo: EM, params: Any, x: Any, weights: Array | None, tol: Array, max_iter: int
) -> FitResult:
    return jax.vmap(lambda p: _run(algo, p, x, weights, tol, max_iter, 0, pause_at=0))(params)


@partial(jit, static_argnames=("algo", "max_iter"))
def _round(algo, lanes, x, weights, tol, max_iter, pause_at):
    def one(lane: FitResult) -> FitResult:
        return _run(algo, lane.params, x, weights, tol, max_iter, 0, resume=lane, pause_at=pause_at)

    return jax.vmap(one)(lanes)


def fit_restarts_pruned(
    algo: EM,
    init: Any,
    x: Any,
    weights: Any = None,
    *,
    num_restarts: int | None = None,
    max_iter: int = 100,
    tol: float = 1e-3,
    prune_every: int = 10,
    keep_fraction: float = 0.5,
    min_restarts: int = 1,
    verbose: bool = False,
) -> tuple[FitResult, FitResult]:
    """:func:`jaxem.fit_restarts` that drops lagging restarts every ``prune_every`` iterations.

    Args:
        algo, init, x, weights, num_restarts, max_iter, tol: as in :func:`jaxem.fit_restarts`.
        prune_every: iterations between two cuts.
        keep_fraction: fraction of the lanes still in the race (not dropped, finite) kept at a cut.
        min_restarts: never keep fewer lanes than this.
        verbose: print the lanes dropped at each cut.

    Returns:
        ``(best, all)``: the best surviving lane, and every lane; a dropped lane has status
        ``Status.PRUNED``, the parameters and objective it had when dropped, and ``num_iters`` the
        iteration at which it was dropped (``jnp.flatnonzero(all.status == Status.PRUNED)`` lists
        them).

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (300, 2))
        >>> algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(3)))
        >>> best, lanes = jaxem.fit_restarts_pruned(
        ...     algo, jax.random.key(0), x, num_restarts=8, prune_every=5, tol=0.0, max_iter=20)
        >>> int((lanes.status == jaxem.Status.PRUNED).sum())
        7
    """
    x, weights = prepare_data(x, weights)
    _check_iterations(max_iter, tol)
    if not isinstance(prune_every, int) or prune_every < 1:
        raise ValueError(f"prune_every must be a positive integer, got {prune_every!r}.")
    if not 0 < keep_fraction < 1:
        raise ValueError(f"keep_fraction must be in (0, 1), got {keep_fraction!r}.")
    if not isinstance(min_restarts, int) or min_restarts < 1:
        raise ValueError(f"min_restarts must be a positive integer, got {min_restarts!r}.")
    tol = jnp.asarray(tol, jax.tree.leaves(x)[0].dtype)
    if is_key(init):
        keys = init
        if init.ndim == (0 if jax.dtypes.issubdtype(init.dtype, jax.dtypes.prng_key) else 1):
            if num_restarts is None or num_restarts < 1:
                raise ValueError("num_restarts must be a positive integer when init is one key.")
            keys = jax.random.split(init, num_restarts)
        algo = _resolve(algo, x, keys.shape[0])
        starts = _starts_from_keys(algo.model, keys, x, weights, sample_size(x))
        lanes = _start(algo, starts, x, weights, tol, max_iter)
    else:
        algo = _resolve(algo, x, jax.tree.leaves(init)[0].shape[0])
        lanes = _start(algo, init, x, weights, tol, max_iter)

    status = np.asarray(lanes.status).copy()
    pause_at = 0
    while np.any(status == Status.RUNNING):
        pause_at = min(pause_at + prune_every, max_iter)
        running = np.flatnonzero(status == Status.RUNNING)
        advanced = _round(
            algo,
            jax.tree.map(lambda a, rows=running: a[rows], lanes),
            x,
            weights,
            tol,
            max_iter,
            pause_at,
        )
        lanes = jax.tree.map(lambda a, b, rows=running: a.at[rows].set(b), lanes, advanced)
        status = np.asarray(lanes.status).copy()
        in_race = np.flatnonzero((status != Status.PRUNED) & (status != Status.NONFINITE))
        keep = max(min_restarts, math.ceil(keep_fraction * in_race.size))
        if not np.any(status == Status.RUNNING) or in_race.size <= keep:
            continue
        score = np.asarray(lanes.log_likelihood)
        threshold = np.sort(score[in_race])[::-1][keep - 1]
        dropped = in_race[(status[in_race] == Status.RUNNING) & (score[in_race] < threshold)]
        if dropped.size:
            status[dropped] = Status.PRUNED
            lanes = lanes._replace(status=jnp.asarray(status, lanes.status.dtype))
            if verbose:
                print(f"jaxem: iteration {pause_at}, dropped restarts {dropped.tolist()}")

    candidate = (status != Status.PRUNED) & (status != Status.NONFINITE)
    score = np.where(candidate, np.asarray(lanes.log_likelihood), -np.inf)
    best = int(np.argmax(score))
    return jax.tree.map(lambda a: a[best], lanes), lanes
