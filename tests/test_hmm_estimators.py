"""HMM estimators against hmmlearn from the same starting point, and their hmmlearn conventions."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
from hmmlearn import hmm as hmmlearn

import jaxem
from jaxem.hmm import CategoricalHMM, GaussianHMM, PoissonHMM

LENGTHS = [40, 60]


def set_start(models, params):
    for model in models:
        for name, value in params.items():
            setattr(model, name, value)


def fit_quietly(model, x, lengths):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(x, lengths)


def chain(rng, k):
    return {
        "startprob_": rng.dirichlet(np.ones(k)),
        "transmat_": rng.dirichlet(np.ones(k), k),
    }


@pytest.mark.timeout(120)
@pytest.mark.parametrize("params", ["stmc", "stm"])
def test_gaussian_hmm_equals_hmmlearn_including_frozen_parts(params):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 2)) + np.repeat(rng.normal(size=(2, 2)) * 3, LENGTHS, axis=0)
    start = {**chain(rng, 3), "means_": rng.normal(size=(3, 2)), "covars_": np.full((3, 2), 1.5)}
    ref = hmmlearn.GaussianHMM(
        3, "diag", covars_prior=0.0, init_params="", params=params, n_iter=6, tol=-np.inf
    )
    ours = GaussianHMM(3, "diag", min_covar=0.0, init_params="", params=params, n_iter=6, tol=0)
    set_start([ref, ours], start)
    ref.fit(x, LENGTHS)
    fit_quietly(ours, x, LENGTHS)
    np.testing.assert_allclose(ours.monitor_.history, ref.monitor_.history, rtol=1e-8)
    np.testing.assert_allclose(ours.means_, ref.means_, atol=1e-8)
    np.testing.assert_allclose(ours.covars_, ref.covars_, atol=1e-8)
    np.testing.assert_array_equal(ours.predict(x, LENGTHS), ref.predict(x, LENGTHS))
    assert ours.score(x, LENGTHS) == pytest.approx(ref.score(x, LENGTHS), rel=1e-10)
    log_prob, path = ours.decode(x, LENGTHS)
    ref_log_prob, ref_path = ref.decode(x, LENGTHS)
    assert log_prob == pytest.approx(ref_log_prob, rel=1e-10)
    np.testing.assert_array_equal(path, ref_path)
    np.testing.assert_allclose(
        ours.predict_proba(x, LENGTHS), ref.predict_proba(x, LENGTHS), atol=1e-8
    )


@pytest.mark.timeout(120)
def test_scaled_inference_equals_hmmlearn_scaling():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(100, 2)) + np.repeat(rng.normal(size=(2, 2)) * 3, LENGTHS, axis=0)
    start = {**chain(rng, 3), "means_": rng.normal(size=(3, 2)), "covars_": np.full((3, 2), 1.5)}
    ref = hmmlearn.GaussianHMM(
        3, "diag", covars_prior=0.0, init_params="", n_iter=6, tol=-np.inf, implementation="scaling"
    )
    ours = GaussianHMM(
        3, "diag", min_covar=0.0, init_params="", n_iter=6, tol=0, inference="scaled"
    )
    set_start([ref, ours], start)
    ref.fit(x, LENGTHS)
    fit_quietly(ours, x, LENGTHS)
    assert ours.model_.inference == "scaled"
    np.testing.assert_allclose(ours.monitor_.history, ref.monitor_.history, rtol=1e-10)
    np.testing.assert_allclose(ours.means_, ref.means_, atol=1e-8)
    np.testing.assert_allclose(ours.transmat_, ref.transmat_, atol=1e-8)
    np.testing.assert_allclose(
        ours.predict_proba(x, LENGTHS), ref.predict_proba(x, LENGTHS), atol=1e-8
    )


@pytest.mark.timeout(120)
def test_frozen_means_keep_em_monotone():
    # hmmlearn 0.3.3 with params="stc" lets its log-likelihood fall, so it is no reference here:
    # with the means fixed, the covariances about them are the exact conditional maximiser.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 2)) + np.repeat(rng.normal(size=(2, 2)) * 3, LENGTHS, axis=0)
    model = GaussianHMM(3, "full", min_covar=0.0, init_params="", params="stc", n_iter=8, tol=0)
    means = rng.normal(size=(3, 2))
    set_start([model], {**chain(rng, 3), "means_": means, "covars_": np.stack([np.eye(2)] * 3)})
    fit_quietly(model, x, LENGTHS)
    np.testing.assert_array_equal(model.means_, means)
    assert np.all(np.diff(model.monitor_.history) > 0)


@pytest.mark.timeout(120)
def test_categorical_hmm_equals_hmmlearn():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, (100, 1))
    start = {**chain(rng, 3), "emissionprob_": rng.dirichlet(np.ones(4), 3)}
    ref = hmmlearn.CategoricalHMM(3, init_params="", n_iter=6, tol=-np.inf)
    ours = CategoricalHMM(3, init_params="", n_iter=6, tol=0)
    set_start([ref, ours], start)
    ref.fit(x, LENGTHS)
    fit_quietly(ours, x, LENGTHS)
    np.testing.assert_allclose(ours.monitor_.history, ref.monitor_.history, rtol=1e-8)
    np.testing.assert_allclose(ours.emissionprob_, ref.emissionprob_, atol=1e-8)
    # Discrete symbols can tie two best paths; the best path's probability must agree.
    assert ours.decode(x, LENGTHS)[0] == pytest.approx(ref.decode(x, LENGTHS)[0], rel=1e-10)


@pytest.mark.timeout(120)
def test_poisson_hmm_equals_hmmlearn():
    rng = np.random.default_rng(2)
    x = rng.poisson(np.repeat([[1.0, 4.0], [6.0, 2.0]], LENGTHS, axis=0))
    start = {**chain(rng, 3), "lambdas_": rng.uniform(1.0, 6.0, (3, 2))}
    ref = hmmlearn.PoissonHMM(3, init_params="", n_iter=6, tol=-np.inf)
    ours = PoissonHMM(3, init_params="", n_iter=6, tol=0)
    set_start([ref, ours], start)
    ref.fit(x, LENGTHS)
    fit_quietly(ours, x, LENGTHS)
    np.testing.assert_allclose(ours.monitor_.history, ref.monitor_.history, rtol=1e-8)
    np.testing.assert_allclose(ours.lambdas_, ref.lambdas_, atol=1e-8)
    np.testing.assert_array_equal(ours.predict(x, LENGTHS), ref.predict(x, LENGTHS))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_restarts_generic_estimator_sampling_and_parallel_inference():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(100, 2)) + np.repeat([[0.0, 0.0], [4.0, 4.0]], LENGTHS, axis=0)
    model = fit_quietly(GaussianHMM(2, n_iter=30, n_init=3, random_state=0), x, LENGTHS)
    assert model.monitor_.converged
    assert model.lower_bound_ == pytest.approx(model.restart_log_likelihoods_.max())
    proba = model.predict_proba(x, LENGTHS)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    split = model.score(x[:40]) + model.score(x[40:])
    assert model.score(x, LENGTHS) == pytest.approx(split, rel=1e-12)

    model.inference = "parallel"
    model.model_ = jaxem.hmm.HiddenMarkovModel(model.model_.emissions, inference="parallel")
    np.testing.assert_allclose(model.predict_proba(x, LENGTHS), proba, atol=1e-10)

    samples, states = model.sample(50, random_state=1, currstate=1)
    assert samples.shape == (50, 2) and states.shape == (50,) and states[0] == 1

    generic = fit_quietly(
        jaxem.hmm.HMM(jaxem.Gaussian(2, "tied"), n_iter=20, random_state=0), x, LENGTHS
    )
    assert generic.emission_params_.means.shape == (2, 2)
    assert generic.predict(x, LENGTHS).shape == (100,)


@pytest.mark.timeout(60)
def test_errors_name_the_problem():
    x = np.zeros((10, 1))
    with pytest.raises(ValueError, match="lengths sum to 9 but X has 10 rows"):
        GaussianHMM(2).fit(x, [4, 5])
    with pytest.raises(ValueError, match="params must be a string of the letters 'stmc'"):
        GaussianHMM(2, params="stx").fit(x)
    with pytest.raises(ValueError, match="X has 10 rows but n_components=20"):
        GaussianHMM(20).fit(x)
    with pytest.raises(ValueError, match="non-negative integer symbols"):
        CategoricalHMM(2).fit(np.full((10, 1), 0.5))
    with pytest.raises(ValueError, match="transmat_ must be non-negative and sum to 1"):
        model = GaussianHMM(2, init_params="smc")
        model.transmat_ = np.ones((2, 2))
        model.fit(np.random.default_rng(0).normal(size=(10, 1)))
    with pytest.raises(jaxem.estimators.NotFittedError):
        GaussianHMM(2).predict(x)


@pytest.mark.timeout(60)
def test_user_data_is_not_modified():
    x = np.random.default_rng(4).normal(size=(50, 2))
    copy = x.copy()
    lengths = [20, 30]
    fit_quietly(GaussianHMM(2, n_iter=3, random_state=0), x, lengths)
    np.testing.assert_array_equal(x, copy)
    assert lengths == [20, 30]
    assert jnp.asarray(x).dtype == jnp.float64
