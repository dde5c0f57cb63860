"""jaxem.testing.check_model catches a broken family. (The built-in families pass it: see
tests/models/test_contracts.py.)"""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

import jaxem
from jaxem.core.constraints import Real, Simplex
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


def test_check_model_catches_a_broken_m_step(data):
    @dataclasses.dataclass(frozen=True)
    class Broken(jaxem.Gaussian):
        def m_step(self, params, stats):
            new = super().m_step(params, stats)
            return new._replace(means=new.means + 0.5)  # not a maximiser: Q and log p go down

    with pytest.raises(AssertionError, match="the objective decreased"):
        check_model(jaxem.Mixture(Broken(2, "spherical")), data, max_iter=10, fixed_point=False)


def test_check_model_catches_constraints_that_do_not_hold_the_parameters(data):
    @dataclasses.dataclass(frozen=True)
    class Broken(jaxem.Gaussian):
        def constraints(self):
            # Spherical precision factors are positive, not a probability vector.
            return jaxem.GaussianParams(Real(), Simplex())

    with pytest.raises(AssertionError, match="unconstrained round trip differ"):
        check_model(jaxem.Mixture(Broken(2, "spherical")), data, max_iter=5, fixed_point=False)


def test_check_model_catches_a_family_compared_by_identity(data):
    # Equal only to itself: a copy of the family is another configuration, so every fit with it
    # compiles again.
    class ByIdentity(jaxem.Gaussian):
        __eq__ = object.__eq__
        __hash__ = object.__hash__

    with pytest.raises(AssertionError, match="a second fit compiled again"):
        check_model(jaxem.Mixture(ByIdentity(2, "spherical")), data, max_iter=5, fixed_point=False)
