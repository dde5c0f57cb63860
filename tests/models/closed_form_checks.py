"""Checks shared by the tests of the closed-form families."""

from __future__ import annotations

import itertools

import jax
import numpy as np

import jaxem


def assert_monotone(result: jaxem.FitResult, slack: float = 1e-10) -> None:
    """The recorded objective never decreases (beyond rounding)."""
    history = np.asarray(result.history)[: int(result.num_iters)]
    assert history.size >= 2
    steps = np.diff(history)
    assert np.all(steps >= -slack * np.maximum(1.0, np.abs(history[1:]))), steps.min()


def best_permutation(estimated: np.ndarray, truth: np.ndarray) -> tuple[int, ...]:
    """The order of the estimated components closest (summed absolute error) to the truth."""
    k = truth.shape[0]
    return min(
        itertools.permutations(range(k)),
        key=lambda order: float(np.abs(estimated[list(order)] - truth).sum()),
    )


def assert_chunked_equals_whole(model: jaxem.Mixture, x, chunk_size: int = 97) -> None:
    """Chunked and single-pass fits from the same key give the same parameters."""
    key = jax.random.key(3)
    whole = jaxem.fit(jaxem.em(model), key, x, max_iter=20, tol=0.0)
    chunked = jaxem.fit(jaxem.em(model, chunk_size=chunk_size), key, x, max_iter=20, tol=0.0)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12),
        whole.params,
        chunked.params,
    )
    np.testing.assert_allclose(whole.history, chunked.history, rtol=1e-11)


def assert_lane_equals_single(model: jaxem.Mixture, x, num_restarts: int = 3) -> None:
    """Restart lane i equals a single fit started from the i-th key."""
    algo = jaxem.em(model)
    keys = jax.random.split(jax.random.key(5), num_restarts)
    _, lanes = jaxem.fit_restarts(algo, keys, x, max_iter=20)
    for i in range(num_restarts):
        single = jaxem.fit(algo, keys[i], x, max_iter=20)
        assert int(single.num_iters) == int(lanes.num_iters[i])
        jax.tree.map(
            lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-9, atol=1e-12),
            lanes.params,
            single.params,
        )
