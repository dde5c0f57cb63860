"""Exponential mixtures: recovery, exact log-density, MAP M-step.
The shared contract (restarts, chunks, constraints, dtypes) is checked in test_contracts.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from family_checks import assert_monotone, best_permutation
from scipy.stats import expon

import jaxem
from jaxem.models import Exponential, ExponentialParams, ExponentialStats

TRUE_RATES = np.array([[0.5, 5.0], [4.0, 0.25]])
TRUE_WEIGHTS = np.array([0.45, 0.55])


def simulate(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.choice(2, size=n, p=TRUE_WEIGHTS)
    return rng.exponential(1.0 / TRUE_RATES[z])


@pytest.mark.timeout(60)
def test_recovers_known_parameters_and_objective_never_decreases():
    x = simulate(4000)
    model = jaxem.Mixture(Exponential(2))
    best, _ = jaxem.fit_restarts(
        jaxem.em(model), jax.random.key(0), x, num_restarts=3, max_iter=500, tol=1e-9
    )
    rates = np.asarray(best.params.components.rates)
    order = list(best_permutation(rates, TRUE_RATES))
    np.testing.assert_allclose(rates[order], TRUE_RATES, rtol=0.1)
    np.testing.assert_allclose(np.asarray(best.params.weights)[order], TRUE_WEIGHTS, atol=0.04)
    assert_monotone(best, slack=1e-10)


def test_log_density_is_the_exponential_density():
    x = simulate(20, seed=1)
    log_prob = Exponential(2).log_prob_chunk(
        ExponentialParams(jnp.asarray(TRUE_RATES)), jnp.asarray(x)
    )
    for k in range(2):
        expected = expon.logpdf(x, scale=1.0 / TRUE_RATES[k]).sum(axis=1)
        np.testing.assert_allclose(log_prob[:, k], expected, rtol=1e-10)


def test_map_m_step_is_the_gamma_posterior_mode():
    family = Exponential(2, gamma_prior=(2.0, 1.0))
    stats = ExponentialStats(jnp.array([4.0, 0.0]), jnp.array([[2.0], [0.0]]))
    params = family.m_step(ExponentialParams(jnp.ones((2, 1))), stats)
    np.testing.assert_allclose(params.rates, [[5.0 / 3.0], [1.0]], rtol=1e-12)


def test_default_prior_keeps_rates_finite_on_a_component_of_zeros():
    x = np.concatenate([np.zeros((20, 1)), np.random.default_rng(0).exponential(size=(40, 1))])
    result = jaxem.fit(jaxem.em(jaxem.Mixture(Exponential(2))), jax.random.key(0), x)
    assert np.all(np.isfinite(np.asarray(result.params.components.rates)))
    assert np.isfinite(float(result.log_likelihood))


def test_sample_free_parameters_and_errors():
    params = ExponentialParams(jnp.array([[2.0]]))
    draws = Exponential(1).sample(jax.random.key(0), params, jnp.zeros(20000, int))
    np.testing.assert_allclose(float(draws.mean()), 0.5, atol=0.01)
    assert Exponential(2).num_free_parameters(3) == 6
    with pytest.raises(ValueError, match=r"Exponential components need non-negative x"):
        Exponential(2).check_data(np.array([[-1.0]]))
