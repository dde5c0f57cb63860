"""Sharded fits with the gradient (generalized-EM) M-step: Q and its gradient are summed over the
devices, so 4 host devices (a subprocess) take the same steps as one device."""

import jax
import numpy as np
import optax
import pytest
from test_parallel import assert_same_leaves, run_worker

import jaxem
from jaxem import parallel
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


WORKER = """
import sys
import jax
import numpy as np
from jaxem import parallel
sys.path.insert(0, {tests!r})
from test_parallel import leaves_by_name
from test_parallel_gradient import MAX_ITER, gaussian_algo, make_data, student_algo

assert len(jax.devices()) == 4 and jax.config.jax_enable_x64
x, weights = make_data()
fit = dict(max_iter=MAX_ITER, tol=0.0)
results = {{
    "student": parallel.fit_sharded(student_algo(), jax.random.key(1), x, weights, **fit),
    "gaussian_lanes": parallel.fit_restarts_sharded(
        gaussian_algo(), jax.random.key(3), x, num_restarts=2,
        mesh=parallel.data_mesh(num_restart_shards=2), **fit
    )[1],
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


@pytest.mark.timeout(60)
def test_sharded_fit_rejects_an_mstep_that_cannot_sum_over_devices():
    class Custom:
        def update(self, model, params, stats, x, weights, chunk_size):
            return model.m_step(params, stats)

    algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2)), Custom())
    with pytest.raises(ValueError, match=r"jaxem\.ClosedForm or jaxem\.Gradient, got Custom"):
        parallel.fit_sharded(algo, jax.random.key(0), make_data()[0])
