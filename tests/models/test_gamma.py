"""Gamma mixture: scipy density, Minka's shape, ECM recovery (means closed form, shapes by gradient)
and monotone over twenty seeds, restart lanes under L-BFGS, the closed form keeping the shapes, the
estimator, errors. The shared contract (restarts, chunks, a bad optimizer, constraints, dtypes) is
checked in test_contracts.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from family_checks import assert_monotone
from scipy import stats

import jaxem
from jaxem.models.gamma import Gamma, GammaParams, approximate_shape

pytestmark = pytest.mark.timeout(240)

TRUE = GammaParams(
    shapes=jnp.array([[2.0, 9.0], [12.0, 1.5]]), means=jnp.array([[1.0, 6.0], [5.0, 0.5]])
)
ALGO = jaxem.em(jaxem.Mixture(Gamma(2)), jaxem.Gradient())
NUM_SEEDS = 20


@pytest.fixture(scope="module")
def sample():
    labels = jnp.concatenate([jnp.zeros(360, int), jnp.ones(240, int)])
    return Gamma(2).sample(jax.random.key(0), TRUE, labels)


@pytest.fixture(scope="module")
def lanes(sample):
    keys = jax.random.split(jax.random.key(1), NUM_SEEDS)
    best, lanes = jaxem.fit_restarts(ALGO, keys, sample, max_iter=150, tol=1e-9)
    return keys, best, lanes


def test_log_prob_matches_scipy():
    x = jnp.array([[0.3, 2.0], [4.0, 0.1]])
    got = Gamma(2).log_prob_chunk(TRUE, x)
    a, m = np.asarray(TRUE.shapes), np.asarray(TRUE.means)
    for k in range(2):
        ref = stats.gamma(a[k], scale=m[k] / a[k]).logpdf(np.asarray(x)).sum(axis=1)
        np.testing.assert_allclose(got[:, k], ref, rtol=1e-12)
    np.testing.assert_allclose(TRUE.rates, a / m)


def test_minka_shape_is_close_to_the_maximum_likelihood_shape():
    x = np.random.default_rng(0).gamma(3.0, 2.0, size=20000)
    mle_shape = stats.gamma.fit(x, floc=0)[0]
    approx = float(approximate_shape(jnp.mean(x), jnp.mean(jnp.log(x))))
    assert abs(approx - mle_shape) < 1e-2 * mle_shape


def test_ecm_recovers_parameters_and_is_monotone_over_twenty_seeds(lanes):
    _, best, lanes = lanes
    assert_monotone(lanes.history)
    assert int(best.status) == jaxem.Status.CONVERGED
    comp = best.params.components
    order = np.argsort(np.asarray(comp.means[:, 0]))
    np.testing.assert_allclose(np.asarray(best.params.weights)[order], [0.6, 0.4], atol=0.03)
    np.testing.assert_allclose(np.asarray(comp.means)[order], TRUE.means, rtol=0.08)
    np.testing.assert_allclose(np.asarray(comp.shapes)[order], TRUE.shapes, rtol=0.25)


def test_shapes_are_at_the_stationary_point_of_the_likelihood(lanes, sample):
    # At the optimum the gradient of the mean log-likelihood in the shapes is zero.
    _, best, _ = lanes
    model = ALGO.model

    def objective(shapes):
        params = best.params._replace(components=best.params.components._replace(shapes=shapes))
        return jnp.mean(jax.nn.logsumexp(model.log_joint(params, sample), axis=-1))

    grad = jax.jit(jax.grad(objective))(best.params.components.shapes)
    assert float(jnp.max(jnp.abs(grad))) < 1e-4


def test_line_search_restart_lane_equals_single_fit(lanes, sample):
    """L-BFGS (the default gradient M-step) on the recovery fits: restart lane 7 is the single fit
    from key 7. (The contract checks restarts with every family, under Adam.)"""
    keys, _, lanes = lanes
    single = jaxem.fit(ALGO, keys[7], sample, max_iter=150, tol=1e-9)
    assert int(single.num_iters) == int(lanes.num_iters[7])
    np.testing.assert_allclose(single.history, lanes.history[7], rtol=1e-9)
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(lanes.params), strict=True):
        np.testing.assert_allclose(a, b[7], rtol=1e-7)


def test_closed_form_keeps_shapes(sample):
    model = jaxem.Mixture(Gamma(2))
    start = model.init(jax.random.key(3), sample, None)
    result = jaxem.fit(jaxem.em(model), start, sample, max_iter=5, tol=0.0)
    np.testing.assert_array_equal(result.params.components.shapes, start.components.shapes)
    assert not np.allclose(result.params.components.means, start.components.means)
    assert_monotone(result.history)


def test_generic_estimator_fits_predicts_and_scores(sample):
    labels = np.concatenate([np.zeros(360, int), np.ones(240, int)])
    est = jaxem.MixtureModel(Gamma(2), n_init=2, random_state=0, max_iter=200, tol=1e-6)
    predicted = est.fit(np.asarray(sample)).predict(np.asarray(sample))
    agreement = max(np.mean(predicted == labels), np.mean(predicted != labels))
    assert agreement > 0.95
    # The shapes moved from their start: the estimator took the gradient path.
    assert not np.allclose(
        est.params_.components.shapes, Gamma(2).init(jax.random.key(0), sample, None).shapes
    )
    score = est.score(np.asarray(sample))
    np.testing.assert_allclose(score, est.lower_bound_, atol=1e-4)
    assert est.sample(10)[0].shape == (10, 2)
    assert np.isfinite(est.bic(np.asarray(sample)))


def test_bad_input_raises():
    with pytest.raises(ValueError, match=r"min_shape must be positive, got 0\.0\."):
        Gamma(2, min_shape=0.0)
    with pytest.raises(ValueError, match=r"num_components must be a positive integer, got 0\."):
        Gamma(0)
    with pytest.raises(ValueError, match=r"Gamma components need strictly positive x"):
        Gamma(2).check_data(np.array([[1.0], [0.0]]))
    with pytest.raises(ValueError, match=r"Gamma components need strictly positive x"):
        jaxem.MixtureModel(Gamma(2)).fit(np.array([[1.0], [-2.0], [3.0]]))
