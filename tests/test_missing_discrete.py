"""Missing values in the per-feature families (Bernoulli, Poisson, exponential, categorical): a
missing feature adds nothing to its row's likelihood nor to that feature's statistics."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

import jaxem
from jaxem.missing import MissingValues
from jaxem.models import BernoulliParams, CategoricalParams, ExponentialParams, PoissonParams

LEVELS = (3, 2, 4, 3, 2)


def categorical_probs():
    rows = [
        [[0.7, 0.2, 0.1], [0.9, 0.1], [0.1, 0.1, 0.1, 0.7], [0.2, 0.2, 0.6], [0.8, 0.2]],
        [[0.1, 0.2, 0.7], [0.2, 0.8], [0.6, 0.2, 0.1, 0.1], [0.7, 0.2, 0.1], [0.3, 0.7]],
    ]
    return np.array([[r + [0.0] * (4 - len(r)) for r in comp] for comp in rows])


# family, true parameters (2 components, 5 features), largest tolerated recovery error
FAMILIES = {
    "bernoulli": (
        jaxem.Bernoulli(2),
        BernoulliParams(np.array([[0.85, 0.1, 0.8, 0.2, 0.7], [0.15, 0.9, 0.2, 0.75, 0.3]])),
        0.06,
    ),
    "poisson": (
        jaxem.Poisson(2),
        PoissonParams(np.array([[1.0, 6.0, 2.0, 8.0, 0.5], [7.0, 1.0, 5.0, 1.0, 3.0]])),
        0.5,
    ),
    "exponential": (
        jaxem.Exponential(2),
        ExponentialParams(np.array([[0.2, 3.0, 1.0, 4.0, 0.5], [4.0, 0.3, 2.0, 0.5, 3.0]])),
        0.6,
    ),
    "categorical": (jaxem.Categorical(2, LEVELS), CategoricalParams(categorical_probs()), 0.06),
}


def simulate(name, n, seed, fraction=0.2):
    """Rows from the true mixture (weights 0.4 / 0.6), their labels, and a copy with ``fraction``
    of the entries NaN (every row keeping one value)."""
    family, truth, _ = FAMILIES[name]
    key_labels, key_draw = jax.random.split(jax.random.key(seed))
    labels = (jax.random.uniform(key_labels, (n,)) < 0.6).astype(int)
    x = np.asarray(family.sample(key_draw, truth, labels), dtype=float)
    rng = np.random.default_rng(seed)
    holed = np.where(rng.random(x.shape) < fraction, np.nan, x)
    empty = np.all(np.isnan(holed), axis=1)
    holed[empty, 0] = x[empty, 0]
    return x, holed, np.asarray(labels)


def restricted(family, params, columns):
    """The family and parameters of the given feature columns only."""
    if isinstance(family, jaxem.Categorical):
        levels = tuple(np.asarray(family.num_levels)[columns])
        sub = jaxem.Categorical(family.num_components, levels)
        return sub, CategoricalParams(params.probs[:, columns, : sub.max_levels])
    return family, jax.tree.map(lambda a: a[:, columns], params)


def first_parameter(params):
    return np.asarray(jax.tree.leaves(params)[0])


# ---- the E-step and the M-step against the family on the observed features only ------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", FAMILIES)
def test_log_density_is_the_family_on_the_observed_features(name):
    family, truth, _ = FAMILIES[name]
    _, x, _ = simulate(name, 30, seed=1, fraction=0.35)
    log_prob = np.asarray(MissingValues(family).log_prob_chunk(truth, jnp.asarray(x)))
    for row, got in zip(x, log_prob, strict=True):
        columns = np.flatnonzero(~np.isnan(row))
        sub, sub_params = restricted(family, truth, columns)
        expected = np.asarray(sub.log_prob_chunk(sub_params, jnp.asarray(row[None, columns])))[0]
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", FAMILIES)
def test_missing_feature_adds_nothing_to_its_statistics(name):
    """The M-step of each feature is the family's M-step on the rows where it is observed."""
    family, truth, _ = FAMILIES[name]
    _, x, _ = simulate(name, 40, seed=2, fraction=0.35)
    resp = np.random.default_rng(2).dirichlet(np.ones(2), size=x.shape[0])
    wrapper = MissingValues(family)
    stats = wrapper.chunk_stats(truth, jnp.asarray(x), jnp.asarray(resp))
    new = first_parameter(wrapper.m_step(truth, stats))
    for d in range(x.shape[1]):
        seen = ~np.isnan(x[:, d])
        sub, sub_params = restricted(family, truth, [d])
        sub_stats = sub.chunk_stats(
            sub_params, jnp.asarray(x[seen][:, [d]]), jnp.asarray(resp[seen])
        )
        expected = first_parameter(sub.m_step(sub_params, sub_stats))[:, 0]
        got = new[:, d, : expected.shape[-1]] if new.ndim == 3 else new[:, d]
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.timeout(60)
def test_bernoulli_statistics_by_hand():
    """Beta(2, 2): p_kd = (sum over rows observing d of r x + 1) / (sum of r + 2)."""
    family, truth, _ = FAMILIES["bernoulli"]
    _, x, _ = simulate("bernoulli", 50, seed=3, fraction=0.3)
    resp = np.random.default_rng(3).dirichlet(np.ones(2), size=x.shape[0])
    wrapper = MissingValues(family)
    new = wrapper.m_step(truth, wrapper.chunk_stats(truth, jnp.asarray(x), jnp.asarray(resp)))
    seen = ~np.isnan(x)
    expected = (resp.T @ np.where(seen, x, 0) + 1) / (resp.T @ seen + 2)
    np.testing.assert_allclose(new.probs, expected, rtol=1e-12)


# ---- fits ----------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", FAMILIES)
def test_without_nan_the_fit_is_the_plain_fit(name):
    family, _, _ = FAMILIES[name]
    x, _, _ = simulate(name, 200, seed=4)
    plain = jaxem.fit(jaxem.em(jaxem.Mixture(family)), jax.random.key(0), x, tol=0, max_iter=25)
    model = jaxem.Mixture(MissingValues(family))
    marginal = jaxem.fit(jaxem.em(model), jax.random.key(0), x, tol=0, max_iter=25)
    for a, b in zip(jax.tree.leaves(marginal.params), jax.tree.leaves(plain.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", FAMILIES)
def test_recovery_and_monotone_em_with_twenty_percent_missing(name):
    family, truth, tolerance = FAMILIES[name]
    _, x, _ = simulate(name, 2000, seed=5)
    algo = jaxem.em(jaxem.Mixture(MissingValues(family)))
    best, lanes = jaxem.fit_restarts(algo, jax.random.key(1), x, num_restarts=3, max_iter=200)
    history = np.asarray(lanes.history)
    steps = np.diff(history, axis=1)
    assert np.nanmin(steps) >= -1e-12 * np.nanmax(np.abs(history))
    fitted = first_parameter(best.params.components)
    true = np.asarray(jax.tree.leaves(truth)[0])
    order = np.argsort(fitted.reshape(2, -1)[:, 0])
    true_order = np.argsort(true.reshape(2, -1)[:, 0])
    assert np.max(np.abs(fitted[order] - true[true_order])) < tolerance
    np.testing.assert_allclose(np.sort(best.params.weights), [0.4, 0.6], atol=0.05)


@pytest.mark.timeout(120)
def test_restart_lane_equals_single_fit_with_nan():
    _, x, _ = simulate("poisson", 150, seed=6)
    algo = jaxem.em(jaxem.Mixture(MissingValues(jaxem.Poisson(2))))
    keys = jax.random.split(jax.random.key(2), 3)
    _, lanes = jaxem.fit_restarts(algo, keys, x, tol=1e-8, max_iter=40)
    for i in range(3):
        single = jaxem.fit(algo, keys[i], x, tol=1e-8, max_iter=40)
        assert int(single.num_iters) == int(lanes.num_iters[i])
        for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(lanes.params), strict=True):
            np.testing.assert_allclose(a, b[i], rtol=0, atol=1e-12)


# ---- estimators ----------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_estimator_predicts_and_imputes_with_nan():
    _, x, _ = simulate("categorical", 300, seed=7)
    est = jaxem.MixtureModel(
        jaxem.Categorical(2, LEVELS), missing="marginalize", random_state=0, n_init=2
    ).fit(x)
    probs = np.asarray(est.params_.components.probs)
    resp = est.predict_proba(x)
    log_joint = np.log(est.weights_) + np.array(
        [
            [
                sum(np.log(probs[k, d, int(v)]) for d, v in enumerate(row) if not np.isnan(v))
                for k in (0, 1)
            ]
            for row in x
        ]
    )
    np.testing.assert_allclose(est.score_samples(x), logsumexp(log_joint, axis=1), rtol=1e-10)
    np.testing.assert_allclose(resp, np.exp(log_joint - logsumexp(log_joint, axis=1)[:, None]))
    filled = est.impute(x)
    predictive = np.einsum("nk,kdl->ndl", resp, probs)
    expected = np.where(np.isnan(x), predictive.argmax(axis=-1), x)
    np.testing.assert_array_equal(filled, expected)

    _, b, _ = simulate("bernoulli", 300, seed=8)
    bern = jaxem.MixtureModel(jaxem.Bernoulli(2), missing="marginalize", random_state=0).fit(b)
    expected = np.where(np.isnan(b), bern.predict_proba(b) @ bern.params_.components.probs, b)
    np.testing.assert_allclose(bern.impute(b), expected, rtol=1e-12)


@pytest.mark.timeout(60)
def test_errors():
    _, x, _ = simulate("bernoulli", 40, seed=9)
    x[5] = np.nan
    message = (
        "X has 1 row(s) with every value missing (the first is row 5): such a row carries no "
        "information; drop it."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        jaxem.MixtureModel(jaxem.Bernoulli(2), missing="marginalize").fit(x)
    with pytest.raises(ValueError, match=r"^X contains NaN or infinity"):
        jaxem.MixtureModel(jaxem.Bernoulli(2)).fit(x)
    # The family's own check still runs on the observed entries.
    x[5] = 0.0
    x[0, 0] = 3.0
    with pytest.raises(ValueError, match=r"^Bernoulli components need x in \[0, 1\]"):
        jaxem.MixtureModel(jaxem.Bernoulli(2), missing="marginalize").fit(x)
    refused = (
        "Missing values cannot be marginalised for Multinomial components: supported are "
        "Gaussian, Categorical, Bernoulli, Poisson and Exponential, and closed-form families "
        "whose density is a product over the features (set factorised_features = True on them). "
        "Impute or drop the missing entries instead."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(refused)}$"):
        MissingValues(jaxem.Multinomial(2))
    with pytest.raises(ValueError, match=r"^The components already handle missing values"):
        MissingValues(MissingValues(jaxem.Poisson(2)))
