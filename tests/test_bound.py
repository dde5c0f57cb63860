"""The EM bound: log p = Q + H at every E-step, and log p rises by at least the gain in Q."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxem
from jaxem.testing import gradient_only

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def heights():
    # The textbook example: two groups of heights, sex unknown.
    k1, k2 = jax.random.split(jax.random.key(7))
    men = 178 + 7 * jax.random.normal(k1, (100, 1))
    women = 164 + 6 * jax.random.normal(k2, (100, 1))
    return jnp.concatenate([men, women])


def _check_bound(trace, total_weight, atol=1e-10):
    # The trace holds totals over the rows: compare means per unit of row weight.
    ll = np.asarray(trace.log_likelihood) / total_weight
    q, h, gain = (
        np.asarray(a) / total_weight for a in (trace.expected_log_joint, trace.entropy, trace.gain)
    )
    # After each E-step KL = 0: log p(X | theta_i) = Q(theta_i | theta_i) + H(q_i).
    np.testing.assert_allclose(ll[:-1], q + h, rtol=0, atol=atol)
    # The M-step never lowers Q, and log p rises by at least the gain in Q.
    assert np.all(gain >= -atol)
    assert np.all(np.diff(ll) >= gain - atol)
    np.testing.assert_allclose(
        np.asarray(trace.gain), trace.expected_log_joint_new - trace.expected_log_joint
    )


def test_bound_identity_closed_form(heights):
    algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2, covariance_type="spherical")), chunk_size=64)
    trace = jaxem.trace_bound(algo, jax.random.key(0), heights, num_iters=15)
    _check_bound(trace, len(heights))
    assert trace.log_likelihood.shape == (16,)
    # The trace follows the same path as fit.
    fitted = jaxem.fit(algo, jax.random.key(0), heights, max_iter=15, tol=0.0)
    np.testing.assert_allclose(trace.log_likelihood[:15], fitted.history, rtol=1e-12)


def test_bound_identity_under_map_and_gradient(heights):
    family = jaxem.Gaussian(2, covariance_type="diag")
    model = jaxem.Mixture(gradient_only(family), weight_concentration=3.0)
    mstep = jaxem.Gradient(optimizer=jaxem.Optimizer(optax.adam, 0.5), num_steps=3)
    trace = jaxem.trace_bound(jaxem.em(model, mstep), jax.random.key(1), heights, num_iters=8)
    _check_bound(trace, len(heights))


def test_bound_rejects_bad_iterations(heights):
    algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2)))
    with pytest.raises(ValueError, match=r"num_iters must be a positive integer, got 0\."):
        jaxem.trace_bound(algo, jax.random.key(0), heights, num_iters=0)
