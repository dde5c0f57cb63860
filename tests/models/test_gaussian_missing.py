"""Gaussian mixtures with missing values: exact marginal densities, conditional moments, the
complete-data fit when nothing is missing, monotone EM, row batches, and recovery under 20% MCAR.
The shared contract (restarts, chunks, constraints, dtypes) is checked in test_contracts.py."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import jaxem
import jaxem.missing
from jaxem.missing import MissingValues, impute

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def two_clusters(seed, n=120, d=4):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d))
    x = rng.normal(size=(n, d)) @ mixing
    x[: n // 2] += 4.0
    return x


def knock_out(x, fraction, seed):
    """A copy of ``x`` with ``fraction`` of its entries NaN, every row keeping one value."""
    rng = np.random.default_rng(seed)
    out = x.copy()
    out[rng.random(x.shape) < fraction] = np.nan
    empty = np.all(np.isnan(out), axis=1)
    out[empty, 0] = x[empty, 0]
    return out


def dense_covariances(gaussian, params, num_features):
    """Covariances as ``[K, D, D]`` whatever the covariance type."""
    cov = np.asarray(gaussian.covariances(params))
    k = gaussian.num_components
    if gaussian.covariance_type == "tied":
        return np.broadcast_to(cov, (k, num_features, num_features))
    if gaussian.covariance_type == "diag":
        return np.stack([np.diag(c) for c in cov])
    if gaussian.covariance_type == "spherical":
        return np.stack([c * np.eye(num_features) for c in cov])
    return cov


def brute_force(weights, means, covs, x):
    """Per row: log density of the observed entries, responsibilities, and per component the
    conditional means and covariances of the whole vector (scipy / numpy, row by row)."""
    k, d = means.shape
    log_density, resp, cond_means, cond_covs = [], [], [], []
    for row in x:
        o = ~np.isnan(row)
        m = ~o
        log_joint = np.array(
            [
                np.log(weights[j])
                + multivariate_normal(means[j][o], covs[j][np.ix_(o, o)]).logpdf(row[o])
                for j in range(k)
            ]
        )
        log_density.append(logsumexp(log_joint))
        resp.append(np.exp(log_joint - logsumexp(log_joint)))
        mu_rows, cov_rows = [], []
        for j in range(k):
            gain = covs[j][np.ix_(m, o)] @ np.linalg.inv(covs[j][np.ix_(o, o)])
            full_mean = row.copy()
            full_mean[m] = means[j][m] + gain @ (row[o] - means[j][o])
            full_cov = np.zeros((d, d))
            full_cov[np.ix_(m, m)] = covs[j][np.ix_(m, m)] - gain @ covs[j][np.ix_(o, m)]
            mu_rows.append(full_mean)
            cov_rows.append(full_cov)
        cond_means.append(mu_rows)
        cond_covs.append(cov_rows)
    return (
        np.array(log_density),
        np.array(resp),
        np.array(cond_means),
        np.array(cond_covs),
    )


def assert_trees_close(a, b, atol):
    for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(leaf_a), np.asarray(leaf_b), rtol=0, atol=atol)


# ---- no missing value: the complete-data fit -----------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_without_nan_the_fit_is_the_complete_data_fit(covariance_type):
    x = two_clusters(0)
    gaussian = jaxem.Gaussian(2, covariance_type)
    plain = jaxem.fit(jaxem.em(jaxem.Mixture(gaussian)), jax.random.key(3), x, tol=0, max_iter=40)
    model = jaxem.Mixture(MissingValues(gaussian))
    marginal = jaxem.fit(jaxem.em(model), jax.random.key(3), x, tol=0, max_iter=40)
    assert int(marginal.num_iters) == int(plain.num_iters) == 40
    assert_trees_close(marginal.params, plain.params, atol=1e-12)
    # Totals over the rows: 1e-12 per row.
    np.testing.assert_allclose(marginal.history, plain.history, rtol=0, atol=1e-12 * len(x))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_estimator_without_nan_equals_the_default_estimator():
    x = two_clusters(1)
    options = dict(n_components=2, n_init=2, random_state=0, tol=1e-8)
    plain = jaxem.GaussianMixture(**options).fit(x)
    marginal = jaxem.GaussianMixture(missing="marginalize", **options).fit(x)
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(marginal, name), getattr(plain, name), atol=1e-12)
    np.testing.assert_allclose(marginal.score_samples(x), plain.score_samples(x), atol=1e-12)


# ---- the E-step against brute force --------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_score_samples_equals_the_observed_coordinates_density(covariance_type):
    x = knock_out(two_clusters(2), 0.3, seed=2)
    x_before = x.copy()
    gm = jaxem.GaussianMixture(
        2, covariance_type=covariance_type, missing="marginalize", random_state=0, max_iter=20
    ).fit(x)
    np.testing.assert_array_equal(x, x_before)  # the user's array is left alone
    covs = dense_covariances(gm.model_.components, gm.params_.components, x.shape[1])
    log_density, resp, _, _ = brute_force(gm.weights_, gm.means_, covs, x)
    np.testing.assert_allclose(gm.score_samples(x), log_density, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gm.predict_proba(x), resp, atol=1e-10)
    np.testing.assert_array_equal(gm.predict(x), resp.argmax(axis=1))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_statistics_use_conditional_means_and_covariances(covariance_type):
    """One chunk's statistics equal sums of r (E[x | x_o] - c) and r [(E[x | x_o] - c)(...)^T +
    Cov[x | x_o]], the conditional moments computed row by row with numpy."""
    x = knock_out(two_clusters(3, n=40), 0.35, seed=3)
    gaussian = jaxem.Gaussian(3, covariance_type)
    family = MissingValues(gaussian)
    params = jax.jit(family.init)(jax.random.key(0), jnp.asarray(x), None)
    resp = np.random.default_rng(0).dirichlet(np.ones(3), size=x.shape[0])
    stats = jax.jit(family.chunk_stats)(params, jnp.asarray(x), jnp.asarray(resp))

    covs = dense_covariances(gaussian, params, x.shape[1])
    means = np.asarray(params.means)
    _, _, cond_means, cond_covs = brute_force(np.full(3, 1 / 3), means, covs, x)
    z = cond_means - means[None]
    first = np.einsum("ck,ckd->kd", resp, z)
    second = np.einsum("ck,ckd,cke->kde", resp, z, z) + np.einsum("ck,ckde->kde", resp, cond_covs)
    if covariance_type in ("diag", "spherical"):
        second = np.diagonal(second, axis1=-2, axis2=-1)
    np.testing.assert_allclose(stats.counts, resp.sum(axis=0), atol=1e-12)
    np.testing.assert_allclose(stats.first, first, atol=1e-10)
    np.testing.assert_allclose(stats.second, second, atol=1e-10)


@pytest.mark.timeout(120)
def test_impute_fills_responsibility_weighted_conditional_means():
    x = knock_out(two_clusters(4), 0.25, seed=4)
    gm = jaxem.GaussianMixture(2, missing="marginalize", random_state=0, max_iter=20).fit(x)
    covs = dense_covariances(gm.model_.components, gm.params_.components, x.shape[1])
    _, resp, cond_means, _ = brute_force(gm.weights_, gm.means_, covs, x)
    expected = np.einsum("ck,ckd->cd", resp, cond_means)
    filled = gm.impute(x)
    assert not np.isnan(filled).any()
    np.testing.assert_array_equal(filled[~np.isnan(x)], x[~np.isnan(x)])
    np.testing.assert_allclose(filled, expected, atol=1e-10)
    # The functional form, in small batches, gives the same.
    np.testing.assert_allclose(impute(gm.model_, gm.params_, x, batch_size=7), filled, atol=1e-12)


# ---- EM with NaN: monotone, chunks and row batches ----------------------------------------------


@pytest.mark.timeout(180)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_likelihood_never_decreases_with_nan(covariance_type):
    x = knock_out(two_clusters(5, n=150, d=3), 0.3, seed=5)
    algo = jaxem.em(jaxem.Mixture(MissingValues(jaxem.Gaussian(3, covariance_type, 1e-6))))
    _, lanes = jaxem.fit_restarts(algo, jax.random.key(0), x, num_restarts=4, tol=0, max_iter=40)
    history = np.asarray(lanes.history)
    assert np.all(np.isfinite(history))
    steps = np.diff(history, axis=1)
    assert steps.min() >= -1e-12 * np.abs(history).max()
    assert np.all(steps.max(axis=1) > 0)  # and EM actually moved


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_chunked_and_row_batched_equals_whole_with_nan(monkeypatch):
    """Chunks of 17 rows, and inside them (full covariance) batches of 3 rows, give the fit on the
    whole data at once."""
    x = knock_out(two_clusters(7), 0.2, seed=7)
    model = jaxem.Mixture(MissingValues(jaxem.Gaussian(2, "full")))
    whole = jaxem.fit(jaxem.em(model), jax.random.key(1), x, tol=0, max_iter=15)
    monkeypatch.setattr(jaxem.missing, "ROW_BATCH_ELEMENTS", 3 * 2 * 4 * 4)
    batches = []  # the row batch sizes the statistics are reduced in (recorded while tracing)
    reduce_chunks = jaxem.missing.reduce_chunks
    monkeypatch.setattr(
        jaxem.missing,
        "reduce_chunks",
        lambda fn, x, w, size: batches.append(size) or reduce_chunks(fn, x, w, size),
    )
    chunked = jaxem.fit(jaxem.em(model, chunk_size=17), jax.random.key(1), x, tol=0, max_iter=15)
    assert 3 in batches
    assert_trees_close(chunked.params, whole.params, atol=1e-10)


# ---- recovery: better than mean imputation -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_twenty_percent_missing_beats_mean_imputation():
    rng = np.random.default_rng(8)
    d = 4
    true_means = np.array([[0.0, 0.0, 0.0, 0.0], [5.0, 5.0, -2.0, 3.0]])
    a = rng.normal(size=(d, d))
    true_covs = np.stack([a @ a.T / d + np.eye(d), np.diag([2.0, 0.5, 1.0, 1.5])])
    n = 1500
    labels = (rng.random(n) < 0.4).astype(int)
    x = np.stack([rng.multivariate_normal(true_means[c], true_covs[c]) for c in labels])
    holed = knock_out(x, 0.2, seed=9)
    mean_filled = np.where(np.isnan(holed), np.nanmean(holed, axis=0), holed)

    def errors(gm):
        order = np.argsort(gm.means_[:, 0])
        mean_error = np.linalg.norm(gm.means_[order] - true_means)
        cov_error = np.linalg.norm(gm.covariances_[order] - true_covs)
        return mean_error, cov_error

    options = dict(n_components=2, n_init=3, random_state=0, tol=1e-6, max_iter=300)
    marginal = jaxem.GaussianMixture(missing="marginalize", **options).fit(holed)
    imputed = jaxem.GaussianMixture(**options).fit(mean_filled)
    complete = jaxem.GaussianMixture(**options).fit(x)
    marginal_errors, imputed_errors, complete_errors = (
        errors(marginal),
        errors(imputed),
        errors(complete),
    )
    assert marginal_errors[0] < imputed_errors[0]
    assert marginal_errors[1] < 0.5 * imputed_errors[1]
    # Close to what the complete data would give.
    assert marginal_errors[0] < complete_errors[0] + 0.2
    assert marginal_errors[1] < complete_errors[1] + 0.5


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_rows_with_every_value_missing_are_rejected():
    x = knock_out(two_clusters(9, n=30), 0.2, seed=9)
    x[3] = np.nan
    message = (
        "X has 1 row(s) with every value missing (the first is row 3): such a row carries no "
        "information; drop it."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        jaxem.GaussianMixture(2, missing="marginalize").fit(x)
    model = jaxem.Mixture(MissingValues(jaxem.Gaussian(2)))
    with pytest.raises(ValueError, match=f"^{re.escape(message.replace('X', 'x', 1))}$"):
        jaxem.fit(jaxem.em(model), jax.random.key(0), x)
    fitted = jaxem.GaussianMixture(2, missing="marginalize").fit(np.delete(x, 3, axis=0))
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        fitted.score_samples(x)


@pytest.mark.timeout(60)
def test_nan_is_still_an_error_by_default():
    x = knock_out(two_clusters(10, n=30), 0.2, seed=10)
    with pytest.raises(ValueError, match=r"^X contains NaN or infinity: remove or impute"):
        jaxem.GaussianMixture(2).fit(x)
    with pytest.raises(ValueError, match=r"^x contains NaN or infinity: remove or impute"):
        jaxem.fit(jaxem.em(jaxem.Mixture(jaxem.Gaussian(2))), jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"^Unknown missing 'drop': use one of 'error', "):
        jaxem.GaussianMixture(2, missing="drop").fit(x)


@pytest.mark.timeout(60)
def test_infinity_and_empty_columns_are_rejected_with_missing_values():
    x = knock_out(two_clusters(11, n=30), 0.2, seed=11)
    with_inf = x.copy()
    with_inf[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"^X contains infinity: only NaN marks a missing value"):
        jaxem.GaussianMixture(2, missing="marginalize").fit(with_inf)
    no_column = x.copy()
    no_column[:, 2] = np.nan
    model = jaxem.Mixture(MissingValues(jaxem.Gaussian(2)))
    with pytest.raises(ValueError, match=r"^x has 1 column\(s\) with every value missing"):
        jaxem.fit(jaxem.em(model), jax.random.key(0), no_column)
