"""Estimator input validation: every mistake is refused before any work, with an exact message."""

from contextlib import contextmanager

import numpy as np
import pytest
import scipy.sparse

import jaxem
import jaxem.estimators.base
import jaxem.estimators.mixture
from jaxem.estimators import GaussianMixture, MixtureModel

X = np.random.default_rng(0).normal(size=(20, 2))


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    """Fail any test that reaches the data conversion or the fit: checks come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started before validation finished")

    monkeypatch.setattr(jaxem.estimators.mixture, "prepare_data", refuse)
    monkeypatch.setattr(jaxem.estimators.base, "fit_restarts", refuse)


@contextmanager
def raises_exactly(error, message):
    with pytest.raises(error) as caught:
        yield
    assert str(caught.value) == message


def with_value(row, col, value):
    x = X.copy()
    x[row, col] = value
    return x


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            with_value(3, 1, np.nan),
            "X contains NaN or infinity: remove or impute those values before fitting (for "
            "instance with sklearn.impute.SimpleImputer).",
        ),
        (
            with_value(0, 0, -np.inf),
            "X contains NaN or infinity: remove or impute those values before fitting (for "
            "instance with sklearn.impute.SimpleImputer).",
        ),
        (
            X[:, 0],
            "X must be 2-D (n_samples, n_features), got 1-D with shape (20,). Reshape your data "
            "with X.reshape(-1, 1) if it has a single feature or X.reshape(1, -1) if it is a "
            "single sample.",
        ),
        (
            X[None],
            "X must be 2-D (n_samples, n_features), got 3-D with shape (1, 20, 2). Reshape your "
            "data with X.reshape(-1, 1) if it has a single feature or X.reshape(1, -1) if it is "
            "a single sample.",
        ),
        (
            np.zeros((0, 2)),
            "X has 0 sample(s) (shape=(0, 2)) while a minimum of 1 is required: pass at least "
            "one row.",
        ),
        (
            np.zeros((5, 0)),
            "X has 0 feature(s) (shape=(5, 0)) while a minimum of 1 is required: pass at least "
            "one column.",
        ),
        (
            np.array([["a", "b"], ["c", "d"]]),
            "X must be numeric, got dtype <U1: encode text or categorical columns as numbers "
            "first.",
        ),
        (
            X + 1j,
            "Complex data not supported: X has dtype complex128; pass real-valued features (for "
            "instance X.real and X.imag as separate columns).",
        ),
    ],
    ids=["nan", "inf", "1d", "3d", "no-rows", "no-columns", "strings", "complex"],
)
def test_bad_x(data, message):
    with raises_exactly(ValueError, message):
        GaussianMixture(2).fit(data)


@pytest.mark.timeout(30)
def test_objects_that_are_not_numbers_and_sparse_matrices_are_type_errors():
    x = X.astype(object)
    x[0, 0] = {"a": 1}
    with pytest.raises(TypeError, match=r"^X must be numeric, but converting it to float failed"):
        GaussianMixture(2).fit(x)
    with raises_exactly(
        TypeError,
        "X is a sparse matrix, and sparse input is not supported: pass a dense array "
        "(X.toarray()) if it fits in memory.",
    ):
        GaussianMixture(2).fit(scipy.sparse.csr_matrix(X))


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"n_components": 0}, "n_components must be an integer >= 1, got 0."),
        ({"n_components": 2.5}, "n_components must be an integer >= 1, got 2.5."),
        (
            {"n_components": 21},
            "X has 20 samples but n_components=21: each component needs at least one sample; "
            "lower n_components or pass more data (n_samples >= n_components).",
        ),
        (
            {"covariance_type": "banded"},
            "Unknown covariance_type 'banded': use one of 'full', 'tied', 'diag', 'spherical'.",
        ),
        (
            {"init_params": "kmeans++"},
            "Unknown init_params 'kmeans++': use one of 'kmeans', 'k-means++', 'random', "
            "'random_from_data'.",
        ),
        ({"reg_covar": -1e-6}, "reg_covar must be a finite number >= 0.0, got -1e-06."),
        ({"n_init": 0}, "n_init must be an integer >= 1, got 0."),
        ({"max_iter": -1}, "max_iter must be an integer >= 0, got -1."),
        ({"tol": -0.1}, "tol must be a finite number >= 0.0, got -0.1."),
        ({"tol": np.nan}, "tol must be a finite number >= 0.0, got nan."),
        ({"verbose_interval": 0}, "verbose_interval must be an integer >= 1, got 0."),
        ({"warm_start": "yes"}, "warm_start must be True or False, got 'yes'."),
        ({"chunk_size": 0}, "chunk_size must be an integer >= 1, got 0."),
        (
            {"random_state": "seed"},
            "random_state must be None, an integer, a numpy RandomState or Generator, got 'seed'.",
        ),
    ],
)
def test_bad_settings(settings, message):
    with raises_exactly(ValueError, message):
        GaussianMixture(**{"n_components": 2, **settings}).fit(X)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("sample_weight", "message"),
    [
        (
            np.ones(19),
            "sample_weight has shape (19,) but X has 20 samples: pass one weight per row of X.",
        ),
        (
            np.r_[np.ones(19), -2.0],
            "sample_weight has negative values (min -2): weights must be non-negative; drop "
            "those rows or give them weight 0.",
        ),
        (
            np.zeros(20),
            "sample_weight is zero for every sample: at least one sample needs a positive weight.",
        ),
        (
            np.r_[np.ones(19), np.nan],
            "sample_weight contains NaN or infinity: pass finite weights.",
        ),
    ],
    ids=["length", "negative", "all-zero", "nan"],
)
def test_bad_sample_weight(sample_weight, message):
    with raises_exactly(ValueError, message):
        GaussianMixture(2).fit(X, sample_weight=sample_weight)


GOOD_MEANS = np.zeros((2, 2))


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"weights_init": np.ones(3) / 3},
            "weights_init should have the shape (2,), but got (3,): pass one entry per component "
            "(and per feature) in scikit-learn's layout.",
        ),
        (
            {"weights_init": [0.5, 0.6]},
            "weights_init must sum to 1, got sum 1.1: normalise it (weights_init / "
            "weights_init.sum()).",
        ),
        (
            {"weights_init": [-0.5, 1.5]},
            "weights_init must lie in [0, 1], got min -0.5 and max 1.5: pass proportions.",
        ),
        (
            {"means_init": np.zeros((2, 3))},
            "means_init should have the shape (2, 2), but got (2, 3): pass one entry per "
            "component (and per feature) in scikit-learn's layout.",
        ),
        (
            {"means_init": [[0.0, np.nan], [0.0, 0.0]]},
            "means_init contains NaN or infinity: pass finite values.",
        ),
        (
            {"precisions_init": np.ones((2, 2))},
            "precisions_init should have the shape (2, 2, 2), but got (2, 2): pass one entry per "
            "component (and per feature) in scikit-learn's layout.",
        ),
        (
            {"precisions_init": np.stack([np.eye(2), -np.eye(2)])},
            "precisions_init must be symmetric and positive definite: pass inverse covariance "
            "matrices (for instance np.linalg.inv of covariances plus a small ridge).",
        ),
        (
            {"covariance_type": "tied", "precisions_init": [[1.0, 0.5], [0.0, 1.0]]},
            "precisions_init must be symmetric and positive definite: pass inverse covariance "
            "matrices (for instance np.linalg.inv of covariances plus a small ridge).",
        ),
        (
            {"covariance_type": "diag", "precisions_init": [[1.0, 0.0], [1.0, 1.0]]},
            "precisions_init must be positive (precisions are inverse variances), got min 0.",
        ),
        (
            {"covariance_type": "spherical", "precisions_init": np.ones((2, 2))},
            "precisions_init should have the shape (2,), but got (2, 2): pass one entry per "
            "component (and per feature) in scikit-learn's layout.",
        ),
    ],
)
def test_bad_initial_parameters(settings, message):
    with raises_exactly(ValueError, message):
        GaussianMixture(2, **settings).fit(X)


@pytest.mark.timeout(30)
def test_generic_estimator_settings():
    with raises_exactly(
        ValueError, "components must be a jaxem.Components (e.g. jaxem.Gaussian(3)), got str."
    ):
        MixtureModel("gaussian").fit(X)
    with raises_exactly(
        ValueError, "weight_concentration must be a finite number >= 1.0, got 0.5."
    ):
        MixtureModel(jaxem.Gaussian(2), weight_concentration=0.5).fit(X)
    with raises_exactly(ValueError, "verbose must be an integer >= 0, got -1."):
        MixtureModel(jaxem.Gaussian(2), verbose=-1).fit(X)


@pytest.mark.timeout(30)
def test_unfitted_estimator_refuses_to_predict():
    message = (
        "This GaussianMixture instance is not fitted yet: call 'fit' with appropriate arguments "
        "before using this estimator."
    )
    for method in ("predict", "predict_proba", "score_samples", "score", "bic", "aic"):
        with raises_exactly(jaxem.estimators.NotFittedError, message):
            getattr(GaussianMixture(2), method)(X)
    with raises_exactly(jaxem.estimators.NotFittedError, message):
        GaussianMixture(2).sample(3)


@pytest.mark.timeout(30)
def test_data_after_fit_must_have_the_fitted_features():
    gm = GaussianMixture(2)
    gm.params_, gm.n_features_in_ = object(), 2  # only what the check reads
    with raises_exactly(
        ValueError,
        "X has 3 features, but GaussianMixture is expecting 2 features as input: pass data "
        "with the columns used in fit.",
    ):
        gm.predict(np.zeros((4, 3)))


@pytest.mark.timeout(30)
def test_checks_never_write_to_the_users_arrays():
    x = with_value(0, 0, np.nan)
    weights = np.ones(20)
    means = np.zeros((2, 2))
    for a in (x, weights, means):
        a.setflags(write=False)
    with pytest.raises(ValueError, match="NaN"):
        GaussianMixture(2, means_init=means).fit(x, sample_weight=weights)
    assert np.isnan(x[0, 0]) and np.all(weights == 1) and np.all(means == 0)
