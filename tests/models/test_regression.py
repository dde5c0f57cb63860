"""Mixtures of linear regressions: recovery, weighted least squares.
The shared contract (restarts, chunks, constraints, dtypes) is checked in test_contracts.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from family_checks import assert_monotone, best_permutation

import jaxem
from jaxem.models import LinearRegression, RegressionParams

TRUE_COEFFICIENTS = np.array([[2.0, -1.0], [-1.5, 0.5]])
TRUE_INTERCEPTS = np.array([1.0, -2.0])
TRUE_VARIANCES = np.array([0.25, 1.0])
TRUE_WEIGHTS = np.array([0.4, 0.6])


def simulate(n: int, seed: int = 0, offset: float = 0.0):
    rng = np.random.default_rng(seed)
    z = rng.choice(2, size=n, p=TRUE_WEIGHTS)
    covariates = rng.normal(size=(n, 2)) + offset
    noise = rng.normal(size=n) * np.sqrt(TRUE_VARIANCES[z])
    target = np.sum(covariates * TRUE_COEFFICIENTS[z], axis=1) + TRUE_INTERCEPTS[z] + noise
    return covariates, target


@pytest.mark.timeout(60)
def test_recovers_known_parameters_and_objective_never_decreases():
    x = simulate(3000)
    model = jaxem.Mixture(LinearRegression(2))
    best, _ = jaxem.fit_restarts(
        jaxem.em(model), jax.random.key(0), x, num_restarts=4, max_iter=300, tol=1e-9
    )
    params = best.params.components
    order = list(best_permutation(np.asarray(params.coefficients), TRUE_COEFFICIENTS))
    np.testing.assert_allclose(np.asarray(params.coefficients)[order], TRUE_COEFFICIENTS, atol=0.08)
    np.testing.assert_allclose(np.asarray(params.intercepts)[order], TRUE_INTERCEPTS, atol=0.08)
    np.testing.assert_allclose(np.asarray(params.variances)[order], TRUE_VARIANCES, rtol=0.15)
    np.testing.assert_allclose(np.asarray(best.params.weights)[order], TRUE_WEIGHTS, atol=0.04)
    assert_monotone(best, slack=1e-10)


def test_m_step_is_weighted_least_squares_from_any_previous_fit():
    covariates, target = simulate(200, seed=1, offset=50.0)
    resp = jax.random.uniform(jax.random.key(0), (200, 2))
    family = LinearRegression(2, reg_variance=0.0)
    old = RegressionParams(jnp.array([[1.0, 1.0], [0.0, 3.0]]), jnp.array([4.0, -1.0]), jnp.ones(2))
    stats = family.chunk_stats(old, (jnp.asarray(covariates), jnp.asarray(target)), resp)
    new = family.m_step(old, stats)
    design = np.concatenate([covariates, np.ones((200, 1))], axis=1)
    for k in range(2):
        w = np.asarray(resp[:, k])
        solution = np.linalg.solve(design.T @ (w[:, None] * design), design.T @ (w * target))
        np.testing.assert_allclose(new.coefficients[k], solution[:2], rtol=1e-8)
        np.testing.assert_allclose(new.intercepts[k], solution[2], rtol=1e-8, atol=1e-8)
        residual = target - design @ solution
        np.testing.assert_allclose(new.variances[k], np.sum(w * residual**2) / w.sum(), rtol=1e-8)


def test_without_intercept_sample_free_parameters_and_errors():
    family = LinearRegression(2, fit_intercept=False)
    assert family.num_free_parameters(3) == 8
    assert LinearRegression(2).num_free_parameters(3) == 10
    params = RegressionParams(jnp.array([[2.0], [-2.0]]), jnp.zeros(2), jnp.array([1e-4, 1e-4]))
    covariates = jnp.ones((4, 1))
    draws = family.sample(jax.random.key(0), params, jnp.array([0, 1, 0, 1]), covariates)
    np.testing.assert_allclose(draws, [2.0, -2.0, 2.0, -2.0], atol=0.05)
    with pytest.raises(ValueError, match=r"need x as a pair \(covariates, target\)"):
        family.check_data(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"covariates \[N, P\] and target \[N\] with the same N"):
        family.check_data((np.zeros((3, 2)), np.zeros(4)))
    with pytest.raises(ValueError, match=r"reg_variance must be non-negative, got -1"):
        LinearRegression(2, reg_variance=-1)
