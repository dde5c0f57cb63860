"""Sharded fits: rows over a 4-device mesh (a subprocess with 4 host devices) equal one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from four_devices import TESTS, run_on_four_devices

import jaxem
from jaxem import parallel

NUM_POINTS = 1001  # not divisible by 4: the last shard is padded with weight-0 rows


def make_data() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = np.array([[4.0, 0.0, 1.0], [-4.0, 1.0, 0.0], [0.0, -4.0, 2.0]])
    labels = rng.integers(0, 3, NUM_POINTS)
    return centres[labels] + rng.normal(size=(NUM_POINTS, 3))


def make_algo() -> jaxem.EM:
    return jaxem.em(jaxem.Mixture(jaxem.Gaussian(3)), chunk_size=128)


WORKER = """
import sys
import jax
import numpy as np
import jaxem
from jaxem import parallel
from jaxem.drivers.sharded import place_rows
sys.path.insert(0, {tests!r})
from test_parallel import make_algo, make_data

assert len(jax.devices()) == 4 and jax.config.jax_enable_x64
x = make_data()
weights = np.random.default_rng(1).uniform(0.5, 2.0, len(x))
algo = make_algo()
params = jax.tree.map(np.asarray, dict(np.load({init!r})))
params = jaxem.MixtureParams(
    params["weights"], jaxem.GaussianParams(params["means"], params["precision_cholesky"])
)
out = {{}}
single = parallel.fit_sharded(algo, params, x, max_iter=25, tol=0.0)
weighted = parallel.fit_sharded(algo, params, x, weights, max_iter=25, tol=0.0)
mesh = parallel.data_mesh(num_restart_shards=2)
best, lanes = parallel.fit_restarts_sharded(
    algo, jax.random.key(7), x, num_restarts=4, mesh=mesh, max_iter=25, tol=0.0
)
for name, result in [("single", single), ("weighted", weighted), ("lanes", lanes)]:
    out[name + "_means"] = np.asarray(result.params.components.means)
    out[name + "_weights"] = np.asarray(result.params.weights)
    out[name + "_prec"] = np.asarray(result.params.components.precision_cholesky)
    out[name + "_loglik"] = np.asarray(result.log_likelihood)
    out[name + "_iters"] = np.asarray(result.num_iters)
out["best_loglik"] = np.asarray(best.log_likelihood)
# The rows as the 4 shards hold them: 1001 rows in shards of 251, the last one padded.
placed = place_rows(x, weights, parallel.data_mesh())
out["placed_x"] = np.asarray(placed.x)
out["placed_weights"] = np.asarray(placed.row_weights)
out["placed_offsets"] = np.asarray(placed.row_offsets)
out["placed_shard_rows"] = np.asarray(placed.shard_rows)
out["placed_num_real_rows"] = np.asarray(placed.num_real_rows)
unweighted = place_rows(x, None, parallel.data_mesh())
out["unweighted_weights"] = np.asarray(unweighted.row_weights)
out["unweighted_flag"] = np.asarray([unweighted.weighted, placed.weighted])
np.savez({out!r}, **out)
"""


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sharded")
    algo = make_algo()
    params = algo.model.init(jax.random.key(1), jnp.asarray(make_data()), None)
    np.savez(
        tmp / "init.npz",
        weights=params.weights,
        means=params.components.means,
        precision_cholesky=params.components.precision_cholesky,
    )
    run_on_four_devices(
        WORKER.format(tests=str(TESTS), init=str(tmp / "init.npz"), out=str(tmp / "out.npz")),
        tmp,
    )
    return params, dict(np.load(tmp / "out.npz"))


def assert_same_fit(out, name, result):
    np.testing.assert_allclose(out[name + "_means"], result.params.components.means, atol=1e-10)
    np.testing.assert_allclose(out[name + "_weights"], result.params.weights, atol=1e-10)
    np.testing.assert_allclose(
        out[name + "_prec"], result.params.components.precision_cholesky, atol=1e-10
    )
    np.testing.assert_allclose(out[name + "_loglik"], result.log_likelihood, atol=1e-10)
    np.testing.assert_array_equal(out[name + "_iters"], result.num_iters)


@pytest.mark.timeout(280)
def test_four_devices_equal_one_device(sharded):
    params, out = sharded
    x = make_data()
    assert_same_fit(out, "single", jaxem.fit(make_algo(), params, x, max_iter=25, tol=0.0))


@pytest.mark.timeout(280)
def test_four_devices_equal_one_device_with_weights(sharded):
    params, out = sharded
    x = make_data()
    weights = np.random.default_rng(1).uniform(0.5, 2.0, len(x))
    expected = jaxem.fit(make_algo(), params, x, weights, max_iter=25, tol=0.0)
    assert_same_fit(out, "weighted", expected)


@pytest.mark.timeout(280)
def test_restarts_by_data_mesh_equal_restarts_on_one_device(sharded):
    _, out = sharded
    # Padding rows (weight 0) are never drawn as k-means++ seeds, so keys give the same starts.
    _, lanes = jaxem.fit_restarts(
        make_algo(), jax.random.key(7), make_data(), num_restarts=4, max_iter=25, tol=0.0
    )
    assert_same_fit(out, "lanes", lanes)
    assert out["best_loglik"] == pytest.approx(float(jnp.max(lanes.log_likelihood)), abs=1e-10)


@pytest.mark.timeout(280)
def test_four_shards_pad_the_last_one_with_weight_zero_copies_of_a_real_row(sharded):
    _, out = sharded
    x = make_data()
    weights = np.random.default_rng(1).uniform(0.5, 2.0, len(x))
    pad = 4 * 251 - NUM_POINTS
    assert pad == 3
    np.testing.assert_array_equal(out["placed_x"][:NUM_POINTS], x)
    np.testing.assert_array_equal(out["placed_x"][NUM_POINTS:], np.repeat(x[-1:], pad, axis=0))
    np.testing.assert_array_equal(out["placed_weights"], np.concatenate([weights, np.zeros(pad)]))
    # Without row weights, padding alone brings them: 1 per real row, 0 per padding row.
    np.testing.assert_array_equal(
        out["unweighted_weights"], np.concatenate([np.ones(NUM_POINTS), np.zeros(pad)])
    )
    assert out["unweighted_flag"].tolist() == [False, True]
    np.testing.assert_array_equal(out["placed_offsets"], [0, 251, 502, 753])
    np.testing.assert_array_equal(out["placed_shard_rows"], [251, 251, 251, 248])
    assert int(out["placed_num_real_rows"]) == NUM_POINTS


@pytest.mark.timeout(60)
def test_one_device_adds_no_padding_rows():
    x = np.arange(10.0).reshape(5, 2)
    mesh = parallel.data_mesh(devices=jax.devices()[:1])
    xs, ws = parallel.shard_rows(x, None, mesh)
    assert ws is None and xs.shape == (5, 2)
    xs, ws = parallel.shard_rows(x, np.full(5, 2.0), mesh)
    np.testing.assert_array_equal(np.asarray(ws), np.full(5, 2.0))


@pytest.mark.timeout(60)
def test_errors():
    x = make_data()
    algo = make_algo()
    with pytest.raises(ValueError, match="row_weights has shape \\(3,\\) but x has 1001 rows"):
        parallel.fit_sharded(algo, jax.random.key(0), x, np.ones(3))
    with pytest.raises(ValueError, match="x contains NaN or infinity"):
        parallel.fit_sharded(algo, jax.random.key(0), np.where(x > 5, np.nan, x))
    with pytest.raises(ValueError, match="num_restart_shards must be a positive divisor"):
        parallel.data_mesh(num_restart_shards=0)
    with pytest.raises(ValueError, match="num_restarts must be a positive integer"):
        parallel.fit_restarts_sharded(algo, jax.random.key(0), x)
    with pytest.raises(ValueError, match="coordinator_address, num_processes and process_id"):
        parallel.initialize_distributed("127.0.0.1:1234")
    with pytest.raises(ValueError, match="process_id must be an integer in \\[0, 2\\)"):
        parallel.initialize_distributed("127.0.0.1:1234", 2, 2)


@pytest.mark.timeout(60)
def test_process_rows_single_process():
    assert parallel.process_rows(7) == slice(0, 7)
