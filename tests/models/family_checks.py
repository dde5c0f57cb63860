"""Helpers shared by the family tests (the contract itself is checked in test_contracts.py)."""

from __future__ import annotations

import itertools

import numpy as np

import jaxem


def assert_monotone(history, num_iters=None, slack: float = 1e-12) -> None:
    """The recorded log-likelihood never decreases beyond rounding (relative ``slack``).

    ``history`` is a fit's (``[max_iter]``) or a batch of restarts' (``[lanes, max_iter]``); a
    :class:`jaxem.FitResult` stands for its history cut at its ``num_iters``. Entries after a
    lane stopped are NaN and are skipped.
    """
    if isinstance(history, jaxem.FitResult):
        history, num_iters = history.history, int(history.num_iters)
    h = np.asarray(history, np.float64)
    if num_iters is not None:
        h = h[..., :num_iters]
    assert h.shape[-1] >= 2
    steps = np.diff(h, axis=-1)
    ok = np.isnan(steps) | (steps >= -slack * np.maximum(1.0, np.abs(h[..., 1:])))
    assert np.all(ok), f"largest decrease {np.nanmin(steps)!r}"


def best_permutation(estimated: np.ndarray, truth: np.ndarray) -> tuple[int, ...]:
    """The order of the estimated components closest (summed absolute error) to the truth."""
    k = truth.shape[0]
    return min(
        itertools.permutations(range(k)),
        key=lambda order: float(np.abs(estimated[list(order)] - truth).sum()),
    )
