"""The EM engine: chunking, restarts, compilation caching, weights, status codes and validation."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem
from jaxem.core import subsample
from jaxem.core.rows import chunk_width, default_chunk_size, reduce_chunks
from jaxem.testing import count_compilations

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def two_blobs(seed: int = 0, n: int = 150, dtype=np.float64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(size=(n, 2)), rng.normal(size=(n, 2)) * 0.7 + [4.0, 1.0]])
    return x.astype(dtype)


def start_params(family: jaxem.Gaussian, means, scale: float = 1.0) -> jaxem.MixtureParams:
    means = jnp.asarray(means, jnp.float64)
    k, d = means.shape
    cov = {
        "full": jnp.stack([scale * jnp.eye(d)] * k),
        "tied": scale * jnp.eye(d),
        "diag": jnp.full((k, d), scale),
        "spherical": jnp.full((k,), scale),
    }[family.covariance_type]
    return jaxem.MixtureParams(jnp.full((k,), 1.0 / k), family.params_from_covariances(means, cov))


def assert_trees_close(actual, expected, rtol, atol=0.0):
    leaves_a, tree_a = jax.tree.flatten(actual)
    leaves_e, tree_e = jax.tree.flatten(expected)
    assert tree_a == tree_e
    for a, e in zip(leaves_a, leaves_e, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol)


# ---- chunked reduction ---------------------------------------------------------------------------


def test_reduce_chunks_sees_every_row_once_with_global_indices():
    x = jnp.arange(23.0)[:, None]
    weights = jnp.arange(23.0) % 3

    def fn(xc, wc, rows):
        return jnp.stack([jnp.sum(xc), jnp.sum(wc * xc[:, 0]), jnp.sum(rows), rows.shape[0] * 0.0])

    expected = jnp.array([253.0, float(np.sum(np.arange(23.0) * (np.arange(23) % 3))), 253.0, 0.0])
    for chunk_size in (None, 1, 5, 7, 22, 23, 100):
        np.testing.assert_array_equal(reduce_chunks(fn, x, weights, chunk_size), expected)


def test_default_chunks_follow_the_models_intermediates():
    # Expanded float64 full covariance: D (D + 1) / 2 + D features plus K responsibilities per row;
    # float32 full keeps the [C, K, D] differences; diagonal: 2 D features plus K.
    x64, x32 = jnp.zeros((1, 16), jnp.float64), jnp.zeros((1, 16), jnp.float32)
    full, diag = jaxem.Mixture(jaxem.Gaussian(16)), jaxem.Mixture(jaxem.Gaussian(16, "diag"))
    assert chunk_width(full, x64) == 168  # the tests run with 64-bit mode on (conftest.py)
    assert chunk_width(full, x32) == 256
    assert chunk_width(diag, x32) == 48
    assert chunk_width(jaxem.Mixture(jaxem.Poisson(3)), jnp.zeros((1, 5))) == 15
    # The power of two nearest 2^19 / width, at least 256, at most N; restarts divide by the lanes
    # but keep 1024 rows for the shared products.
    assert default_chunk_size(10**6, 168, platform="cpu") == 4096  # 2^19 / 168 = 3121
    assert default_chunk_size(10**6, 52, platform="cpu") == 8192  # 10082
    assert default_chunk_size(10**6, 52, lanes=32, platform="cpu") == 1024
    assert default_chunk_size(10**6, 10**6, platform="cpu") == 256
    assert default_chunk_size(1000, 52, platform="cpu") == 1000
    # GPUs and TPUs: 2^25 elements.
    assert default_chunk_size(10**7, 64, platform="gpu") == 524288
    assert default_chunk_size(20000, 2048, platform="gpu") == 16384
    assert default_chunk_size(10**7, 64, lanes=32, platform="tpu") == 16384
    assert default_chunk_size(10**6, 64) == default_chunk_size(
        10**6, 64, platform=jax.default_backend()
    )


@pytest.mark.timeout(120)
def test_a_start_compiled_for_another_sample_size_is_not_reused(monkeypatch):
    # The sample size is read when fit is called, not frozen into a cached program.
    x = two_blobs(11)
    algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2, "spherical")))
    with monkeypatch.context() as patch:
        patch.setattr(subsample, "SAMPLE_ROWS", 16)
        sampled = jaxem.fit(algo, jax.random.key(0), x, max_iter=0)
    whole = jaxem.fit(algo, jax.random.key(0), x, max_iter=0)
    direct = algo.model.init(jax.random.key(0), jnp.asarray(x), None)
    np.testing.assert_allclose(whole.params.components.means, direct.components.means, rtol=1e-12)
    assert not np.allclose(sampled.params.components.means, direct.components.means)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_chunked_e_step_equals_whole(covariance_type):
    x = jnp.asarray(two_blobs(1, 100))  # 200 rows
    weights = jnp.asarray(np.random.default_rng(2).uniform(0.0, 2.0, size=200))
    family = jaxem.Gaussian(2, covariance_type=covariance_type)
    params = start_params(family, [[0.0, 0.0], [3.0, 1.0]], scale=2.0)
    model = jaxem.Mixture(family)
    whole = jax.jit(jaxem.em(model).e_pass)
    # 64 leaves a short last chunk of 8; 1 is a chunk per row.
    for chunk_size in (1, 64):
        chunked = jax.jit(jaxem.em(model, chunk_size=chunk_size).e_pass)
        for w in (None, weights):
            assert_trees_close(chunked(params, x, w), whole(params, x, w), rtol=1e-12, atol=1e-12)


# ---- restarts ------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_restart_lane_equals_single_fit():
    x = two_blobs(3)
    algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(3, covariance_type="diag")))
    key = jax.random.key(7)
    best, lanes = jaxem.fit_restarts(algo, key, x, num_restarts=4, max_iter=40)
    keys = jax.random.split(key, 4)
    for i in range(4):
        single = jaxem.fit(algo, keys[i], x, max_iter=40)
        lane = jax.tree.map(lambda a, i=i: a[i], lanes)
        assert int(lane.num_iters) == int(single.num_iters)
        assert int(lane.status) == int(single.status)
        assert_trees_close(lane.params, single.params, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(lane.history, single.history, rtol=1e-10)
    # The best lane is the one with the highest final log-likelihood.
    chosen = int(np.argmax(np.asarray(lanes.log_likelihood)))
    np.testing.assert_array_equal(best.log_likelihood, lanes.log_likelihood[chosen])
    assert_trees_close(best.params, jax.tree.map(lambda a: a[chosen], lanes.params), rtol=0)


def test_restarts_from_a_batch_of_keys_or_of_params():
    x = two_blobs(4)
    family = jaxem.Gaussian(2, covariance_type="spherical")
    algo = jaxem.em(jaxem.Mixture(family))
    keys = jax.random.split(jax.random.key(0), 3)
    _, from_keys = jaxem.fit_restarts(algo, keys, x, max_iter=20)
    _, from_one_key = jaxem.fit_restarts(algo, jax.random.key(0), x, num_restarts=3, max_iter=20)
    assert_trees_close(from_keys, from_one_key, rtol=0)
    starts = [start_params(family, m) for m in ([[0, 0], [4, 1]], [[1, 1], [2, 2]])]
    batch = jax.tree.map(lambda *a: jnp.stack(a), *starts)
    _, from_params = jaxem.fit_restarts(algo, batch, x, max_iter=20)
    single = jaxem.fit(algo, starts[1], x, max_iter=20)
    assert_trees_close(jax.tree.map(lambda a: a[1], from_params), single, rtol=1e-10)


# ---- non-finite lanes ----------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_nonfinite_lane_stops_and_never_wins():
    """With reg_covar=0, a component that no point reaches gets a zero covariance, whose Cholesky
    factorisation fails: that lane stops as NONFINITE; the others run exactly as alone."""
    x = two_blobs(5)
    family = jaxem.Gaussian(2, reg_covar=0.0)
    algo = jaxem.em(jaxem.Mixture(family))
    starts = [
        start_params(family, [[-1.0, 0.0], [5.0, 0.0]]),
        start_params(family, [[0.0, 0.0], [1e6, 1e6]]),  # the second component gets no point
        start_params(family, [[1.0, 1.0], [3.0, 0.0]]),
    ]
    batch = jax.tree.map(lambda *a: jnp.stack(a), *starts)
    best, lanes = jaxem.fit_restarts(algo, batch, x, max_iter=50)

    status = np.asarray(lanes.status)
    assert status[1] == jaxem.Status.NONFINITE
    assert int(lanes.num_iters[1]) == 1
    assert np.asarray(lanes.log_likelihood)[1] == -np.inf
    # The stopped lane keeps its last finite parameters (here: the start).
    assert_trees_close(jax.tree.map(lambda a: a[1], lanes.params), starts[1], rtol=0)
    for i in (0, 2):
        assert status[i] == jaxem.Status.CONVERGED
        single = jaxem.fit(algo, starts[i], x, max_iter=50)
        assert_trees_close(jax.tree.map(lambda a, i=i: a[i], lanes), single, rtol=1e-10)
    assert np.isfinite(float(best.log_likelihood))
    assert int(best.status) == jaxem.Status.CONVERGED
    # A single fit reports the same.
    alone = jaxem.fit(algo, starts[1], x, max_iter=50)
    assert int(alone.status) == jaxem.Status.NONFINITE
    assert float(alone.log_likelihood) == -np.inf


def test_all_lanes_nonfinite_still_returns():
    x = two_blobs(5)
    family = jaxem.Gaussian(2, reg_covar=0.0)
    batch = jax.tree.map(
        lambda *a: jnp.stack(a), *[start_params(family, [[0.0, 0.0], [1e6, 1e6]])] * 2
    )
    best, lanes = jaxem.fit_restarts(jaxem.em(jaxem.Mixture(family)), batch, x, max_iter=5)
    assert np.all(np.asarray(lanes.status) == jaxem.Status.NONFINITE)
    assert int(best.status) == jaxem.Status.NONFINITE


# ---- compilation caching -------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_second_fit_does_not_compile_again():
    family = jaxem.Gaussian(2)
    x1, x2 = two_blobs(6), two_blobs(7)
    jaxem.fit(jaxem.em(jaxem.Mixture(family)), jax.random.key(0), x1, max_iter=5)
    jaxem.fit_restarts(jaxem.em(jaxem.Mixture(family)), jax.random.key(0), x1, num_restarts=2)
    # New data, key, tol and a new but equal configuration: nothing compiles.
    with count_compilations() as compiled:
        jaxem.fit(
            jaxem.em(jaxem.Mixture(jaxem.Gaussian(2))), jax.random.key(1), x2, max_iter=5, tol=0
        )
        jaxem.fit_restarts(
            jaxem.em(jaxem.Mixture(jaxem.Gaussian(2))),
            jax.random.key(3),
            x2,
            num_restarts=2,
            tol=1e-5,
        )
    assert compiled == []
    # max_iter is a run-time value within its history bucket (16 entries up to 16 iterations)...
    with count_compilations() as compiled:
        jaxem.fit(jaxem.em(jaxem.Mixture(family)), jax.random.key(0), x1, max_iter=6)
    assert compiled == []
    # ... and a longer history compiles the fit program again, and nothing else (the start from a
    # key does not depend on max_iter).
    with count_compilations() as compiled:
        jaxem.fit(jaxem.em(jaxem.Mixture(family)), jax.random.key(0), x1, max_iter=40)
    assert len(compiled) == 1, compiled


# ---- weights -------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_integer_weights_equal_repeated_rows(covariance_type):
    x = two_blobs(8, 60)
    counts = np.random.default_rng(9).integers(0, 4, size=len(x))
    counts[0] = 2
    repeated = np.repeat(x, counts, axis=0)
    family = jaxem.Gaussian(2, covariance_type=covariance_type)
    algo = jaxem.em(jaxem.Mixture(family))
    start = start_params(family, [[0.0, 0.0], [3.0, 0.0]])
    weighted = jaxem.fit(algo, start, x, counts, max_iter=30, tol=0)
    plain = jaxem.fit(algo, start, repeated, max_iter=30, tol=0)
    assert_trees_close(weighted.params, plain.params, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(weighted.history, plain.history, rtol=1e-12)
    np.testing.assert_allclose(weighted.log_likelihood, plain.log_likelihood, rtol=1e-12)


# ---- the loop ------------------------------------------------------------------------------------


def test_status_and_history_bookkeeping():
    x = two_blobs(10)
    family = jaxem.Gaussian(2)
    algo = jaxem.em(jaxem.Mixture(family))
    start = start_params(family, [[0.0, 0.0], [3.0, 0.0]])

    capped = jaxem.fit(algo, start, x, max_iter=3, tol=0)
    assert int(capped.status) == jaxem.Status.MAX_ITER and int(capped.num_iters) == 3
    assert np.all(np.isfinite(capped.history))

    done = jaxem.fit(algo, start, x, max_iter=200, tol=1e-8)
    n = int(done.num_iters)
    assert int(done.status) == jaxem.Status.CONVERGED and 3 < n < 200
    history = np.asarray(done.history)
    assert np.all(np.isfinite(history[:n])) and np.all(np.isnan(history[n:]))
    # The history holds totals; the stopping rule compares the mean per row with tol.
    mean = history / len(x)
    assert abs(mean[n - 1] - mean[n - 2]) < 1e-8 <= abs(mean[n - 2] - mean[n - 3])
    # The first entries agree with the capped run; log_likelihood is the total at the result.
    np.testing.assert_allclose(history[:3], capped.history, rtol=1e-14)
    np.testing.assert_allclose(
        done.log_likelihood, algo.log_likelihood(done.params, x, None), rtol=1e-14
    )

    untouched = jaxem.fit(algo, start, x, max_iter=0)
    assert int(untouched.status) == jaxem.Status.MAX_ITER and int(untouched.num_iters) == 0
    assert untouched.history.shape == (0,)
    assert_trees_close(untouched.params, start, rtol=0)
    np.testing.assert_allclose(untouched.log_likelihood, algo.log_likelihood(start, x, None))


def test_float32_in_float32_out_and_inputs_untouched():
    x = two_blobs(11, dtype=np.float32)
    weights = np.ones(len(x), np.float32)
    copies = x.copy(), weights.copy()
    result = jaxem.fit(jaxem.em(jaxem.Mixture(jaxem.Gaussian(2))), jax.random.key(0), x, weights)
    for leaf in [*jax.tree.leaves(result.params), result.log_likelihood, result.history]:
        assert leaf.dtype == jnp.float32
    np.testing.assert_array_equal(x, copies[0])
    np.testing.assert_array_equal(weights, copies[1])


def test_verbose_prints_progress(capsys):
    x = two_blobs(12)
    family = jaxem.Gaussian(2, covariance_type="spherical")
    start = start_params(family, [[0.0, 0.0], [3.0, 0.0]])
    jaxem.fit(jaxem.em(jaxem.Mixture(family)), start, x, max_iter=4, tol=0, verbose=2)
    jax.effects_barrier()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in lines] == ["jaxem: iteration 2", "jaxem: iteration 4"]


# ---- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda a, x: jaxem.em(a.model, chunk_size=0),
            "chunk_size must be a positive integer or None, got 0.",
        ),
        (
            lambda a, x: jaxem.fit(a, jax.random.key(0), x, max_iter=-1),
            "max_iter must be a non-negative integer, got -1.",
        ),
        (
            lambda a, x: jaxem.fit(a, jax.random.key(0), x, tol=np.nan),
            "tol must be a non-negative number, got nan.",
        ),
        (
            lambda a, x: jaxem.fit(a, jax.random.key(0), x[:0]),
            "x has 0 rows: pass at least one data point.",
        ),
        (
            lambda a, x: jaxem.fit(a, jax.random.key(0), np.where(x > 3, np.nan, x)),
            "x contains NaN or infinity: remove or impute those values before fitting.",
        ),
        (
            lambda a, x: jaxem.fit(a, jax.random.key(0), x, np.ones(3)),
            "row_weights has shape (3,) but x has 300 rows: pass one weight per row.",
        ),
        (
            lambda a, x: jaxem.fit(a, jax.random.key(0), x, -np.ones(300)),
            "row_weights must be finite and non-negative.",
        ),
        (
            lambda a, x: jaxem.fit(a, jax.random.key(0), x, np.zeros(300)),
            "row_weights are all zero: at least one point must have positive weight.",
        ),
        (
            lambda a, x: jaxem.fit_restarts(a, jax.random.key(0), x),
            "num_restarts must be a positive integer when init is one key.",
        ),
    ],
)
def test_bad_input_is_a_clear_error(call, message):
    algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2)))
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        call(algo, two_blobs(13))


def test_dirichlet_concentration_below_one_is_refused():
    with pytest.raises(ValueError, match=r"weight_concentration must be >= 1, got 0.5"):
        jaxem.Mixture(jaxem.Gaussian(2), weight_concentration=0.5)
