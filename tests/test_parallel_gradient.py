"""Sharded fits with the gradient (generalized-EM) M-step: Q and its gradient are summed over the
devices, so 4 host devices (a subprocess) take the same steps as one device. So does a user's own
M-step that makes a pass over the rows: every pass over a shard sums over the devices."""

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from four_devices import assert_same_leaves, run_worker

import jaxem
from jaxem.testing import gradient_only

NUM_POINTS = 1001  # not divisible by 4: the last shard is padded with weight-0 rows
MAX_ITER = 12


def make_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = np.array([[3.0, 0.0], [-3.0, 1.0], [0.0, -3.0]])
    x = centres[rng.integers(0, 3, NUM_POINTS)] + rng.standard_t(4.0, size=(NUM_POINTS, 2))
    return x, rng.uniform(0.5, 2.0, NUM_POINTS)


def student_algo() -> jaxem.EM:
    # Means and scales in closed form (ECM), degrees of freedom by L-BFGS on Q.
    return jaxem.em(jaxem.Mixture(jaxem.StudentT(3)), jaxem.Gradient(), chunk_size=128)


def gaussian_algo() -> jaxem.EM:
    # Every block by Adam on Q: the whole gradient path, nothing in closed form but the weights.
    mstep = jaxem.Gradient(optimizer=jaxem.Optimizer(optax.adam, 0.05), num_steps=5)
    return jaxem.em(jaxem.Mixture(gradient_only(jaxem.Gaussian(3, "diag"))), mstep, chunk_size=128)


@dataclass(frozen=True)
class OwnWeights:
    """A user's M-step (the protocol of jaxem.core.mstep.MStep): the components in closed form,
    the mixture weights from a pass of its own over the rows divided by their total weight."""

    def init_state(self, model: Any, params: Any) -> None:
        return None

    def update(self, model: Any, params: Any, stats: Any, rows: Any, state: Any) -> tuple:
        counts = rows.reduce(lambda xc, wc, _: model.e_step(params, xc, wc)[0].counts)
        weights = (counts / rows.total_weight(counts.dtype)).astype(params.weights.dtype)
        return model.m_step(params, stats)._replace(weights=weights), state, jnp.array(True)


def custom_algo() -> jaxem.EM:
    return jaxem.em(jaxem.Mixture(jaxem.Gaussian(3, "diag")), OwnWeights(), chunk_size=128)


WORKER = """
import sys
import jax
import numpy as np
from jaxem import parallel
sys.path.insert(0, {tests!r})
from four_devices import leaves_by_name
from test_parallel_gradient import (
    MAX_ITER, custom_algo, gaussian_algo, make_data, student_algo
)

assert len(jax.devices()) == 4 and jax.config.jax_enable_x64
x, weights = make_data()
fit = dict(max_iter=MAX_ITER, tol=0.0)
results = {{
    "student": parallel.fit_sharded(student_algo(), jax.random.key(1), x, weights, **fit),
    "gaussian_lanes": parallel.fit_restarts_sharded(
        gaussian_algo(), jax.random.key(3), x, num_restarts=2,
        mesh=parallel.data_mesh(num_restart_shards=2), **fit
    )[1],
    "custom": parallel.fit_sharded(custom_algo(), jax.random.key(5), x, weights, **fit),
}}
out = leaves_by_name(results)
np.savez({out!r}, **out)
"""


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return run_worker(tmp_path_factory, "gradient", WORKER)


def assert_same_fit(out, name, expected):
    # rtol: a degrees-of-freedom estimate in the hundreds sits where Q is nearly flat.
    assert_same_leaves(out, name, expected, rtol=1e-8, atol=1e-8)


@pytest.mark.timeout(280)
def test_student_t_gradient_mstep_on_four_devices_equals_one_device(sharded):
    x, weights = make_data()
    fit = dict(max_iter=MAX_ITER, tol=0.0)
    expected = jaxem.fit(student_algo(), jax.random.key(1), x, weights, **fit)
    # The gradient step moved the degrees of freedom away from their start.
    assert np.all(np.abs(np.asarray(expected.params.components.dof) - 10.0) > 1e-2)
    assert_same_fit(sharded, "student", expected)


@pytest.mark.timeout(280)
def test_gaussian_gradient_restarts_by_data_mesh_equal_one_device(sharded):
    x, _ = make_data()
    _, lanes = jaxem.fit_restarts(
        gaussian_algo(), jax.random.key(3), x, num_restarts=2, max_iter=MAX_ITER, tol=0.0
    )
    assert_same_fit(sharded, "gaussian_lanes", lanes)


@pytest.mark.timeout(280)
def test_own_mstep_with_a_pass_over_the_rows_on_four_devices_equals_one_device(sharded):
    x, weights = make_data()
    fit = dict(max_iter=MAX_ITER, tol=0.0)
    expected = jaxem.fit(custom_algo(), jax.random.key(5), x, weights, **fit)
    # The M-step is EM's: its weights are the closed form's (counts over the total weight).
    closed = jaxem.em(custom_algo().model, chunk_size=128)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-10),
        expected,
        jaxem.fit(closed, jax.random.key(5), x, weights, **fit),
    )
    # Shard-local counts over a shard's weight would differ: the pass summed over the devices.
    assert_same_fit(sharded, "custom", expected)
