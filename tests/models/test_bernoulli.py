"""Bernoulli mixtures: recovery, the MAP M-step and objective, initialisations, sampling, errors,
digits. The shared contract (restarts, chunks, constraints, dtypes, compilation, the M-step as
maximiser of Q + log prior) is checked in test_contracts.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from family_checks import assert_monotone, best_permutation

import jaxem
from jaxem.models import Bernoulli, BernoulliParams, BernoulliStats

TRUE_PROBS = np.array(
    [
        [0.9, 0.8, 0.9, 0.1, 0.2, 0.1, 0.5, 0.7],
        [0.1, 0.2, 0.1, 0.9, 0.8, 0.9, 0.5, 0.3],
        [0.8, 0.1, 0.2, 0.9, 0.1, 0.8, 0.1, 0.9],
    ]
)
TRUE_WEIGHTS = np.array([0.5, 0.3, 0.2])


def simulate(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.choice(3, size=n, p=TRUE_WEIGHTS)
    return (rng.random((n, TRUE_PROBS.shape[1])) < TRUE_PROBS[z]).astype(float), z


@pytest.mark.timeout(60)
def test_recovers_known_parameters_and_objective_never_decreases():
    x, _ = simulate(6000)
    model = jaxem.Mixture(Bernoulli(3))
    best, _ = jaxem.fit_restarts(
        jaxem.em(model), jax.random.key(0), x, num_restarts=4, max_iter=500, tol=1e-8
    )
    probs = np.asarray(best.params.components.probs)
    order = list(best_permutation(probs, TRUE_PROBS))
    # Standard error of a probability from ~1200 points is about 0.015; four of them is 0.06.
    np.testing.assert_allclose(probs[order], TRUE_PROBS, atol=0.06)
    np.testing.assert_allclose(np.asarray(best.params.weights)[order], TRUE_WEIGHTS, atol=0.04)
    assert int(best.status) == jaxem.Status.CONVERGED
    assert_monotone(best, slack=1e-10)


def test_map_m_step_is_the_beta_posterior_mode():
    family = Bernoulli(2, beta_prior=(3.0, 1.5))
    stats = BernoulliStats(jnp.array([10.0, 0.0]), jnp.array([[4.0, 10.0], [0.0, 0.0]]))
    params = family.m_step(BernoulliParams(jnp.full((2, 2), 0.5)), stats)
    # (successes + a - 1) / (counts + a + b - 2); an empty component gets the prior's mode.
    expected = np.array([[6.0 / 12.5, 12.0 / 12.5], [2.0 / 2.5, 2.0 / 2.5]])
    np.testing.assert_allclose(params.probs, expected, rtol=1e-12)


@pytest.mark.timeout(60)
def test_strong_prior_objective_is_the_log_posterior_and_never_decreases():
    x, _ = simulate(500, seed=2)
    model = jaxem.Mixture(Bernoulli(3, beta_prior=(6.0, 6.0)))
    result = jaxem.fit(jaxem.em(model), jax.random.key(1), x, max_iter=200, tol=1e-10)
    assert_monotone(result, slack=1e-10)
    algo = jaxem.em(model)
    # Totals: the summed log-likelihood of the rows plus the log prior.
    likelihood_only = jaxem.em(jaxem.Mixture(Bernoulli(3, beta_prior=(1.0, 1.0))))
    loglik = jax.jit(likelihood_only.log_likelihood)(result.params, jnp.asarray(x))
    prior = model.log_prior(result.params)
    np.testing.assert_allclose(
        jax.jit(algo.log_likelihood)(result.params, jnp.asarray(x)), loglik + prior, rtol=1e-12
    )
    np.testing.assert_allclose(result.log_likelihood, loglik + prior, rtol=1e-12)


def test_default_prior_keeps_probabilities_off_zero_and_one():
    x = np.zeros((40, 3))
    x[:20, 0] = 1.0  # feature 0 is all ones in half the data, features 1 and 2 never fire
    result = jaxem.fit(jaxem.em(jaxem.Mixture(Bernoulli(2))), jax.random.key(0), x)
    probs = np.asarray(result.params.components.probs)
    assert np.all((probs > 0) & (probs < 1))
    assert np.isfinite(float(result.log_likelihood))


def test_maximum_likelihood_with_unseen_features_stays_finite():
    x = np.zeros((40, 3))
    x[:20, 0] = 1.0
    model = jaxem.Mixture(Bernoulli(2, beta_prior=(1.0, 1.0)))
    result = jaxem.fit(jaxem.em(model), jax.random.key(0), x)
    assert int(result.status) == jaxem.Status.CONVERGED
    # Two clusters are exactly separable: the log-likelihood is that of two point masses, log 1/2
    # per row.
    np.testing.assert_allclose(float(result.log_likelihood), 40 * np.log(0.5), rtol=1e-9)


def test_random_resp_and_random_rows_initialisations_fit():
    x, _ = simulate(300, seed=4)
    for method in ("random_resp", "random_rows"):
        model = jaxem.Mixture(Bernoulli(3, init_method=method))
        result = jaxem.fit(jaxem.em(model), jax.random.key(0), x)
        assert_monotone(result, slack=1e-10)


def test_sample_draws_binary_rows_with_component_probabilities():
    family = Bernoulli(2)
    params = BernoulliParams(jnp.array([[0.9, 0.1], [0.2, 0.6]]))
    labels = jnp.repeat(jnp.arange(2), 20000)
    draws = np.asarray(family.sample(jax.random.key(0), params, labels))
    assert set(np.unique(draws)) <= {0.0, 1.0}
    np.testing.assert_allclose(draws[:20000].mean(0), [0.9, 0.1], atol=0.01)
    np.testing.assert_allclose(draws[20000:].mean(0), [0.2, 0.6], atol=0.01)


def test_free_parameters():
    assert Bernoulli(4).num_free_parameters(7) == 28


def test_configuration_and_data_errors():
    with pytest.raises(ValueError, match=r"num_components must be a positive integer, got 0\."):
        Bernoulli(0)
    with pytest.raises(
        ValueError,
        match=r"beta_prior's a must be a number >= 1 \(\(1, 1\) is maximum likelihood\), got 0\.5",
    ):
        Bernoulli(2, beta_prior=(0.5, 2.0))
    with pytest.raises(ValueError, match=r"beta_prior must be a tuple \(a, b\), got 2\.0\."):
        Bernoulli(2, beta_prior=2.0)
    with pytest.raises(ValueError, match=r"Unknown init_method 'kmeans': use one of kmeans\+\+"):
        Bernoulli(2, init_method="kmeans")
    with pytest.raises(ValueError, match=r"need x in \[0, 1\] \(binary features\): binarise"):
        Bernoulli(2).check_data(np.array([[0.0, 2.0]]))
    with pytest.raises(ValueError, match=r"need x as a 2-D array .* got shape \(3,\)\."):
        Bernoulli(2).check_data(np.zeros(3))
    Bernoulli(2).check_data(np.array([[0.0, 1.0]]))


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_digits_binarised_clusters_agree_with_digits_at_least_as_well_as_gaussian_mixture():
    from sklearn.datasets import load_digits
    from sklearn.metrics import adjusted_rand_score
    from sklearn.mixture import GaussianMixture

    digits = load_digits()
    x = (digits.data >= 8).astype(float)
    k, restarts = 10, 3
    # scikit-learn's full covariances take minutes on 64 binary features; diagonal ones are the
    # affordable Gaussian reference (and score about the same: 0.42 against 0.44 for full).
    gaussian = GaussianMixture(k, covariance_type="diag", n_init=restarts, random_state=0).fit(x)
    gaussian_ari = adjusted_rand_score(digits.target, gaussian.predict(x))

    model = jaxem.Mixture(Bernoulli(k))
    best, _ = jaxem.fit_restarts(
        jaxem.em(model), jax.random.key(0), x, num_restarts=restarts, max_iter=200
    )
    log_resp, _ = model.log_resp(best.params, jnp.asarray(x))
    bernoulli_ari = adjusted_rand_score(digits.target, np.argmax(np.asarray(log_resp), axis=1))
    assert bernoulli_ari >= gaussian_ari, (bernoulli_ari, gaussian_ari)
