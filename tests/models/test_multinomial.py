"""Multinomial mixtures: recovery, exact log-density, MAP M-step.
The shared contract (restarts, chunks, constraints, dtypes) is checked in test_contracts.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from family_checks import assert_monotone, best_permutation
from scipy.stats import multinomial

import jaxem
from jaxem.models import Multinomial, MultinomialParams, MultinomialStats

TRUE_PROBS = np.array([[0.5, 0.3, 0.1, 0.1], [0.05, 0.15, 0.4, 0.4]])
TRUE_WEIGHTS = np.array([0.35, 0.65])


def simulate(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.choice(2, size=n, p=TRUE_WEIGHTS)
    totals = rng.integers(5, 30, size=n)
    return np.stack([rng.multinomial(t, TRUE_PROBS[k]) for t, k in zip(totals, z, strict=True)])


@pytest.mark.timeout(60)
def test_recovers_known_parameters_and_objective_never_decreases():
    x = simulate(3000)
    model = jaxem.Mixture(Multinomial(2))
    best, _ = jaxem.fit_restarts(
        jaxem.em(model), jax.random.key(0), x, num_restarts=3, max_iter=300, tol=1e-9
    )
    probs = np.asarray(best.params.components.probs)
    order = list(best_permutation(probs, TRUE_PROBS))
    np.testing.assert_allclose(probs[order], TRUE_PROBS, atol=0.02)
    np.testing.assert_allclose(np.asarray(best.params.weights)[order], TRUE_WEIGHTS, atol=0.03)
    assert_monotone(best, slack=1e-10)


def test_log_density_is_the_multinomial_pmf():
    x = simulate(20, seed=1)
    family = Multinomial(2)
    log_prob = family.log_prob_chunk(
        MultinomialParams(jnp.asarray(TRUE_PROBS)), jnp.asarray(x, float)
    )
    for k in range(2):
        expected = multinomial.logpmf(x, x.sum(axis=1), TRUE_PROBS[k])
        np.testing.assert_allclose(log_prob[:, k], expected, rtol=1e-10)


def test_map_m_step_is_the_dirichlet_posterior_mode():
    family = Multinomial(1, dirichlet_concentration=3.0)
    stats = MultinomialStats(jnp.array([4.0]), jnp.array([[10.0, 0.0, 2.0]]))
    params = family.m_step(MultinomialParams(jnp.full((1, 3), 1 / 3)), stats)
    np.testing.assert_allclose(params.probs, [[12 / 18, 2 / 18, 4 / 18]], rtol=1e-12)


def test_free_parameters_and_errors():
    assert Multinomial(3).num_free_parameters(5) == 12
    with pytest.raises(ValueError, match=r"Multinomial components model counts: x must hold"):
        Multinomial(2).check_data(np.array([[1.0, -1.0]]))
