"""Sharded fits combined with SQUAREM and with hidden Markov models: 4 host devices (a subprocess)
equal one device, with data sizes that leave padding on the last shard."""

import jax
import numpy as np
import pytest
from four_devices import assert_same_leaves, run_worker

import jaxem
from jaxem.hmm import HiddenMarkovModel, pad_sequences

NUM_POINTS = 1001  # not divisible by 4: the last shard is padded with weight-0 rows
SEQUENCE_LENGTHS = [23, 31, 17, 40, 26, 35, 19]  # 7 sequences: one padding sequence of length 0
MAX_ITER = 20


def mixture_data() -> tuple[np.ndarray, np.ndarray]:
    # Overlapping clusters, so that EM is still slow after MAX_ITER and SQUAREM changes the path.
    rng = np.random.default_rng(0)
    centres = np.array([[1.5, 0.0], [-1.5, 0.5], [0.0, -1.5]])
    x = centres[rng.integers(0, 3, NUM_POINTS)] + rng.normal(size=(NUM_POINTS, 2))
    return x, rng.uniform(0.5, 2.0, NUM_POINTS)


def sequence_data() -> tuple[object, np.ndarray]:
    rng = np.random.default_rng(1)
    lengths = np.array(SEQUENCE_LENGTHS)
    centres = rng.normal(size=(len(lengths), 2)) * 3
    x = rng.normal(size=(lengths.sum(), 2)) + np.repeat(centres, lengths, axis=0)
    return pad_sequences(x, lengths), rng.uniform(0.5, 2.0, len(lengths))


def squarem_algo() -> jaxem.EM:
    return jaxem.em(jaxem.Mixture(jaxem.Gaussian(3)), chunk_size=128, accelerate="squarem")


def hmm_algo() -> jaxem.EM:
    return jaxem.em(HiddenMarkovModel(jaxem.Gaussian(3, "diag")), chunk_size=2)


WORKER = """
import sys
import jax
import numpy as np
from jaxem import parallel
sys.path.insert(0, {tests!r})
from four_devices import leaves_by_name
from test_parallel_combinations import (
    MAX_ITER, hmm_algo, mixture_data, sequence_data, squarem_algo
)

assert len(jax.devices()) == 4 and jax.config.jax_enable_x64
x, weights = mixture_data()
data, sequence_weights = sequence_data()
fit = dict(max_iter=MAX_ITER, tol=0.0)
results = {{
    "squarem": parallel.fit_sharded(squarem_algo(), jax.random.key(1), x, weights, **fit),
    "squarem_lanes": parallel.fit_restarts_sharded(
        squarem_algo(), jax.random.key(7), x, num_restarts=4,
        mesh=parallel.data_mesh(num_restart_shards=2), **fit
    )[1],
    "hmm": parallel.fit_sharded(hmm_algo(), jax.random.key(3), data, sequence_weights, **fit),
}}
out = leaves_by_name(results)
np.savez({out!r}, **out)
"""


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return run_worker(tmp_path_factory, "combinations", WORKER)


@pytest.mark.timeout(280)
def test_squarem_on_four_devices_equals_one_device(sharded):
    x, weights = mixture_data()
    expected = jaxem.fit(squarem_algo(), jax.random.key(1), x, weights, max_iter=MAX_ITER, tol=0.0)
    assert_same_leaves(sharded, "squarem", expected)
    # The fit took SQUAREM's path, not plain EM's: the same E-step count reaches a higher objective.
    plain = jaxem.fit(
        jaxem.em(squarem_algo().model, chunk_size=128),
        jax.random.key(1),
        x,
        weights,
        max_iter=MAX_ITER,
        tol=0.0,
    )
    assert float(expected.log_likelihood) > float(plain.log_likelihood) + 1e-6


@pytest.mark.timeout(280)
def test_squarem_restarts_by_data_mesh_equal_restarts_on_one_device(sharded):
    x, _ = mixture_data()
    _, lanes = jaxem.fit_restarts(
        squarem_algo(), jax.random.key(7), x, num_restarts=4, max_iter=MAX_ITER, tol=0.0
    )
    assert_same_leaves(sharded, "squarem_lanes", lanes)


@pytest.mark.timeout(280)
def test_hmm_sharded_over_sequences_equals_one_device(sharded):
    data, weights = sequence_data()
    assert len(SEQUENCE_LENGTHS) % 4 != 0
    expected = jaxem.fit(hmm_algo(), jax.random.key(3), data, weights, max_iter=MAX_ITER, tol=0.0)
    assert_same_leaves(sharded, "hmm", expected)
