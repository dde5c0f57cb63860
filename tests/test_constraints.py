"""Constraint maps: round trips, images inside the set, prefix pytrees."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxem import GaussianParams
from jaxem.core import constraints as cons
from jaxem.core.mstep import broadcast_prefix

pytestmark = pytest.mark.timeout(60)


def _random(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float64)


def test_positive_round_trip_and_image():
    c = cons.Positive(minimum=0.5)
    u = 10 * _random((50,))
    p = c.forward(u)
    assert bool(jnp.all(p > 0.5))
    np.testing.assert_allclose(c.forward(c.inverse(p)), p, rtol=1e-12)
    # Large values must not overflow in the inverse.
    np.testing.assert_allclose(c.inverse(jnp.asarray(1e3)), 1e3 - 0.5, rtol=1e-12)


def test_interval_round_trip():
    c = cons.Interval(-2.0, 3.0)
    p = c.forward(_random((20,)))
    assert bool(jnp.all((p > -2) & (p < 3)))
    np.testing.assert_allclose(c.forward(c.inverse(p)), p, rtol=1e-12)


def test_simplex_sums_to_one_and_round_trips():
    c = cons.Simplex()
    p = c.forward(_random((4, 5)))
    np.testing.assert_allclose(jnp.sum(p, axis=-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(c.forward(c.inverse(p)), p, rtol=1e-12)


def test_unit_vector():
    c = cons.UnitVector()
    p = c.forward(_random((6, 3)))
    np.testing.assert_allclose(jnp.linalg.norm(p, axis=-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(c.forward(c.inverse(p)), p, rtol=1e-12)


@pytest.mark.parametrize("kind", [cons.UpperCholesky, cons.LowerCholesky])
def test_cholesky_factors(kind):
    c = kind()
    p = c.forward(_random((3, 4, 4)))
    upper = kind is cons.UpperCholesky
    off = jnp.tril(p, -1) if upper else jnp.triu(p, 1)
    assert bool(jnp.all(off == 0))
    assert bool(jnp.all(jnp.diagonal(p, axis1=-2, axis2=-1) > 0))
    np.testing.assert_allclose(c.forward(c.inverse(p)), p, rtol=1e-12, atol=1e-14)


def test_covariance_is_positive_definite_and_round_trips():
    c = cons.Covariance()
    p = c.forward(_random((2, 3, 3)))
    np.testing.assert_allclose(p, jnp.swapaxes(p, -1, -2), rtol=1e-12)
    assert bool(jnp.all(jnp.linalg.eigvalsh(p) > 0))
    np.testing.assert_allclose(c.forward(c.inverse(p)), p, rtol=1e-10)


def test_prefix_tree_maps_each_leaf_and_none_is_identity():
    params = GaussianParams(_random((2, 3)), jnp.abs(_random((2, 3), 1)) + 0.1)
    tree = GaussianParams(None, cons.Positive())
    u = cons.unconstrain(tree, params)
    np.testing.assert_array_equal(u.means, params.means)
    np.testing.assert_allclose(
        u.precision_cholesky, cons.Positive().inverse(params.precision_cholesky)
    )
    back = cons.constrain(tree, u)
    np.testing.assert_allclose(back.precision_cholesky, params.precision_cholesky, rtol=1e-12)
    assert cons.constrain(None, params) is params
    per_leaf = broadcast_prefix(tree, params, cons.Real())
    assert per_leaf == [cons.Real(), cons.Positive()]


def test_constraints_are_hashable_by_value():
    assert hash(cons.Positive(1.0)) == hash(cons.Positive(1.0))
    assert cons.Interval(0.0, 2.0) != cons.Interval(0.0, 3.0)
