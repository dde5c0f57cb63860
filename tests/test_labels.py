"""Partial labels: supervised estimate when all rows are labelled, label order with a few labels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem
from jaxem.labels import Labelled, LabelledConjugate
from jaxem.models import Bernoulli


def gaussian_blobs(seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = np.array([[-4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
    z = rng.integers(0, 3, size=300)
    return centres[z] + rng.normal(size=(300, 2)), z


@pytest.mark.timeout(60)
def test_all_labelled_gaussian_fit_equals_the_supervised_estimate():
    x, z = gaussian_blobs()
    family = Labelled(jaxem.Gaussian(3, covariance_type="full"))
    result = jaxem.fit(jaxem.em(jaxem.Mixture(family)), jax.random.key(0), family.data(x, z))
    params = result.params
    for k in range(3):
        rows = x[z == k]
        np.testing.assert_allclose(params.weights[k], np.mean(z == k), rtol=1e-12)
        np.testing.assert_allclose(params.components.means[k], rows.mean(axis=0), rtol=1e-10)
        covariance = np.cov(rows.T, bias=True) + 1e-6 * np.eye(2)
        fitted = jaxem.Gaussian(3).covariances(params.components)[k]
        np.testing.assert_allclose(fitted, covariance, rtol=1e-8)
    assert int(result.status) == jaxem.Status.CONVERGED


def test_all_labelled_bernoulli_fit_equals_the_map_supervised_estimate():
    rng = np.random.default_rng(1)
    z = rng.integers(0, 2, size=200)
    x = (rng.random((200, 4)) < np.where(z[:, None] == 0, 0.2, 0.7)).astype(float)
    family = Labelled(Bernoulli(2, beta_prior=(2.0, 3.0)))
    result = jaxem.fit(jaxem.em(jaxem.Mixture(family)), jax.random.key(0), family.data(x, z))
    for k in range(2):
        rows = x[z == k]
        expected = (rows.sum(axis=0) + 1.0) / (len(rows) + 3.0)
        np.testing.assert_allclose(result.params.components.probs[k], expected, rtol=1e-12)


@pytest.mark.timeout(60)
def test_a_few_labels_fix_the_component_order_and_objective_never_decreases():
    x, z = gaussian_blobs(seed=2)
    family = Labelled(jaxem.Gaussian(3, covariance_type="spherical"))
    model = jaxem.Mixture(family)
    for permutation in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
        labels = np.full(300, -1)
        for true_class, component in enumerate(permutation):
            rows = np.flatnonzero(z == true_class)[:3]
            labels[rows] = component
        data = family.data(x, labels)
        best, _ = jaxem.fit_restarts(jaxem.em(model), jax.random.key(0), data, num_restarts=2)
        log_resp, _ = jaxem.Mixture(family.components).log_resp(best.params, jnp.asarray(x))
        predicted = np.argmax(np.asarray(log_resp), axis=1)
        np.testing.assert_array_equal(predicted, np.asarray(permutation)[z])
        # The history holds totals: compared as means per row.
        history = np.asarray(best.history)[: int(best.num_iters)] / len(x)
        assert np.all(np.diff(history) >= -1e-12)


def test_no_labels_is_exactly_the_plain_mixture():
    x, _ = gaussian_blobs(seed=3)
    plain_model = jaxem.Mixture(jaxem.Gaussian(3))
    family = Labelled(jaxem.Gaussian(3))
    plain = jaxem.fit(jaxem.em(plain_model), jax.random.key(4), x)
    labelled = jaxem.fit(
        jaxem.em(jaxem.Mixture(family)), jax.random.key(4), family.data(x, np.full(300, -1))
    )
    np.testing.assert_allclose(labelled.params.components.means, plain.params.components.means)
    np.testing.assert_allclose(labelled.log_likelihood, plain.log_likelihood)


def test_wrapper_keeps_the_family_interface_and_checks_labels():
    family = Labelled(Bernoulli(3))
    assert isinstance(family, LabelledConjugate) and isinstance(family, jaxem.ConjugateComponents)
    assert family.num_components == 3 and family.num_free_parameters(4) == 12
    assert hash(family) == hash(Labelled(Bernoulli(3))) and family == Labelled(Bernoulli(3))
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"labels has shape \(3,\) but x has 4 rows: pass one"):
        family.data(x, [0, 1, 2])
    with pytest.raises(ValueError, match=r"labels must lie in -1 \.\. 2 \(-1 marks an unknown"):
        family.data(x, [0, 1, 3, -1])
    with pytest.raises(ValueError, match=r"labels must be integers: a component index, or -1"):
        family.data(x, [0.5, 1, 2, -1])
    with pytest.raises(ValueError, match=r"The components are already Labelled"):
        Labelled(family)


@pytest.mark.timeout(60)
def test_semi_supervised_estimator_follows_labels_and_checks_them():
    x, z = gaussian_blobs(seed=5)
    labels = np.full(300, -1)
    for true_class, component in enumerate([2, 0, 1]):
        labels[np.flatnonzero(z == true_class)[:3]] = component
    est = jaxem.SemiSupervisedMixture(jaxem.Gaussian(3), n_init=2, random_state=0)
    np.testing.assert_array_equal(est.fit_predict(x, labels), np.array([2, 0, 1])[z])
    with pytest.raises(ValueError, match=r"labels must lie in -1 \.\. 2"):
        est.fit(x, np.full(300, 7))
    with pytest.raises(ValueError, match=r"Bernoulli components need x in \[0, 1\]"):
        jaxem.SemiSupervisedMixture(Bernoulli(2)).fit(x, np.full(300, -1))
