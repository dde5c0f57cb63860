"""Student-t mixture: density, sampler, ECM recovery, restart lanes under L-BFGS, the closed form
keeping the degrees of freedom, errors. The shared contract (restarts and monotone over twenty
seeds, chunks, a bad optimizer, constraints, dtypes) is checked in test_contracts.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from family_checks import assert_monotone
from scipy import stats

import jaxem
from jaxem.models.student_t import StudentT, StudentTParams

pytestmark = pytest.mark.timeout(180)

TRUE = StudentTParams(
    means=jnp.array([[0.0, 0.0], [6.0, 3.0]]),
    precision_cholesky=jnp.array([[[1.0, 0.5], [0.0, 2.0]], [[2.0, 0.0], [0.0, 1.0]]]),
    dof=jnp.array([3.0, 8.0]),
)


@pytest.fixture(scope="module")
def sample():
    labels = jnp.concatenate([jnp.zeros(900, int), jnp.ones(600, int)])
    return jax.jit(StudentT(2).sample)(jax.random.key(0), TRUE, labels)


def _scale(u):
    return np.linalg.inv(np.asarray(u) @ np.asarray(u).T)


def test_log_prob_matches_scipy():
    x = np.array([[0.3, -1.2], [5.0, 2.0]])
    got = StudentT(2).log_prob_chunk(TRUE, jnp.asarray(x))
    for k in range(2):
        ref = stats.multivariate_t(
            loc=TRUE.means[k], shape=_scale(TRUE.precision_cholesky[k]), df=float(TRUE.dof[k])
        ).logpdf(x)
        np.testing.assert_allclose(got[:, k], ref, rtol=1e-10)


def test_sample_has_the_right_scale(sample):
    # For dof > 2 the covariance is scale * dof / (dof - 2).
    second = np.cov(np.asarray(sample[900:]).T)
    np.testing.assert_allclose(
        second, _scale(TRUE.precision_cholesky[1]) * 8 / 6, rtol=0.2, atol=0.05
    )


ALGO = jaxem.em(jaxem.Mixture(StudentT(2)), jaxem.Gradient(num_steps=10))


@pytest.fixture(scope="module")
def recovery(sample):
    keys = jax.random.split(jax.random.key(1), 2)
    best, lanes = jaxem.fit_restarts(ALGO, keys, sample, max_iter=200, tol=1e-8)
    return keys, best, lanes


def test_ecm_recovers_parameters(recovery):
    _, best, lanes = recovery
    assert_monotone(lanes.history)
    comp = best.params.components
    order = np.argsort(np.asarray(comp.means[:, 0]))
    np.testing.assert_allclose(np.asarray(best.params.weights)[order], [0.6, 0.4], atol=0.04)
    np.testing.assert_allclose(np.asarray(comp.means)[order], TRUE.means, atol=0.15)
    for k, j in enumerate(order):
        np.testing.assert_allclose(
            _scale(comp.precision_cholesky[j]),
            _scale(TRUE.precision_cholesky[k]),
            atol=0.15,
            rtol=0.2,
        )
    dof = np.asarray(comp.dof)[order]
    assert 2.0 < dof[0] < 4.5 and 4.5 < dof[1] < 20.0
    assert_monotone(best)


def test_line_search_restart_lane_equals_single_fit(recovery, sample):
    """L-BFGS (the default gradient M-step) on the recovery fits: restart lane 1 is the single fit
    from key 1. (The contract checks restarts with every family, under Adam.)"""
    keys, _, lanes = recovery
    single = jaxem.fit(ALGO, keys[1], sample, max_iter=200, tol=1e-8)
    assert int(single.num_iters) == int(lanes.num_iters[1])
    np.testing.assert_allclose(single.history, lanes.history[1], rtol=1e-9)
    np.testing.assert_allclose(
        single.params.components.dof, lanes.params.components.dof[1], rtol=1e-6
    )


def test_closed_form_keeps_dof_and_is_monotone(sample):
    result = jaxem.fit(
        jaxem.em(jaxem.Mixture(StudentT(2, dof=5.0))),
        jax.random.key(0),
        sample,
        max_iter=30,
        tol=0.0,
    )
    np.testing.assert_array_equal(result.params.components.dof, [5.0, 5.0])
    assert_monotone(result.history)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match=r"dof must be positive, got 0\.0\."):
        StudentT(2, dof=0.0)
    with pytest.raises(ValueError, match=r"num_components must be a positive integer, got 0\."):
        StudentT(0)
