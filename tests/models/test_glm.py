"""Mixtures of experts: logistic and Poisson regressions by the gradient path, with constant weights
or a softmax gate (also over closed-form linear experts); recovery, restarts, monotone over many
seeds and under a deliberately bad optimizer, the contract, and input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
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
from jaxem.testing import check_model

pytestmark = pytest.mark.timeout(300)

NUM_SEEDS = 20
LOGISTIC = GLMParams(jnp.array([[5.0, 0.0], [0.0, -5.0]]), jnp.array([1.0, -1.0]))
POISSON = GLMParams(jnp.array([[2.0, -1.0], [-1.5, 0.5]]), jnp.array([0.5, 1.5]))


def _monotone(history):
    h = np.asarray(history)
    steps = np.diff(h, axis=-1)
    ok = np.isnan(steps) | (steps >= -1e-12 * np.abs(h[..., 1:]))
    assert np.all(ok), f"largest decrease {np.nanmin(steps)!r}"


def _labels(n, every=5, first=3):
    return (jnp.arange(n) % every >= first).astype(int)  # 60% in component 0


def _restarts(algo, data, seed, max_iter=150):
    keys = jax.random.split(jax.random.key(seed), NUM_SEEDS)
    best, lanes = jaxem.fit_restarts(algo, keys, data, max_iter=max_iter, tol=1e-9)
    return keys, best, lanes


def _lane_equals_single_fit(algo, keys, data, lanes, i, max_iter=150):
    single = jaxem.fit(algo, keys[i], data, max_iter=max_iter, tol=1e-9)
    assert int(single.num_iters) == int(lanes.num_iters[i])
    np.testing.assert_allclose(single.history, lanes.history[i], rtol=1e-9)
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(lanes.params), strict=True):
        np.testing.assert_allclose(a, b[i], rtol=1e-5, atol=1e-6)


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


def test_poisson_mixture_recovers_parameters(poisson_fit):
    algo, data, _, best, _ = poisson_fit
    assert int(best.status) == jaxem.Status.CONVERGED
    comp = best.params.components
    order = np.argsort(-np.asarray(comp.coefficients[:, 0]))
    np.testing.assert_allclose(np.asarray(best.params.weights)[order], [0.6, 0.4], atol=0.03)
    np.testing.assert_allclose(np.asarray(comp.coefficients)[order], POISSON.coefficients, atol=0.1)
    np.testing.assert_allclose(np.asarray(comp.intercepts)[order], POISSON.intercepts, atol=0.15)
    truth = jaxem.MixtureParams(jnp.array([0.6, 0.4]), POISSON)
    assert float(best.log_likelihood) >= float(algo.objective(truth, data, None))


def test_poisson_mixture_monotone_and_lane_equals_single_fit(poisson_fit):
    algo, data, keys, _, lanes = poisson_fit
    _monotone(lanes.history)
    _lane_equals_single_fit(algo, keys, data, lanes, 3)


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
    _monotone(lanes.history)
    truth = jaxem.MixtureParams(jnp.array([0.6, 0.4]), LOGISTIC)
    assert float(best.log_likelihood) >= float(algo.objective(truth, data, None))
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
    _monotone(lanes.history)
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
    _monotone(result.history)


@pytest.fixture(scope="module")
def gated_poisson_data():
    n = 500
    covariates = jax.random.normal(jax.random.key(10), (n, 2))
    gate_logits = covariates @ jnp.array([[2.0, 0.0], [-2.0, 0.0]]).T
    labels = jax.random.categorical(jax.random.key(11), gate_logits)
    target = PoissonRegression(2).sample(jax.random.key(12), POISSON, labels, covariates)
    return covariates, target


@pytest.mark.slow
def test_gated_poisson_monotone_and_lane_equals_single_fit(gated_poisson_data):
    algo = jaxem.em(GatedMixture(PoissonRegression(2)), jaxem.Gradient(num_steps=10))
    keys, _, lanes = _restarts(algo, gated_poisson_data, 13, max_iter=40)
    _monotone(lanes.history)
    assert np.all(np.asarray(lanes.status) != jaxem.Status.NONFINITE)
    _lane_equals_single_fit(algo, keys, gated_poisson_data, lanes, 11, max_iter=40)


@pytest.mark.slow
def test_gated_logistic_monotone_under_a_huge_learning_rate(gated_poisson_data):
    covariates, counts = gated_poisson_data
    data = (covariates, (counts > 3).astype(covariates.dtype))
    mstep = jaxem.Gradient(optimizer=jaxem.Optimizer(optax.sgd, 1e3), num_steps=3)
    algo = jaxem.em(GatedMixture(LogisticRegression(2)), mstep)
    keys = jax.random.split(jax.random.key(14), NUM_SEEDS)
    _, lanes = jaxem.fit_restarts(algo, keys, data, max_iter=10, tol=0.0)
    assert np.all(np.asarray(lanes.status) != jaxem.Status.NONFINITE)
    _monotone(lanes.history)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_logistic_mixture_passes_the_contract(logistic_fit):
    _, data, *_ = logistic_fit
    small = jax.tree.map(lambda a: a[::6], data)
    check_model(
        jaxem.Mixture(LogisticRegression(2, coefficient_precision=0.1)),
        small,
        mstep=jaxem.Gradient(num_steps=5),
        max_iter=8,
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_gated_mixture_passes_the_contract(gated_linear_data):
    data, _ = gated_linear_data
    small = jax.tree.map(lambda a: a[::4], data)
    check_model(
        GatedMixture(LinearRegression(2), gate_precision=0.01),
        small,
        mstep=jaxem.Gradient(num_steps=5),
        max_iter=8,
        fixed_point=False,
    )


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
