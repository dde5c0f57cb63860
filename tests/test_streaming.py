"""Out-of-core exact EM: chunked, memory-mapped .npy, chunk generator and in-memory fits agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem
from jaxem import streaming

CHUNK = 96  # 1003 rows: ten full chunks and a short last one of 43


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(500, 3)) + 3, rng.normal(size=(503, 3)) - 3])
    x = rng.permutation(x)
    weights = rng.uniform(0.5, 2.0, len(x))
    algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(3)), chunk_size=CHUNK)
    params = algo.model.init(jax.random.key(1), jnp.asarray(x), None)
    expected = jaxem.fit(algo, params, x, max_iter=12, tol=0.0)
    return x, weights, algo, params, expected


def assert_same(result, expected, atol=1e-10):
    for got, want in zip(
        jax.tree.leaves(result.params), jax.tree.leaves(expected.params), strict=True
    ):
        np.testing.assert_allclose(got, want, atol=atol, rtol=0)
    np.testing.assert_allclose(result.log_likelihood, expected.log_likelihood, atol=atol, rtol=0)
    np.testing.assert_allclose(result.history, expected.history, atol=atol, rtol=0)
    assert int(result.num_iters) == int(expected.num_iters)
    assert int(result.status) == int(expected.status)


@pytest.mark.timeout(120)
def test_memmap_npy_equals_in_memory(problem, tmp_path):
    x, _, algo, params, expected = problem
    np.save(tmp_path / "x.npy", x)
    result = streaming.fit_stream(algo, params, tmp_path / "x.npy", max_iter=12, tol=0.0)
    assert_same(result, expected)
    # The in-memory fit with one chunk of everything is the same EM too.
    whole = jaxem.fit(jaxem.em(algo.model, chunk_size=len(x)), params, x, max_iter=12, tol=0.0)
    assert_same(result, whole)


@pytest.mark.timeout(120)
def test_generator_with_short_last_chunk_and_weights_equals_in_memory(problem):
    x, weights, algo, params, _ = problem
    expected = jaxem.fit(algo, params, x, weights, max_iter=12, tol=0.0)

    def chunks():
        for start in range(0, len(x), CHUNK):
            yield x[start : start + CHUNK], weights[start : start + CHUNK]

    assert len(x) % CHUNK == 43
    assert_same(streaming.fit_stream(algo, params, chunks, max_iter=12, tol=0.0), expected)


@pytest.mark.timeout(120)
def test_convergence_rule_matches_fit(problem):
    x, _, algo, params, _ = problem
    expected = jaxem.fit(algo, params, x, max_iter=100, tol=1e-4)
    assert int(expected.status) == jaxem.Status.CONVERGED
    assert_same(streaming.fit_stream(algo, params, x, max_iter=100, tol=1e-4), expected)


@pytest.mark.timeout(120)
def test_stop_and_resume_equals_one_run(problem, tmp_path):
    x, _, algo, params, expected = problem
    checkpoint = tmp_path / "state.npz"
    first = streaming.fit_stream(algo, params, x, max_iter=5, tol=0.0, checkpoint=checkpoint)
    assert int(first.num_iters) == 5 and int(first.status) == jaxem.Status.MAX_ITER

    # Stopped in the middle of a pass: the state of the last whole iteration survives.
    calls = {"chunks": 0}

    def interrupted():
        for start in range(0, len(x), CHUNK):
            calls["chunks"] += 1
            if calls["chunks"] == 3 * 11 + 4:
                raise KeyboardInterrupt
            yield x[start : start + CHUNK]

    with pytest.raises(KeyboardInterrupt):
        streaming.fit_stream(algo, params, interrupted, max_iter=12, tol=0.0, checkpoint=checkpoint)
    assert streaming.load_state(checkpoint, params).iteration == 8

    resumed = streaming.fit_stream(algo, params, x, max_iter=12, tol=0.0, checkpoint=checkpoint)
    assert_same(resumed, expected)


@pytest.mark.timeout(120)
def test_key_initialises_from_first_chunk(problem):
    x, _, algo, _, _ = problem
    params = algo.model.init(jax.random.key(5), jnp.asarray(x[:CHUNK]), None)
    expected = jaxem.fit(algo, params, x, max_iter=3, tol=0.0)
    result = streaming.fit_stream(algo, jax.random.key(5), x, max_iter=3, tol=0.0)
    assert_same(result, expected)


@pytest.mark.timeout(60)
def test_errors(problem, tmp_path):
    x, _, algo, params, _ = problem
    with pytest.raises(ValueError, match="one-shot iterator"):
        streaming.fit_stream(algo, params, iter([x]))
    with pytest.raises(ValueError, match=r"is not a \.npy file"):
        streaming.fit_stream(algo, params, tmp_path / "x.csv")
    with pytest.raises(ValueError, match=r"weights has shape \(2,\) but x has 1003 rows"):
        streaming.fit_stream(algo, params, x, np.ones(2))
    bad = x.copy()
    bad[5 * CHUNK + 1, 0] = np.nan
    with pytest.raises(ValueError, match="Chunk 5 of the source contains NaN"):
        streaming.fit_stream(algo, params, bad, max_iter=2)
    with pytest.raises(ValueError, match="no chunks"):
        streaming.fit_stream(algo, params, lambda: iter([]))
    other = jaxem.Mixture(jaxem.Gaussian(2))
    streaming.save_state(tmp_path / "s.npz", streaming.StreamState(params, 1, 0.0, 0, np.zeros(1)))
    with pytest.raises(ValueError, match="saved for other parameters"):
        streaming.load_state(
            tmp_path / "s.npz", other.init(jax.random.key(0), jnp.asarray(x), None)
        )
