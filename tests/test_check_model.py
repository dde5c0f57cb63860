"""The model contract (jaxem.testing.check_model) on the built-in families of this engine."""

import jax
import jax.numpy as jnp
import optax
import pytest

import jaxem
from jaxem.models.student_t import StudentT
from jaxem.testing import check_model

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def data():
    k1, k2 = jax.random.split(jax.random.key(0))
    return jnp.concatenate(
        [
            jax.random.normal(k1, (40, 2)),
            jnp.array([4.0, 2.0]) + 0.6 * jax.random.normal(k2, (40, 2)),
        ]
    )


@pytest.mark.slow
@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_gaussian_passes_the_contract(data, covariance_type):
    # The full-covariance fixed point is checked in test_gradient.py.
    check_model(
        jaxem.Mixture(jaxem.Gaussian(2, covariance_type)),
        data,
        max_iter=15,
        fixed_point=covariance_type != "full",
    )


@pytest.mark.slow
def test_student_t_passes_the_contract(data):
    check_model(
        jaxem.Mixture(StudentT(2)),
        data,
        mstep=jaxem.Gradient(optimizer=jaxem.Optimizer(optax.adam, 0.1), num_steps=3),
        max_iter=6,
        fixed_point=False,
    )


def test_float32_passes_the_contract(data):
    check_model(
        jaxem.Mixture(jaxem.Gaussian(2, "spherical")),
        data.astype(jnp.float32),
        max_iter=10,
        fixed_point=False,
    )


def test_check_model_catches_a_broken_m_step(data):
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Broken(jaxem.Gaussian):
        def m_step(self, params, stats):
            new = super().m_step(params, stats)
            return new._replace(means=new.means + 0.5)  # not a maximiser: Q and log p go down

    with pytest.raises(AssertionError, match="the objective decreased"):
        check_model(jaxem.Mixture(Broken(2, "spherical")), data, max_iter=10, fixed_point=False)
