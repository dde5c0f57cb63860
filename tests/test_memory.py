"""Memory in N: checks that scan the data without O(N) temporaries, and initialisation from a
bounded sample of the rows everywhere a fit starts from a key."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem
from jaxem.core import subsample
from jaxem.core.inputs import prepare_data
from jaxem.core.rows import Rows, initial_params

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("position", [(0, 0), (517, 2), (999, 3)])
def test_finiteness_check_finds_one_bad_value_anywhere(value, position):
    x = np.random.default_rng(0).normal(size=(1000, 4)).astype(np.float32)
    prepare_data(x)  # finite: accepted
    x[position] = value
    with pytest.raises(ValueError, match=r"^x contains NaN or infinity"):
        prepare_data(x)


def test_finiteness_check_covers_every_leaf_and_accepts_the_largest_finite_values():
    big = np.full((10, 3), np.finfo(np.float32).max, np.float32)
    prepare_data({"a": big, "b": -big, "empty": np.zeros((10, 0), np.float32)})
    bad = big.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"^x contains NaN or infinity"):
        prepare_data({"a": big, "b": bad})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.nan, "row_weights must be finite and non-negative."),
        (np.inf, "row_weights must be finite and non-negative."),
        (-1e-30, "row_weights must be finite and non-negative."),
    ],
)
def test_weight_check_finds_one_bad_weight(value, message):
    x = np.zeros((100, 2))
    weights = np.ones(100)
    prepare_data(x, weights)
    weights[63] = value
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        prepare_data(x, weights)
    with pytest.raises(ValueError, match=r"^row_weights are all zero"):
        prepare_data(x, np.zeros(100))


# ---- every entry point that starts from a key starts where jaxem.fit does ----------------------

SAMPLE_ROWS = 64  # below the 300 rows of these tests, so the initialisation uses a sample


@pytest.fixture
def small_sample(monkeypatch):
    monkeypatch.setattr(subsample, "SAMPLE_ROWS", SAMPLE_ROWS)


def clustered_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    centres = np.array([[5.0, 0.0], [-5.0, 1.0], [0.0, -5.0]])
    x = centres[rng.integers(0, 3, 300)] + rng.normal(size=(300, 2))
    return x, rng.uniform(0.5, 2.0, 300)


def sampled_algo() -> jaxem.EM:
    # A chunk size of its own, so that no fit compiled with the full sample size is reused.
    return jaxem.em(jaxem.Mixture(jaxem.Gaussian(3)), chunk_size=101)


def assert_same(a, b, rtol=1e-12):
    for left, right in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(left, right, rtol=rtol, atol=1e-12)


def assert_differ(a, b):
    assert any(
        not np.allclose(left, right)
        for left, right in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_the_sample_changes_the_start(small_sample):
    """The other tests of this section would pass trivially if the sample gave the same start."""
    x, _ = clustered_data()
    algo = sampled_algo()
    key = jax.random.key(0)
    start = jaxem.fit(algo, key, x, max_iter=0).params
    assert_same(
        start,
        initial_params(
            algo.model, key, Rows.in_memory(jnp.asarray(x)), subsample.sample_size(jnp.asarray(x))
        ),
    )
    assert_differ(start, algo.model.init(key, jnp.asarray(x), None))


def test_pruned_restarts_start_where_fit_restarts_do(small_sample):
    x, weights = clustered_data()
    algo = sampled_algo()
    fit = dict(num_restarts=3, max_iter=4, tol=0.0)
    _, plain = jaxem.fit_restarts(algo, jax.random.key(2), x, weights, **fit)
    # prune_every above max_iter: no lane is ever cut, so every lane is the unpruned fit.
    _, pruned = jaxem.fit_restarts_pruned(
        algo, jax.random.key(2), x, weights, prune_every=10, **fit
    )
    assert_same(pruned.params, plain.params, rtol=1e-10)
    np.testing.assert_allclose(pruned.history, plain.history, rtol=1e-10)


def test_bound_trace_starts_where_fit_does(small_sample):
    x, weights = clustered_data()
    algo = sampled_algo()
    trace = jaxem.trace_bound(algo, jax.random.key(3), x, weights, num_iters=3)
    result = jaxem.fit(algo, jax.random.key(3), x, weights, max_iter=3, tol=0.0)
    np.testing.assert_allclose(trace.log_likelihood[:3], result.history, rtol=1e-10)
    assert_same(trace.params, result.params, rtol=1e-10)


def test_estimator_user_weights_start_from_the_sampled_parameters(small_sample):
    """Given only ``weights_init``, the estimator takes the rest of each restart's start from the
    restart's key, where the fit from that key starts."""
    x, _ = clustered_data()
    weights_init = np.array([0.2, 0.3, 0.5])
    seed, num_restarts = 4, 2
    # max_iter=0: the estimator's parameters are the start of its best restart.
    gm = jaxem.GaussianMixture(
        3, weights_init=weights_init, n_init=num_restarts, max_iter=0, random_state=seed
    ).fit(x)
    algo = jaxem.em(gm.model_)
    keys = jax.random.split(jax.random.key(seed), num_restarts)  # restart i starts from keys[i]
    starts = [jaxem.fit(algo, key, x, max_iter=0).params for key in keys]
    starts = [start._replace(weights=jnp.asarray(weights_init)) for start in starts]
    # Every restart's start: its log-likelihood (the estimator records means per row) ...
    expected = [float(algo.log_likelihood(start, x)) / len(x) for start in starts]
    np.testing.assert_allclose(gm.restart_log_likelihoods_, expected, rtol=1e-10)
    # ... and the best one's parameters.
    best = starts[int(np.argmax(expected))]
    np.testing.assert_array_equal(gm.weights_, weights_init)
    np.testing.assert_allclose(gm.means_, best.components.means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        gm.precisions_cholesky_, best.components.precision_cholesky, rtol=1e-10, atol=1e-12
    )
    assert_differ(starts[0].components, starts[1].components)


def test_numpy_input_is_copied_once_and_never_aliased():
    """The data go to the device in one copy (jnp.asarray would keep a second one), and the copy
    is never the caller's own memory, even where the runtime could use it in place (64-byte
    aligned rows): changing the array after the call changes nothing the fit reads."""
    raw = np.zeros(1000 * 4 * 4 + 64, np.uint8)
    start = -raw.ctypes.data % 64
    x = raw[start : start + 1000 * 4 * 4].view(np.float32).reshape(1000, 4)
    x[:] = np.arange(4000, dtype=np.float32).reshape(1000, 4)
    prepared, _ = prepare_data(x)
    assert prepared.unsafe_buffer_pointer() != x.ctypes.data
    x[:] = -1.0
    np.testing.assert_array_equal(prepared, np.arange(4000, dtype=np.float32).reshape(1000, 4))
