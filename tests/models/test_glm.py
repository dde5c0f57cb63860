"""Mixtures of experts: logistic and Poisson regressions by the gradient path, with constant weights
or a softmax gate (also over closed-form linear experts); densities, recovery and monotone over
twenty seeds, restart lanes under L-BFGS, the closed form keeping the gate, and input errors. The
shared contract (restarts, chunks, a bad optimizer, constraints, dtypes) is in test_contracts.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from family_checks import assert_monotone
from scipy import stats

import jaxem
from jaxem.models.glm import (
    GatedMixture,
    GatedParams,
    GateParams,
    GLMParams,
    LogisticRegression,
    PoissonRegression,
)
from jaxem.models.regression import LinearRegression, RegressionParams

pytestmark = pytest.mark.timeout(300)

NUM_SEEDS = 20
LOGISTIC = GLMParams(jnp.array([[5.0, 0.0], [0.0, -5.0]]), jnp.array([1.0, -1.0]))
POISSON = GLMParams(jnp.array([[2.0, -1.0], [-1.5, 0.5]]), jnp.array([0.5, 1.5]))


def _labels(n, every=5, first=3):
    return (jnp.arange(n) % every >= first).astype(int)  # 60% in component 0


def _restarts(algo, data, seed, max_iter=150):
    keys = jax.random.split(jax.random.key(seed), NUM_SEEDS)
    best, lanes = jaxem.fit_restarts(algo, keys, data, max_iter=max_iter, tol=1e-9)
    return keys, best, lanes


# ---- densities -----------------------------------------------------------------------------------


def test_densities_match_scipy():
    covariates = jnp.array([[0.3, -1.0], [2.0, 0.5], [-1.0, 0.0]])
    eta = np.asarray(covariates @ POISSON.coefficients.T + POISSON.intercepts)
    counts = jnp.array([0.0, 7.0, 2.0])
    got = PoissonRegression(2).log_prob_chunk(POISSON, (covariates, counts))
    np.testing.assert_allclose(got, stats.poisson(np.exp(eta)).logpmf(counts[:, None]), rtol=1e-12)
    binary = jnp.array([1.0, 0.0, 1.0])
    eta = np.asarray(covariates @ LOGISTIC.coefficients.T + LOGISTIC.intercepts)
    got = LogisticRegression(2).log_prob_chunk(LOGISTIC, (covariates, binary))
    ref = stats.bernoulli(1 / (1 + np.exp(-eta))).logpmf(binary[:, None])
    np.testing.assert_allclose(got, ref, rtol=1e-12)


# ---- constant mixing weights ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def poisson_fit():
    n = 600
    covariates = jax.random.normal(jax.random.key(0), (n, 2))
    target = PoissonRegression(2).sample(jax.random.key(1), POISSON, _labels(n), covariates)
    algo = jaxem.em(jaxem.Mixture(PoissonRegression(2)), jaxem.Gradient())
    data = (covariates, target)
    return (algo, data, *_restarts(algo, data, 2))


def test_poisson_mixture_recovers_parameters_and_is_monotone_over_twenty_seeds(poisson_fit):
    algo, data, _, best, lanes = poisson_fit
    assert_monotone(lanes.history)
    assert int(best.status) == jaxem.Status.CONVERGED
    comp = best.params.components
    order = np.argsort(-np.asarray(comp.coefficients[:, 0]))
    np.testing.assert_allclose(np.asarray(best.params.weights)[order], [0.6, 0.4], atol=0.03)
    np.testing.assert_allclose(np.asarray(comp.coefficients)[order], POISSON.coefficients, atol=0.1)
    np.testing.assert_allclose(np.asarray(comp.intercepts)[order], POISSON.intercepts, atol=0.15)
    truth = jaxem.MixtureParams(jnp.array([0.6, 0.4]), POISSON)
    assert float(best.log_likelihood) >= float(jax.jit(algo.log_likelihood)(truth, data))


def test_poisson_mixture_line_search_restart_lane_equals_single_fit(poisson_fit):
    """L-BFGS (the default gradient M-step) on the recovery fits: restart lane 3 is the single fit
    from key 3. (The contract checks restarts with every family, under Adam.)"""
    algo, data, keys, _, lanes = poisson_fit
    single = jaxem.fit(algo, keys[3], data, max_iter=150, tol=1e-9)
    assert int(single.num_iters) == int(lanes.num_iters[3])
    np.testing.assert_allclose(single.history, lanes.history[3], rtol=1e-9)
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(lanes.params), strict=True):
        np.testing.assert_allclose(a, b[3], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def logistic_fit():
    n = 1200
    covariates = jax.random.normal(jax.random.key(3), (n, 2))
    target = LogisticRegression(2).sample(jax.random.key(4), LOGISTIC, _labels(n), covariates)
    algo = jaxem.em(jaxem.Mixture(LogisticRegression(2)), jaxem.Gradient())
    data = (covariates, target)
    return (algo, data, *_restarts(algo, data, 5, max_iter=200))


@pytest.mark.slow
def test_logistic_mixture_recovers_the_conditional_probability(logistic_fit):
    # One binary outcome per row identifies the components only weakly (their parameters move
    # along a ridge of nearly equal likelihood), so the test checks what the data determine:
    # p(y = 1 | covariates) under the fitted mixture matches the truth, and the fit beats the
    # true parameters on their own data, as a maximum-likelihood estimate must.
    algo, data, _, best, lanes = logistic_fit
    assert_monotone(lanes.history)
    truth = jaxem.MixtureParams(jnp.array([0.6, 0.4]), LOGISTIC)
    assert float(best.log_likelihood) >= float(jax.jit(algo.log_likelihood)(truth, data))
    family = algo.model.components

    def probability(params):
        return family.predict(params.components, data[0]) @ params.weights

    error = np.abs(np.asarray(probability(best.params) - probability(truth)))
    assert error.mean() < 0.05
    assert int(best.status) == jaxem.Status.CONVERGED


# ---- softmax gate --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gated_linear_data():
    n = 800
    covariates = jax.random.normal(jax.random.key(6), (n, 1))
    gate = GateParams(jnp.array([[2.5], [-2.5]]), jnp.zeros(2))
    labels = jax.random.categorical(jax.random.key(7), covariates @ gate.coefficients.T)
    experts = RegressionParams(
        jnp.array([[2.0], [-1.0]]), jnp.array([1.0, -2.0]), jnp.array([0.09, 0.25])
    )
    target = LinearRegression(2).sample(jax.random.key(8), experts, labels, covariates)
    return (covariates, target), GatedParams(gate, experts)


def test_gated_linear_experts_recover_gate_and_experts(gated_linear_data):
    data, _ = gated_linear_data
    model = GatedMixture(LinearRegression(2))
    best, lanes = jaxem.fit_restarts(
        jaxem.em(model, jaxem.Gradient()), jax.random.key(9), data, num_restarts=4, tol=1e-9
    )
    assert_monotone(lanes.history)
    experts = best.params.components
    order = np.argsort(-np.asarray(experts.coefficients[:, 0]))
    np.testing.assert_allclose(np.asarray(experts.coefficients)[order], [[2.0], [-1.0]], atol=0.05)
    np.testing.assert_allclose(np.asarray(experts.intercepts)[order], [1.0, -2.0], atol=0.05)
    np.testing.assert_allclose(np.asarray(experts.variances)[order], [0.09, 0.25], rtol=0.2)
    # The softmax gate is identified up to a common shift: compare differences of the logits.
    gate = best.params.gate
    slope = float(gate.coefficients[order[0], 0] - gate.coefficients[order[1], 0])
    shift = float(gate.intercepts[order[0]] - gate.intercepts[order[1]])
    assert abs(slope - 5.0) < 0.7 and abs(shift) < 0.3
    probabilities = model.gate_probabilities(best.params, data[0])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-12)


def test_gated_model_with_closed_form_keeps_the_gate(gated_linear_data):
    data, _ = gated_linear_data
    model = GatedMixture(LinearRegression(2))
    start = model.init(jax.random.key(0), data, None)
    result = jaxem.fit(jaxem.em(model), start, data, max_iter=5, tol=0.0)
    np.testing.assert_array_equal(result.params.gate.coefficients, start.gate.coefficients)
    assert_monotone(result.history)


# ---- input errors --------------------------------------------------------------------------------


def test_bad_input_raises():
    with pytest.raises(
        ValueError, match=r"coefficient_precision must be a non-negative number \(0: no prior\)"
    ):
        LogisticRegression(2, coefficient_precision=-1.0)
    with pytest.raises(ValueError, match=r"gate_precision must be a non-negative number"):
        GatedMixture(PoissonRegression(2), gate_precision=-0.5)
    with pytest.raises(ValueError, match=r"components must be a jaxem.Components regression"):
        GatedMixture("poisson")
    with pytest.raises(ValueError, match=r"need x as a pair \(covariates, target\)"):
        PoissonRegression(2).check_data(np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"covariates \[N, P\] and target \[N\] with the same N"):
        LogisticRegression(2).check_data((np.ones((5, 2)), np.ones(4)))
    with pytest.raises(ValueError, match=r"need a target in \[0, 1\]"):
        LogisticRegression(2).check_data((np.ones((3, 1)), np.array([0.0, 2.0, 1.0])))
    with pytest.raises(ValueError, match=r"the target must be non-negative"):
        GatedMixture(PoissonRegression(2)).check_data((np.ones((2, 1)), np.array([1.0, -1.0])))
