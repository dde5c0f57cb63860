"""Poisson mixtures: recovery, exact log-density, MAP M-step.
The shared contract (restarts, chunks, constraints, dtypes) is checked in test_contracts.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from family_checks import assert_monotone, best_permutation
from scipy.stats import poisson

import jaxem
from jaxem.models import Poisson, PoissonParams, PoissonStats

TRUE_RATES = np.array([[1.0, 8.0, 3.0], [6.0, 1.5, 12.0], [0.3, 0.3, 0.3]])
TRUE_WEIGHTS = np.array([0.4, 0.35, 0.25])


def simulate(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.choice(3, size=n, p=TRUE_WEIGHTS)
    return rng.poisson(TRUE_RATES[z]).astype(float)


@pytest.mark.timeout(60)
def test_recovers_known_parameters_and_objective_never_decreases():
    x = simulate(4000)
    model = jaxem.Mixture(Poisson(3))
    best, _ = jaxem.fit_restarts(
        jaxem.em(model), jax.random.key(0), x, num_restarts=3, max_iter=500, tol=1e-9
    )
    rates = np.asarray(best.params.components.rates)
    order = list(best_permutation(rates, TRUE_RATES))
    np.testing.assert_allclose(rates[order], TRUE_RATES, rtol=0.1, atol=0.05)
    np.testing.assert_allclose(np.asarray(best.params.weights)[order], TRUE_WEIGHTS, atol=0.03)
    assert_monotone(best, slack=1e-10)


def test_log_density_is_the_poisson_pmf():
    x = simulate(20, seed=1)
    log_prob = Poisson(3).log_prob_chunk(PoissonParams(jnp.asarray(TRUE_RATES)), jnp.asarray(x))
    for k in range(3):
        np.testing.assert_allclose(
            log_prob[:, k], poisson.logpmf(x, TRUE_RATES[k]).sum(axis=1), rtol=1e-10
        )


def test_map_m_step_is_the_gamma_posterior_mode_and_log_prior_matches():
    family = Poisson(2, gamma_prior=(3.0, 0.5))
    stats = PoissonStats(jnp.array([4.0, 0.0]), jnp.array([[10.0], [0.0]]))
    params = family.m_step(PoissonParams(jnp.ones((2, 1))), stats)
    np.testing.assert_allclose(params.rates, [[12 / 4.5], [2 / 0.5]], rtol=1e-12)
    rates = np.asarray(params.rates)
    np.testing.assert_allclose(
        float(family.log_prior(params)), np.sum(2.0 * np.log(rates) - 0.5 * rates), rtol=1e-12
    )


def test_default_prior_keeps_unseen_feature_rates_positive():
    x = np.concatenate([np.zeros((30, 2)), np.full((30, 2), 5.0)])
    x[30:, 1] = 0.0  # feature 1 is never positive
    result = jaxem.fit(jaxem.em(jaxem.Mixture(Poisson(2))), jax.random.key(0), x)
    assert np.all(np.asarray(result.params.components.rates) > 0)
    assert np.isfinite(float(result.log_likelihood))


def test_sample_free_parameters_and_errors():
    draws = Poisson(1).sample(
        jax.random.key(0), PoissonParams(jnp.array([[4.0]])), jnp.zeros(20000, int)
    )
    np.testing.assert_allclose(float(draws.mean()), 4.0, atol=0.05)
    assert Poisson(3).num_free_parameters(4) == 12
    with pytest.raises(ValueError, match=r"Poisson components model counts: x must hold"):
        Poisson(2).check_data(np.array([[1.5, 2.0]]))
    with pytest.raises(ValueError, match=r"gamma_prior must be a tuple \(shape, rate\) with shape"):
        Poisson(2, gamma_prior=(0.5, 1.0))
