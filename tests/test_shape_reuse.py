"""Shape reuse: rows padded to buckets change no result, and nearby sizes compile nothing new."""

import warnings

import jax
import numpy as np
import pytest

import jaxem
import jaxem.estimators.mixture as mixture_module
from jaxem.core.inputs import pad_rows, row_bucket
from jaxem.datasets import load_old_faithful
from jaxem.testing import count_compilations

X = load_old_faithful()


def max_relative_difference(a, b):
    return max(
        float(np.max(np.abs(p - q) / np.maximum(np.abs(q), 1e-300)))
        for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
@pytest.mark.parametrize("covariance_type", ["full", "spherical"])
def test_padded_fit_equals_unpadded(monkeypatch, init_params, covariance_type):
    # 272 rows run as 320 (48 copies of row 0 at weight 0): the same restarts, iterations and
    # parameters. The chunks' sums run in another order, hence 1e-12 rather than bitwise.
    settings = dict(
        n_components=3,
        covariance_type=covariance_type,
        init_params=init_params,
        n_init=2,
        random_state=1,
    )
    padded = jaxem.GaussianMixture(**settings).fit(X)
    monkeypatch.setattr(mixture_module, "PAD_FIT_MAX_ROWS", 0)
    exact = jaxem.GaussianMixture(**settings).fit(X)
    assert row_bucket(len(X)) == 320
    assert padded.n_iter_ == exact.n_iter_
    np.testing.assert_array_equal(padded.restart_n_iters_, exact.restart_n_iters_)
    assert max_relative_difference(padded.params_, exact.params_) < 1e-12
    np.testing.assert_allclose(padded.lower_bounds_, exact.lower_bounds_, rtol=1e-12)
    np.testing.assert_allclose(padded.degenerate_, exact.degenerate_)


def test_padded_fit_with_weights_and_labels_equals_unpadded(monkeypatch):
    rng = np.random.default_rng(0)
    weights = rng.uniform(0.5, 2.0, len(X))
    labels = np.full(len(X), -1)
    labels[:3], labels[-3:] = 0, 1
    family = jaxem.Gaussian(2, covariance_type="diag")
    padded = jaxem.SemiSupervisedMixture(family, random_state=0).fit(X, labels, weights)
    monkeypatch.setattr(mixture_module, "PAD_FIT_MAX_ROWS", 0)
    exact = jaxem.SemiSupervisedMixture(family, random_state=0).fit(X, labels, weights)
    assert padded.n_iter_ == exact.n_iter_
    assert max_relative_difference(padded.params_, exact.params_) < 1e-12


@pytest.mark.parametrize("method", ["predict", "predict_proba", "score_samples"])
def test_per_row_outputs_do_not_depend_on_the_batch(method):
    model = jaxem.GaussianMixture(3, random_state=0).fit(X)
    rows = np.tile(X, (3, 1))
    whole = getattr(model, method)(rows)
    for n in (1, 5, 17, 100, 272, 700):
        np.testing.assert_array_equal(getattr(model, method)(rows[:n]), whole[:n])


def test_pad_rows_leaves_its_arguments_alone():
    x = np.arange(6.0).reshape(3, 2)
    weights = np.array([1.0, 2.0, 3.0])
    padded, padded_weights = pad_rows(x, weights, num_rows=5)
    np.testing.assert_array_equal(x, np.arange(6.0).reshape(3, 2))
    np.testing.assert_array_equal(weights, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(padded[3:], [x[0], x[0]])
    np.testing.assert_array_equal(padded_weights, [1.0, 2.0, 3.0, 0.0, 0.0])
    same, no_weights = pad_rows(x, None, num_rows=3)
    assert same is x and no_weights is None


def test_nothing_compiles_again_within_a_bucket():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short fits may not converge
        model = jaxem.GaussianMixture(3, max_iter=100, random_state=0).fit(X[:181])
        model.predict(X[:100])
        model.score_samples(X[:100])
        model.sample(20)
        with count_compilations() as compiled:
            # Cross-validation folds: 181 and 182 rows share the bucket of 192.
            jaxem.GaussianMixture(3, max_iter=100, random_state=1).fit(X[1:183])
            # max_iter within the same history bucket (128), another tol: run-time values.
            jaxem.GaussianMixture(3, max_iter=70, tol=1e-5, random_state=0).fit(X[:181])
            model.predict(X[:97])
            model.score_samples(X[:105])
            model.sample(31)
        assert compiled == []
        with count_compilations() as compiled:  # a new bucket (256 rows), used nowhere else here
            jaxem.GaussianMixture(3, max_iter=100, random_state=0).fit(X[:250])
        assert compiled  # the count sees compilations when there are some


def test_functional_fit_reuses_its_program_for_another_max_iter_and_tol():
    algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2, covariance_type="diag")))
    key = jax.random.key(0)
    first = jaxem.fit(algo, key, X, max_iter=20, tol=1e-3)
    with count_compilations() as compiled:
        second = jaxem.fit(algo, key, X, max_iter=25, tol=1e-4)
    assert compiled == []
    assert first.history.shape == (20,) and second.history.shape == (25,)
    n = int(first.num_iters)
    np.testing.assert_array_equal(first.history[:n], second.history[:n])


def test_restart_lanes_run_in_buckets_and_change_nothing(monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        three = jaxem.GaussianMixture(2, n_init=3, random_state=4).fit(X)
        with count_compilations() as compiled:  # 3 and 4 restarts: one bucket of 4 lanes
            four = jaxem.GaussianMixture(2, n_init=4, random_state=4).fit(X)
        assert compiled == []
        assert three.restart_log_likelihoods_.shape == (3,)
        assert three.restart_n_iters_.shape == three.restart_statuses_.shape == (3,)
        # The same keys give the same lanes (restart i starts from split(key(4), n_init)[i]).
        np.testing.assert_array_equal(
            three.restart_log_likelihoods_, four.restart_log_likelihoods_[:3]
        )
        # Without buckets (a large fit's path), the same best restart and parameters.
        monkeypatch.setattr(mixture_module, "PAD_FIT_MAX_ROWS", 0)
        exact = jaxem.GaussianMixture(2, n_init=3, random_state=4).fit(X)
    np.testing.assert_allclose(
        exact.restart_log_likelihoods_, three.restart_log_likelihoods_, rtol=1e-12
    )
    assert max_relative_difference(three.params_, exact.params_) < 1e-12
