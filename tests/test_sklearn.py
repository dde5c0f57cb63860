"""The scikit-learn-compatible estimators: agreement with scikit-learn, restarts, warm starts,
sampling, dtypes and scikit-learn's own estimator checks."""

import os
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.mixture
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

import jaxem
from jaxem.estimators import ILL_DEFINED_MESSAGE, GaussianMixture, MixtureModel
from jaxem.testing import count_compilations

ROOT = Path(__file__).resolve().parents[1]
OLD_FAITHFUL = np.loadtxt(ROOT / "jaxem/datasets/old_faithful.csv", delimiter=",", skiprows=1)
IRIS = load_iris().data
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
# One max_iter everywhere the reference comparison's compiled fits can be reused.
MAX_ITER = 500


def user_init(x, k, covariance_type, seed=0):
    """Deterministic initial parameters in scikit-learn's layout: random rows as means, the
    inverse data covariance as every precision, equal weights."""
    rng = np.random.default_rng(seed)
    means = x[rng.choice(len(x), k, replace=False)]
    cov = np.cov(x.T)
    precisions = {
        "full": np.stack([np.linalg.inv(cov)] * k),
        "tied": np.linalg.inv(cov),
        "diag": np.tile(1 / np.diag(cov), (k, 1)),
        "spherical": np.full(k, 1 / np.mean(np.diag(cov))),
    }[covariance_type]
    return {"weights_init": np.full(k, 1 / k), "means_init": means, "precisions_init": precisions}


def settings(x, covariance_type, k=3, **extra):
    base = dict(n_components=k, covariance_type=covariance_type, tol=1e-6, max_iter=MAX_ITER)
    return {**base, **user_init(x, k, covariance_type), **extra}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("dataset", ["old_faithful", pytest.param("iris", marks=pytest.mark.slow)])
def test_equals_sklearn_from_same_init(dataset, covariance_type):
    x = OLD_FAITHFUL if dataset == "old_faithful" else IRIS
    kw = settings(x, covariance_type)
    ref = sklearn.mixture.GaussianMixture(**kw).fit(x)
    ours = GaussianMixture(**kw).fit(x)

    assert ours.converged_ and ref.converged_
    assert ours.n_iter_ == ref.n_iter_ > 5
    np.testing.assert_allclose(ours.lower_bounds_, ref.lower_bounds_, rtol=1e-10)
    np.testing.assert_allclose(ours.lower_bound_, ref.lower_bound_, rtol=1e-10)
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        np.testing.assert_allclose(
            getattr(ours, name), getattr(ref, name), rtol=1e-8, atol=1e-12, err_msg=name
        )
    np.testing.assert_array_equal(ours.predict(x), ref.predict(x))
    np.testing.assert_allclose(ours.predict_proba(x), ref.predict_proba(x), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(ours.score_samples(x), ref.score_samples(x), rtol=1e-9)
    np.testing.assert_allclose(ours.score(x), ref.score(x), rtol=1e-10)
    np.testing.assert_allclose(ours.bic(x), ref.bic(x), rtol=1e-10)
    np.testing.assert_allclose(ours.aic(x), ref.aic(x), rtol=1e-10)
    assert not ours.degenerate_.any()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("covariance_type", ["full", "spherical"])
def test_bic_aic_equal_sklearn_for_same_parameters(covariance_type):
    # Our default (k-means) start differs from scikit-learn's: give scikit-learn our fitted
    # parameters and compare the criteria.
    ours = GaussianMixture(3, covariance_type=covariance_type, random_state=0).fit(IRIS)
    ref = sklearn.mixture.GaussianMixture(3, covariance_type=covariance_type)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
        setattr(ref, name, getattr(ours, name))
    np.testing.assert_allclose(ours.bic(IRIS), ref.bic(IRIS), rtol=1e-12)
    np.testing.assert_allclose(ours.aic(IRIS), ref.aic(IRIS), rtol=1e-12)
    np.testing.assert_allclose(ours.score_samples(IRIS), ref.score_samples(IRIS), rtol=1e-10)


@pytest.mark.timeout(120)
def test_fit_predict_equals_fit_then_predict():
    kw = dict(n_components=3, covariance_type="diag", n_init=2, max_iter=3, random_state=1)
    with pytest.warns(jaxem.ConvergenceWarning):
        labels = GaussianMixture(**kw).fit_predict(IRIS)
    with pytest.warns(jaxem.ConvergenceWarning):
        fitted = GaussianMixture(**kw).fit(IRIS)
    np.testing.assert_array_equal(labels, fitted.predict(IRIS))
    np.testing.assert_array_equal(labels, np.argmax(fitted.predict_proba(IRIS), axis=1))


@pytest.mark.timeout(120)
def test_restarts_pick_the_best_and_lane_i_is_the_single_fit_from_key_i():
    seed, n_init = 3, 4
    gm = GaussianMixture(3, covariance_type="full", n_init=n_init, random_state=seed).fit(
        OLD_FAITHFUL
    )
    lls = gm.restart_log_likelihoods_
    assert lls.shape == gm.restart_n_iters_.shape == gm.restart_statuses_.shape == (n_init,)
    np.testing.assert_array_equal(gm.restart_statuses_, jaxem.Status.CONVERGED)
    best = int(np.argmax(lls))
    np.testing.assert_allclose(gm.score(OLD_FAITHFUL), lls[best], rtol=1e-10)
    assert gm.n_iter_ == gm.restart_n_iters_[best]

    algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(3, "full", 1e-6, "kmeans")))
    keys = jax.random.split(jax.random.key(seed), n_init)
    for i in range(n_init):
        single = jaxem.fit(algo, keys[i], OLD_FAITHFUL, max_iter=100, tol=1e-3)
        # The estimator reports means per sample, the functional API totals.
        mean = single.log_likelihood / OLD_FAITHFUL.shape[0]
        np.testing.assert_allclose(lls[i], mean, rtol=1e-10)
        assert gm.restart_n_iters_[i] == single.num_iters


@pytest.mark.timeout(120)
def test_warm_start_continues_the_previous_fit():
    kw = settings(IRIS, "full", max_iter=2)
    with pytest.warns(jaxem.ConvergenceWarning):
        warm = GaussianMixture(warm_start=True, **kw).fit(IRIS)
    with pytest.warns(jaxem.ConvergenceWarning):
        warm.fit(IRIS)  # two more iterations from where the first fit stopped
    with pytest.warns(jaxem.ConvergenceWarning):
        straight = GaussianMixture(**{**kw, "max_iter": 4}).fit(IRIS)
    np.testing.assert_allclose(warm.lower_bounds_, straight.lower_bounds_[2:], rtol=1e-12)
    np.testing.assert_allclose(warm.means_, straight.means_, rtol=1e-10)
    np.testing.assert_allclose(warm.covariances_, straight.covariances_, rtol=1e-10)
    assert warm.restart_n_iters_.shape == (1,)

    warm.set_params(weights_init=None, means_init=None, precisions_init=None)
    with pytest.raises(ValueError, match="set warm_start=False to start afresh"):
        warm.fit(IRIS[:, :2])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_sample_follows_the_fitted_mixture(covariance_type):
    gm = GaussianMixture(**settings(IRIS, covariance_type), random_state=0).fit(IRIS)
    x, y = gm.sample(40_000)
    assert x.shape == (40_000, 4) and y.shape == (40_000,)
    assert x.dtype == np.float64 and np.all(np.diff(y) >= 0)
    np.testing.assert_allclose(np.bincount(y, minlength=3) / len(y), gm.weights_, atol=0.01)
    full = {
        "full": lambda c: c,
        "tied": lambda c: np.stack([c] * 3),
        "diag": lambda c: np.stack([np.diag(row) for row in c]),
        "spherical": lambda c: c[:, None, None] * np.eye(4),
    }[covariance_type](gm.covariances_)
    for k in range(3):
        rows = x[y == k]
        scale = np.sqrt(np.diag(full[k]))
        np.testing.assert_allclose(rows.mean(0), gm.means_[k], atol=0.05 * scale.max())
        np.testing.assert_allclose(np.cov(rows.T), full[k], atol=0.08 * scale.max() ** 2)
    # Same random_state, same draws.
    np.testing.assert_array_equal(gm.sample(5)[0], gm.sample(5)[0])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_sample_sizes_of_one_bucket_share_a_program_and_equal_an_exact_size_draw(covariance_type):
    gm = GaussianMixture(**settings(IRIS, covariance_type), random_state=3).fit(IRIS)
    gm.sample(17)  # compiles the 32-row bucket
    with count_compilations() as compiled:
        draws = {n: gm.sample(n) for n in (18, 25, 32)}
    assert compiled == []
    key_labels, key_draw = jax.random.split(jax.random.key(3))
    for n, (x, y) in draws.items():
        labels = jnp.sort(
            jax.random.categorical(key_labels, jnp.log(gm.params_.weights), shape=(n,))
        )
        exact = gm.model_.components.sample(key_draw, gm.params_.components, labels)
        np.testing.assert_array_equal(y, labels)
        np.testing.assert_array_equal(x, exact)


@pytest.mark.timeout(60)
def test_sample_rejects_bad_counts():
    gm = GaussianMixture(**settings(IRIS, "full")).fit(IRIS)
    with pytest.raises(ValueError, match=r"Invalid value for 'n_samples': 0\. The sampling"):
        gm.sample(0)


@pytest.mark.timeout(120)
def test_convergence_warning_is_jaxem_and_sklearn_class():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gm = GaussianMixture(2, max_iter=1, random_state=0).fit(IRIS)
    (warning,) = [w for w in caught if issubclass(w.category, UserWarning)]
    assert issubclass(warning.category, jaxem.ConvergenceWarning)
    assert issubclass(warning.category, SklearnConvergenceWarning)
    assert "did not converge within max_iter=1" in str(warning.message)
    assert not gm.converged_ and gm.n_iter_ == 1
    assert gm.restart_statuses_.tolist() == [jaxem.Status.MAX_ITER]


@pytest.mark.timeout(120)
def test_collapsed_data_raise_sklearns_advice():
    x = np.ones((10, 2))
    with pytest.raises(ValueError) as err:
        GaussianMixture(1, covariance_type="diag", reg_covar=0.0, random_state=0).fit(x)
    assert str(err.value) == ILL_DEFINED_MESSAGE


@pytest.mark.timeout(120)
def test_partial_user_init_fills_in_from_the_hard_partition_of_the_given_means():
    means = IRIS[[0, 60, 120]]
    gm = GaussianMixture(3, means_init=means, max_iter=0, n_init=2).fit(IRIS)
    labels = np.argmin(((IRIS[:, None] - means[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(labels, minlength=3)
    np.testing.assert_allclose(gm.means_, means)
    np.testing.assert_allclose(gm.weights_, counts / len(IRIS), rtol=1e-12)
    for k in range(3):
        expected = np.cov(IRIS[labels == k].T, bias=True) + 1e-6 * np.eye(4)
        np.testing.assert_allclose(gm.covariances_[k], expected, rtol=1e-8)
    # A deterministic start: every restart is the same.
    np.testing.assert_allclose(gm.restart_log_likelihoods_, gm.restart_log_likelihoods_[0])

    weights = np.array([0.2, 0.3, 0.5])
    gm = GaussianMixture(3, weights_init=weights, max_iter=0, random_state=0).fit(IRIS)
    np.testing.assert_allclose(gm.weights_, weights)


@pytest.mark.timeout(120)
def test_integer_sample_weight_equals_repeated_rows_and_chunks_equal_whole():
    x = OLD_FAITHFUL[:60]
    counts = np.arange(60) % 3
    kw = settings(x, "full", k=2)
    weighted = GaussianMixture(**kw).fit(x, sample_weight=counts)
    repeated = GaussianMixture(**kw).fit(np.repeat(x, counts, axis=0))
    chunked = GaussianMixture(chunk_size=7, **kw).fit(x, sample_weight=counts)
    assert weighted.n_iter_ == repeated.n_iter_ == chunked.n_iter_
    np.testing.assert_allclose(weighted.means_, repeated.means_, rtol=1e-9)
    np.testing.assert_allclose(weighted.covariances_, repeated.covariances_, rtol=1e-8)
    np.testing.assert_allclose(weighted.lower_bounds_, chunked.lower_bounds_, rtol=1e-12)
    np.testing.assert_allclose(weighted.means_, chunked.means_, rtol=1e-12)
    np.testing.assert_array_equal(weighted.predict(x), chunked.predict(x))


@pytest.mark.timeout(120)
def test_user_arrays_are_never_modified():
    x = OLD_FAITHFUL[:50].copy()
    weights = np.linspace(0.5, 2.0, 50)
    kw = settings(x, "full", k=2)
    given = [x, weights, kw["weights_init"], kw["means_init"], kw["precisions_init"]]
    copies = [a.copy() for a in given]
    for a in given:
        a.setflags(write=False)  # any write raises
    gm = GaussianMixture(**kw).fit(x, sample_weight=weights)
    gm.predict(x), gm.predict_proba(x), gm.score_samples(x), gm.sample(3)
    for a, c in zip(given, copies, strict=True):
        np.testing.assert_array_equal(a, c)
    assert gm.means_init is kw["means_init"]


@pytest.mark.timeout(120)
def test_float32_input_fits_in_float32_and_float64_in_float64():
    x32 = IRIS.astype(np.float32)
    kw = dict(n_components=2, covariance_type="diag", random_state=0)
    gm32 = GaussianMixture(**kw).fit(x32)
    gm64 = GaussianMixture(**kw).fit(IRIS)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "lower_bounds_"):
        assert getattr(gm32, name).dtype == np.float32, name
        assert getattr(gm64, name).dtype == np.float64, name
        assert isinstance(getattr(gm32, name), np.ndarray)
    assert gm32.predict_proba(x32).dtype == np.float32
    assert gm32.predict_proba(IRIS).dtype == np.float32  # later input follows the fit
    np.testing.assert_allclose(gm32.means_, gm64.means_, rtol=1e-3)


@pytest.mark.timeout(180)
def test_float64_without_x64_fits_in_float32_with_one_precision_warning():
    script = textwrap.dedent(
        """
        import warnings
        import numpy as np
        import jaxem
        x = np.random.default_rng(0).normal(size=(100, 2))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gm = jaxem.GaussianMixture(2, random_state=0).fit(x)
            gm.predict(x), gm.score(x), gm.sample(2)
        precision = [w for w in caught if issubclass(w.category, jaxem.PrecisionWarning)]
        print(len(precision), gm.means_.dtype, gm.predict_proba(x).dtype)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            jaxem.GaussianMixture(2, random_state=0).fit(x.astype(np.float32))
        print(sum(issubclass(w.category, jaxem.PrecisionWarning) for w in caught))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[0] == "1 float32 float32"
    assert out[1] == "0"


@dataclass(frozen=True)
class UnitGaussians(jaxem.Components):
    """Unit-variance Gaussians at random rows: a family with neither a free-parameter count nor a
    sampler (and no closed-form M-step, so only the weights move)."""

    num_components: int

    def init(self, key, x, row_weights):
        return x[jax.random.choice(key, x.shape[0], (self.num_components,), replace=False)]

    def log_prob(self, params, x_one):
        d = x_one.shape[-1]
        return -0.5 * jnp.sum((x_one - params) ** 2, axis=-1) - 0.5 * d * jnp.log(2 * jnp.pi)


@pytest.mark.timeout(120)
def test_mixture_model_wraps_any_family():
    kw = dict(n_init=2, random_state=0, max_iter=MAX_ITER, tol=1e-6)
    generic = MixtureModel(jaxem.Gaussian(3, "diag", 1e-6, "kmeans"), **kw).fit(IRIS)
    gm = GaussianMixture(3, covariance_type="diag", **kw).fit(IRIS)
    np.testing.assert_array_equal(generic.params_.components.means, gm.means_)
    np.testing.assert_array_equal(generic.lower_bounds_, gm.lower_bounds_)
    assert generic.bic(IRIS) == gm.bic(IRIS)
    assert generic.sample(10)[0].shape == (10, 4)

    custom = MixtureModel(UnitGaussians(2), random_state=0, max_iter=5, tol=0.0)
    with pytest.warns(jaxem.ConvergenceWarning):
        custom.fit(IRIS)
    assert custom.predict(IRIS).shape == (150,)
    np.testing.assert_allclose(custom.predict_proba(IRIS).sum(1), 1.0)
    assert np.all(np.diff(custom.lower_bounds_) >= -1e-12)
    with pytest.raises(NotImplementedError, match="UnitGaussians has no num_free_parameters"):
        custom.bic(IRIS)
    with pytest.raises(NotImplementedError, match="UnitGaussians cannot sample"):
        custom.sample(3)


def test_exported_at_top_level():
    assert jaxem.GaussianMixture is GaussianMixture
    assert jaxem.MixtureModel is MixtureModel
    from jaxem import sklearn as sklearn_layer

    assert jaxem.ConvergenceWarning is sklearn_layer.ConvergenceWarning


# scikit-learn's estimator checks. Every check passes; none is listed as an expected failure.
@pytest.mark.slow
@pytest.mark.timeout(240)
@parametrize_with_checks(
    [GaussianMixture(max_iter=20), MixtureModel(jaxem.Gaussian(1), max_iter=20)],
    expected_failed_checks=lambda estimator: {},
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
