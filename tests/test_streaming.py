"""Out-of-core exact EM: chunked, memory-mapped .npy, chunk generator and in-memory fits agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem
from jaxem import io as jio
from jaxem import streaming
from jaxem.core import subsample
from jaxem.core.rows import Rows, initial_params

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

    # Stopped in the middle of a pass: the state of the last whole iteration survives. The source
    # stops at the fourth chunk of the first pass it starts once iteration 8 was saved.
    like = algo.kernel.init(params, algo.rows(x), tol=0.0, max_iter=12)

    def interrupted():
        saved_iterations = int(jio.load_checkpoint(checkpoint, like).state.iteration)
        for index, start in enumerate(range(0, len(x), CHUNK)):
            if saved_iterations == 8 and index == 3:
                raise KeyboardInterrupt
            yield x[start : start + CHUNK]

    with pytest.raises(KeyboardInterrupt):
        streaming.fit_stream(algo, params, interrupted, max_iter=12, tol=0.0, checkpoint=checkpoint)
    # The checkpoint holds the kernel's state, in the structure of a state of this fit.
    saved = jio.load_checkpoint(checkpoint, like)
    assert int(saved.state.iteration) == 8
    assert int(saved.state.status) == jaxem.Status.RUNNING
    np.testing.assert_allclose(saved.history, expected.history[:8], atol=1e-10, rtol=0)
    eight = jaxem.fit(algo, params, x, max_iter=8, tol=0.0)
    for got, want in zip(
        jax.tree.leaves(saved.state.params), jax.tree.leaves(eight.params), strict=True
    ):
        np.testing.assert_allclose(got, want, atol=1e-10, rtol=0)

    resumed = streaming.fit_stream(algo, params, x, max_iter=12, tol=0.0, checkpoint=checkpoint)
    assert_same(resumed, expected)


def chunked(x, row_weights=None, size=CHUNK):
    """A function returning a new generator of chunks of ``size`` rows, the last one shorter."""

    def chunks():
        for start in range(0, len(x), size):
            rows = slice(start, start + size)
            yield x[rows] if row_weights is None else (x[rows], row_weights[rows])

    return chunks


@pytest.mark.timeout(120)
def test_key_on_few_rows_initialises_from_all_of_them(problem):
    x, weights, algo, _, _ = problem
    assert len(x) < subsample.sample_size(x)
    expected = jaxem.fit(algo, jax.random.key(5), x, weights, max_iter=3, tol=0.0)
    result = streaming.fit_stream(algo, jax.random.key(5), chunked(x, weights), max_iter=3, tol=0)
    assert_same(result, expected)


# ---- from a key, on more rows than the sample holds ---------------------------------------------

SAMPLE_ROWS = 64  # below the 1003 rows, so the start comes from a sample


@pytest.fixture
def sorted_problem(monkeypatch):
    monkeypatch.setattr(subsample, "SAMPLE_ROWS", SAMPLE_ROWS)
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(size=(500, 2)) - 3, rng.normal(size=(503, 2)) + 3])
    x = x[np.argsort(x[:, 0])]  # the first chunks hold the left cluster only
    weights = rng.uniform(0.5, 2.0, len(x))
    # A model and shape of their own, so that no fit compiled with the full sample size is reused.
    algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2, covariance_type="diag")), chunk_size=CHUNK)
    return x, weights, algo


@pytest.mark.timeout(120)
def test_key_draws_the_in_memory_sample_from_every_source(sorted_problem, tmp_path):
    x, weights, algo = sorted_problem
    key, fit = jax.random.key(5), dict(max_iter=5, tol=0.0)
    expected = jaxem.fit(algo, key, x, **fit)
    assert len(x) % CHUNK == 43
    assert_same(streaming.fit_stream(algo, key, chunked(x), **fit), expected)
    np.save(tmp_path / "x.npy", x)
    assert_same(streaming.fit_stream(algo, key, tmp_path / "x.npy", **fit), expected)

    weighted = jaxem.fit(algo, key, x, weights, **fit)
    # Another chunking (the last chunk of 3 rows) draws the same rows.
    assert_same(streaming.fit_stream(algo, key, chunked(x, weights, 250), **fit), weighted)


@pytest.mark.timeout(120)
def test_key_start_on_sorted_data_spans_the_data(sorted_problem):
    x, _, algo = sorted_problem
    key = jax.random.key(6)
    start = streaming.fit_stream(algo, key, chunked(x), max_iter=0).params
    first_chunk = algo.model.init(key, jnp.asarray(x[:CHUNK]), None)
    assert np.all(np.asarray(first_chunk.components.means[:, 0]) < 0)
    means = np.asarray(start.components.means[:, 0])
    assert means.min() < 0 < means.max()
    in_memory = initial_params(
        algo.model, key, Rows.in_memory(jnp.asarray(x)), subsample.sample_size(x)
    )
    for got, want in zip(jax.tree.leaves(start), jax.tree.leaves(in_memory), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-12, rtol=0)


@pytest.mark.timeout(120)
def test_restart_lane_from_a_key_equals_stream_from_that_key(sorted_problem):
    x, _, algo = sorted_problem
    keys = jax.random.split(jax.random.key(7), 2)
    _, lanes = jaxem.fit_restarts(algo, keys, x, max_iter=4, tol=0.0)
    for lane in range(2):
        result = streaming.fit_stream(algo, keys[lane], chunked(x), max_iter=4, tol=0.0)
        assert_same(result, jax.tree.map(lambda a, i=lane: a[i], lanes))


@pytest.mark.timeout(120)
def test_resume_from_a_key_skips_the_sample_pass(sorted_problem, tmp_path):
    x, _, algo = sorted_problem
    key = jax.random.key(8)
    expected = jaxem.fit(algo, key, x, max_iter=5, tol=0.0)
    # The same fits from the parameters the key draws: they need no sample pass.
    params = initial_params(
        algo.model, key, Rows.in_memory(jnp.asarray(x)), subsample.sample_size(x)
    )
    passes = {"count": 0}

    def counted():
        passes["count"] += 1
        return chunked(x)()

    def count_passes(init, max_iter, checkpoint):
        passes["count"] = 0
        result = streaming.fit_stream(
            algo, init, counted, max_iter=max_iter, tol=0.0, checkpoint=checkpoint
        )
        return passes["count"], result

    from_key, from_params = tmp_path / "key.npz", tmp_path / "params.npz"
    assert count_passes(key, 3, from_key)[0] == count_passes(params, 3, from_params)[0] + 1
    key_passes, resumed = count_passes(key, 5, from_key)
    assert key_passes == count_passes(params, 5, from_params)[0]
    assert_same(resumed, expected)


@pytest.mark.timeout(120)
def test_one_pass_over_a_chunk_source_per_iteration(problem):
    x, _, algo, params, _ = problem
    passes = {"count": 0}

    def counted():
        passes["count"] += 1
        return chunked(x)()

    streaming.fit_stream(algo, params, counted, max_iter=3, tol=0.0)
    # The scan of the source (its rows, total weight, values), 3 iterations, the final objective.
    assert passes["count"] == 1 + 3 + 1
    passes["count"] = 0
    streaming.fit_stream(algo, jax.random.key(0), counted, max_iter=3, tol=0.0)
    assert passes["count"] == 1 + 1 + 3 + 1  # and the sample pass


@pytest.mark.timeout(60)
def test_errors(problem, tmp_path):
    x, _, algo, params, _ = problem
    with pytest.raises(ValueError, match="one-shot iterator"):
        streaming.fit_stream(algo, params, iter([x]))
    with pytest.raises(ValueError, match=r"is not a \.npy file"):
        streaming.fit_stream(algo, params, tmp_path / "x.csv")
    with pytest.raises(ValueError, match=r"row_weights has shape \(2,\) but x has 1003 rows"):
        streaming.fit_stream(algo, params, x, np.ones(2))
    bad = x.copy()
    bad[5 * CHUNK + 1, 0] = np.nan
    with pytest.raises(ValueError, match="Chunk 5 of the source contains NaN"):
        streaming.fit_stream(algo, params, bad, max_iter=2)
    with pytest.raises(ValueError, match="Chunk 5 of the source contains NaN"):
        streaming.fit_stream(algo, jax.random.key(0), bad, max_iter=2)  # in the sample pass
    with pytest.raises(ValueError, match="no chunks"):
        streaming.fit_stream(algo, params, lambda: iter([]))
    # A checkpoint of another fit (here: 2 components, not 3) is refused, not resumed from.
    checkpoint = tmp_path / "s.npz"
    streaming.fit_stream(algo, params, x, max_iter=1, tol=0.0, checkpoint=checkpoint)
    other = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2)), chunk_size=CHUNK)
    other_params = other.model.init(jax.random.key(0), jnp.asarray(x), None)
    with pytest.raises(ValueError, match="was saved for another fit"):
        streaming.fit_stream(other, other_params, x, max_iter=2, checkpoint=checkpoint)
    with pytest.raises(ValueError, match="was saved for another fit"):
        jio.load_checkpoint(checkpoint, other.kernel.init(other_params, other.rows(x)))
