"""Initialisation from a key on a bounded sample of the rows: the sample is the same for every
chunking and every number of devices, so a sharded fit from a key equals the fit on one device,
and no device gathers more than its shard and the sample."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from four_devices import assert_same_leaves, run_worker

import jaxem
from jaxem.core import subsample
from jaxem.core.rows import Rows, initial_params

NUM_POINTS = 1001  # not divisible by 4: the last shard is padded with weight-0 rows
SAMPLE_ROWS = 256  # the sample's size in these tests: below NUM_POINTS, so the sample is used
MAX_ITER = 5


def make_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = np.array([[4.0, 0.0], [-4.0, 1.0], [0.0, -4.0]])
    x = centres[rng.integers(0, 3, NUM_POINTS)] + rng.normal(size=(NUM_POINTS, 2))
    return x, rng.uniform(0.5, 2.0, NUM_POINTS)


def make_algo() -> jaxem.EM:
    # A chunk size of its own, so that no compiled fit is shared with tests that use the full
    # sample size.
    return jaxem.em(jaxem.Mixture(jaxem.Gaussian(3)), chunk_size=97)


WORKER = """
import os, sys
# Every program XLA compiles is written out as text (the flags must be set before JAX starts).
dump = os.path.join(os.path.dirname({out!r}), "hlo")
os.environ["XLA_FLAGS"] += f" --xla_dump_to={{dump}} --xla_dump_hlo_as_text"
import jax
import numpy as np
from jaxem import parallel
from jaxem.core import subsample
sys.path.insert(0, {tests!r})
from four_devices import leaves_by_name
from test_parallel_init import MAX_ITER, SAMPLE_ROWS, collective_sizes, make_algo, make_data

subsample.SAMPLE_ROWS = SAMPLE_ROWS
assert len(jax.devices()) == 4 and jax.config.jax_enable_x64
x, weights = make_data()
algo = make_algo()
fit = dict(max_iter=MAX_ITER, tol=0.0)
results = {{
    "single": parallel.fit_sharded(algo, jax.random.key(1), x, **fit),
    "weighted": parallel.fit_sharded(algo, jax.random.key(2), x, weights, **fit),
    "lanes": parallel.fit_restarts_sharded(
        algo, jax.random.key(7), x, num_restarts=4,
        mesh=parallel.data_mesh(num_restart_shards=2), **fit
    )[1],
}}
out = leaves_by_name(results)
# The collectives of the programs a sharded fit from a key compiles, on 8 times the rows.
before = set(os.listdir(dump))
parallel.fit_sharded(algo, jax.random.key(0), np.concatenate([x] * 8), max_iter=1, tol=0.0)
texts = [
    open(os.path.join(dump, name)).read()
    for name in sorted(set(os.listdir(dump)) - before)
    if name.endswith("after_optimizations.txt")
]
assert texts, "no program was compiled"
for kind in ("all-gather", "all-reduce"):
    sizes = [size for text in texts for size in collective_sizes(text, kind)]
    out[kind + "_largest"] = np.asarray(max(sizes, default=0))
    out[kind + "_count"] = np.asarray(len(sizes))
others = ("all-to-all", "collective-permute", "reduce-scatter")
out["other_collectives"] = np.asarray(
    sum(len(collective_sizes(text, kind)) for text in texts for kind in others)
)
np.savez({out!r}, **out)
"""


def collective_sizes(hlo: str, kind: str) -> list[int]:
    """Elements of every array that the ``kind`` collectives (e.g. ``"all-gather"``) of a
    compiled HLO module produce, one entry per array (a tuple-shaped result gives several)."""
    sizes = []
    for line in hlo.splitlines():
        match = re.search(rf"=\s*(.*?)\s{re.escape(kind)}(?:-start)?\(", line)
        if match is None:
            continue
        for dims in re.findall(r"\[([\d,]*)\]", match.group(1)):
            sizes.append(int(np.prod([int(d) for d in dims.split(",") if d])))
    return sizes


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return run_worker(tmp_path_factory, "init", WORKER)


@pytest.fixture
def small_sample(monkeypatch):
    monkeypatch.setattr(subsample, "SAMPLE_ROWS", SAMPLE_ROWS)


@pytest.mark.timeout(280)
def test_sharded_fits_from_keys_on_a_sample_equal_one_device(sharded, small_sample):
    x, weights = make_data()
    fit = dict(max_iter=MAX_ITER, tol=0.0)
    algo = make_algo()
    assert_same_leaves(sharded, "single", jaxem.fit(algo, jax.random.key(1), x, **fit))
    assert_same_leaves(sharded, "weighted", jaxem.fit(algo, jax.random.key(2), x, weights, **fit))
    _, lanes = jaxem.fit_restarts(algo, jax.random.key(7), x, num_restarts=4, **fit)
    assert_same_leaves(sharded, "lanes", lanes)


@pytest.mark.timeout(280)
def test_sharded_initialisation_gathers_only_the_candidate_lists(sharded):
    # 8008 rows over 4 devices (2002 x 2 values a shard): the collectives move the 4 lists of
    # SAMPLE_ROWS + 1 candidates, the sample (SAMPLE_ROWS x 2) and the E-step's statistics, never
    # the data.
    assert int(sharded["all-gather_count"]) > 0
    assert int(sharded["all-gather_largest"]) <= 4 * (SAMPLE_ROWS + 1)
    assert int(sharded["all-reduce_count"]) > 0
    assert int(sharded["all-reduce_largest"]) <= 4 * (SAMPLE_ROWS + 1)
    assert int(sharded["other_collectives"]) == 0


@pytest.mark.timeout(60)
def test_collective_sizes_read_every_array_of_a_result():
    hlo = (
        "  %g = f64[1,1028]{0,1} all-gather(%a), dimensions={1}\n"
        "  %r = (f64[1,3,2,2]{2,3,1,0}, f64[1]{0}) all-reduce(%b, %c), to_apply=%add\n"
        "  %s = f64[4]{0} all-reduce-start(%d), to_apply=%add\n"
        "  %t = f64[4]{0} add(%e, %f)\n"
    )
    assert collective_sizes(hlo, "all-gather") == [1028]
    assert collective_sizes(hlo, "all-reduce") == [12, 1, 4]


@pytest.mark.timeout(60)
def test_sample_is_the_same_for_every_chunking():
    x, weights = make_data()
    key, size = jax.random.key(3), 300
    whole, whole_weights = jax.jit(subsample.sample_rows, static_argnames=("size",))(
        key, x, weights, size=size
    )
    # The rows ranked chunk by chunk (the last chunk shorter), as a stream or a device ranks its
    # rows, give the same sample.
    rank = jax.jit(subsample.rank_rows, static_argnames=("length",))
    for chunk in (96, 250, NUM_POINTS):
        assert chunk == NUM_POINTS or NUM_POINTS % chunk != 0
        ranking = subsample.empty_ranking(size, jnp.float64, True)
        for start in range(0, NUM_POINTS, chunk):
            stop = min(start + chunk, NUM_POINTS)
            ranking = rank(ranking, key, stop - start, jnp.asarray(weights[start:stop]), start)
        _, rows, sample_weights = subsample.ranked_sample(ranking, size)
        np.testing.assert_array_equal(x[np.asarray(rows)], whole)
        np.testing.assert_array_equal(sample_weights, whole_weights)


@pytest.mark.timeout(60)
def test_sample_rows_in_order_weights_estimate_the_total():
    x, weights = make_data()
    index = np.arange(NUM_POINTS, dtype=np.float64)[:, None]
    weights = weights.copy()
    weights[::2] = 0.0  # rows of weight 0 are never drawn while enough others remain
    sample, sample_weights = subsample.sample_rows(
        jax.random.key(4), jnp.asarray(index), jnp.asarray(weights), 200
    )
    rows = np.asarray(sample[:, 0]).astype(int)
    assert np.all(np.diff(rows) > 0)
    assert np.all(rows % 2 == 1)
    # Priority sampling: weighted sums over the sample estimate those over all rows.
    assert float(jnp.sum(sample_weights)) == pytest.approx(weights.sum(), rel=0.05)
    assert np.all(np.asarray(sample_weights) >= weights[rows] - 1e-12)
    unweighted, none = subsample.sample_rows(jax.random.key(4), jnp.asarray(x), None, 200)
    assert none is None and unweighted.shape == (200, 2)


@pytest.mark.timeout(60)
def test_initial_params_use_all_rows_up_to_the_sample_size(small_sample):
    x, _ = make_data()
    model = make_algo().model
    few = jnp.asarray(x[:SAMPLE_ROWS])
    key = jax.random.key(5)
    same = initial_params(model, key, Rows.in_memory(few), subsample.sample_size(few))
    jax.tree.map(np.testing.assert_array_equal, same, model.init(key, few, None))
    # One row more: the model initialises from the sample, with the second half of the key.
    many = jnp.asarray(x[: SAMPLE_ROWS + 1])
    key_sample, key_init = jax.random.split(key)
    sample, _ = subsample.sample_rows(key_sample, many, None, SAMPLE_ROWS)
    drawn = initial_params(model, key, Rows.in_memory(many), subsample.sample_size(many))
    jax.tree.map(np.testing.assert_array_equal, drawn, model.init(key_init, sample, None))


@pytest.mark.timeout(60)
def test_sample_size_bounds_rows_and_bytes():
    assert subsample.sample_size(np.zeros((3, 8), np.float32)) == subsample.SAMPLE_ROWS
    long_rows = np.zeros((3, 1 << 20), np.float64)  # 8 MiB rows
    assert subsample.sample_size(long_rows) == subsample.SAMPLE_BYTES // (8 << 20)
