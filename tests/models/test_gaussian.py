"""The Gaussian family: agreement with scikit-learn, monotone EM, float32 accuracy, degeneracy."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.datasets import load_iris
from sklearn.mixture import GaussianMixture

import jaxem
from jaxem.core.program_cache import clear_memory
from jaxem.models import gaussian

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
OLD_FAITHFUL = Path(jaxem.__file__).parent / "datasets" / "old_faithful.csv"


def old_faithful() -> np.ndarray:
    return np.loadtxt(OLD_FAITHFUL, delimiter=",", skiprows=1)


def blobs(seed: int, n: int, means: np.ndarray, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(len(means), size=n)
    return means[labels] + scale * rng.normal(size=(n, means.shape[1]))


def identity_precisions(covariance_type: str, k: int, d: int, scale: float) -> np.ndarray:
    """Precisions of covariance ``scale * I`` in scikit-learn's ``precisions_init`` shapes."""
    p = 1.0 / scale
    return {
        "full": np.stack([p * np.eye(d)] * k),
        "tied": p * np.eye(d),
        "diag": np.full((k, d), p),
        "spherical": np.full(k, p),
    }[covariance_type]


# ---- agreement with scikit-learn -----------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("dataset", ["old_faithful", "iris"])
def test_matches_sklearn_from_same_start(covariance_type, dataset):
    x = old_faithful() if dataset == "old_faithful" else load_iris().data
    k, d = 3, x.shape[1]
    rng = np.random.default_rng(0)
    weights0 = np.array([0.5, 0.3, 0.2])
    means0 = x[rng.choice(len(x), k, replace=False)]
    precisions0 = identity_precisions(covariance_type, k, d, np.var(x, axis=0).mean())
    reference = GaussianMixture(
        k,
        covariance_type=covariance_type,
        weights_init=weights0,
        means_init=means0,
        precisions_init=precisions0,
        max_iter=1000,
        tol=1e-6,
    ).fit(x)
    assert reference.converged_

    family = jaxem.Gaussian(k, covariance_type=covariance_type)
    start = jaxem.MixtureParams(
        jnp.asarray(weights0), family.params_from_precisions(jnp.asarray(means0), precisions0)
    )
    result = jaxem.fit(jaxem.em(jaxem.Mixture(family)), start, x, max_iter=1000, tol=1e-6)

    assert int(result.status) == jaxem.Status.CONVERGED
    assert int(result.num_iters) == reference.n_iter_
    # jaxem records totals, scikit-learn means per row.
    history = np.asarray(result.history)[: int(result.num_iters)] / len(x)
    np.testing.assert_allclose(history, reference.lower_bounds_, rtol=1e-10, atol=0)
    fitted = result.params.components
    np.testing.assert_allclose(result.params.weights, reference.weights_, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(fitted.means, reference.means_, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(
        fitted.precision_cholesky, reference.precisions_cholesky_, rtol=1e-8, atol=1e-10
    )
    np.testing.assert_allclose(
        family.covariances(fitted), reference.covariances_, rtol=1e-8, atol=1e-10
    )
    np.testing.assert_allclose(
        family.precisions(fitted), reference.precisions_, rtol=1e-8, atol=1e-10
    )
    # The final objective is the log-likelihood at the returned parameters, as score() computes it
    # (per row).
    np.testing.assert_allclose(result.log_likelihood / len(x), reference.score(x), rtol=1e-10)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_prob_matches_scipy(covariance_type):
    rng = np.random.default_rng(1)
    k, d = 3, 4
    means = rng.normal(size=(k, d))
    a = rng.normal(size=(k, d, d))
    full = a @ np.swapaxes(a, 1, 2) + d * np.eye(d)
    covariances = {
        "full": full,
        "tied": full[0],
        "diag": np.abs(rng.normal(size=(k, d))) + 0.5,
        "spherical": np.abs(rng.normal(size=k)) + 0.5,
    }[covariance_type]
    dense = {
        "full": full,
        "tied": np.stack([full[0]] * k),
        "diag": np.stack([np.diag(c) for c in covariances]) if covariance_type == "diag" else None,
        "spherical": np.stack([c * np.eye(d) for c in np.atleast_1d(covariances)])
        if covariance_type == "spherical"
        else None,
    }[covariance_type]
    family = jaxem.Gaussian(k, covariance_type=covariance_type)
    params = family.params_from_covariances(jnp.asarray(means), jnp.asarray(covariances))
    x = rng.normal(size=(20, d)) * 2
    expected = np.stack(
        [multivariate_normal(means[j], dense[j]).logpdf(x) for j in range(k)], axis=-1
    )
    np.testing.assert_allclose(family.log_prob_chunk(params, jnp.asarray(x)), expected, rtol=1e-12)
    np.testing.assert_allclose(family.log_prob(params, jnp.asarray(x[3])), expected[3], rtol=1e-12)
    np.testing.assert_allclose(family.covariances(params), covariances, rtol=1e-12)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_precision_conversions_round_trip(covariance_type):
    rng = np.random.default_rng(2)
    k, d = 2, 3
    a = rng.normal(size=(k, d, d))
    full = a @ np.swapaxes(a, 1, 2) + np.eye(d)
    cov = {
        "full": full,
        "tied": full[0],
        "diag": np.abs(a[:, 0]) + 0.1,
        "spherical": a[:, 0, 0] ** 2,
    }
    family = jaxem.Gaussian(k, covariance_type=covariance_type)
    params = family.params_from_covariances(jnp.zeros((k, d)), jnp.asarray(cov[covariance_type]))
    again = family.params_from_precisions(params.means, family.precisions(params))
    np.testing.assert_allclose(again.precision_cholesky, params.precision_cholesky, rtol=1e-10)
    if covariance_type in ("full", "tied"):
        # scikit-learn's convention: an upper-triangular factor with precision = U U^T.
        u = np.asarray(params.precision_cholesky)
        np.testing.assert_array_equal(np.tril(u, -1), 0)


# ---- monotone EM ---------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_likelihood_never_decreases(covariance_type, dtype):
    """Sixteen random-row starts on each of two overlapping data sets, 60 iterations each.

    float64 allows 1e-12 relative (rounding of a sum of 400 terms). float32 allows 2e-6 relative,
    about 16 float32 epsilons: near a fixed point the true increase is far below the resolution of
    a float32 mean log-likelihood, whose rounding then decides the sign of the difference.

    In float32 a lane that ends with a collapsed component (``degenerate``: fewer points than it
    needs, its covariance at the ``reg_covar`` floor, condition number ~1e6) is left out: its
    densities carry relative errors of eps x 1e6, so the sign of a step is rounding, not EM. Such
    lanes are what ``degenerate_`` reports to the user; at most 2 of the 16 may be left out.
    """
    slack = {np.float32: 2e-6, np.float64: 1e-12}[dtype]
    centres = np.array([[0.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [3.0, 3.0, 3.0]])
    algo = jaxem.em(
        jaxem.Mixture(jaxem.Gaussian(4, covariance_type=covariance_type, init_method="random_rows"))
    )
    for data_seed in (0, 1):
        x = blobs(data_seed, 400, centres).astype(dtype)
        _, lanes = jaxem.fit_restarts(
            algo, jax.random.key(data_seed), x, num_restarts=16, max_iter=60, tol=0.0
        )
        assert lanes.history.dtype == dtype
        history = np.asarray(lanes.history, np.float64)
        assert np.all(np.asarray(lanes.status) == jaxem.Status.MAX_ITER)
        assert np.all(np.isfinite(history))
        checked = np.ones(16, bool)
        if dtype == np.float32:
            degenerate = jax.vmap(
                lambda p: algo.model.components.degenerate(p.components, p.weights * 400)
            )
            checked = ~np.any(np.asarray(degenerate(lanes.params)), axis=-1)
            assert checked.sum() >= 14
        steps = np.diff(history[checked], axis=1)
        allowed = slack * np.abs(history[checked, 1:])
        assert np.all(steps >= -allowed), steps.min()
        # EM actually moved: every lane gained likelihood overall.
        assert np.all(history[:, -1] > history[:, 0])


# ---- float32 accuracy ----------------------------------------------------------------------------


def _fit_pair(x64: np.ndarray, offset: float, start_means: np.ndarray, iters: int):
    """float64 and float32 fits of the same float32-rounded data from the same start."""
    x32 = (x64 + offset).astype(np.float32)
    k, d = start_means.shape
    family = jaxem.Gaussian(k)
    algo = jaxem.em(jaxem.Mixture(family))
    cov0 = jnp.stack([jnp.eye(d)] * k)
    start64 = jaxem.MixtureParams(
        jnp.full(k, 1.0 / k), family.params_from_covariances(jnp.asarray(start_means), cov0)
    )
    start32 = jax.tree.map(lambda a: a.astype(jnp.float32), start64)
    start32 = start32._replace(
        components=start32.components._replace(means=jnp.asarray(start_means + offset, jnp.float32))
    )
    # The reference sees exactly the float32 data, moved back to the origin in float64.
    r64 = jaxem.fit(algo, start64, x32.astype(np.float64) - offset, max_iter=iters, tol=0.0)
    r32 = jaxem.fit(algo, start32, x32, max_iter=iters, tol=0.0)
    assert r32.params.components.means.dtype == jnp.float32
    assert int(r32.status) == int(r64.status) == jaxem.Status.MAX_ITER
    return family, r64, r32


@pytest.mark.timeout(120)
def test_float32_matches_float64_on_1e5_points():
    """30 iterations on 10^5 overlapping points: float32 stays within 1e-4 of float64.

    Measured differences are about 1e-6 (means, covariances) and 1e-7 (weights); the tolerance
    leaves two orders of magnitude for other machines and summation orders.
    """
    centres = np.array([[0.0, 0.0], [3.0, 1.0], [1.0, 4.0]])
    x = blobs(3, 100_000, centres)
    family, r64, r32 = _fit_pair(x, 0.0, centres + 0.5, iters=30)
    np.testing.assert_allclose(r32.params.weights, r64.params.weights, atol=1e-4)
    np.testing.assert_allclose(r32.params.components.means, r64.params.components.means, atol=1e-4)
    np.testing.assert_allclose(
        family.covariances(r32.params.components),
        family.covariances(r64.params.components),
        atol=1e-4,
    )
    np.testing.assert_allclose(r32.history, r64.history, rtol=1e-5)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("offset", [1e4, 1e6])
def test_float32_far_from_origin(offset):
    """Unit-variance clusters at 1e4 or 1e6 in float32 fit as in float64.

    Moments about the origin would lose everything here (x^2 ~ 1e12 against a variance of 1). The
    means can only be as exact as float32 spacing at the offset allows (0.0625 at 1e6), so they are
    compared to one spacing; covariances, about the means, to 1e-4.
    """
    centres = np.array([[0.0, 0.0], [30.0, 0.0], [0.0, 30.0]])
    x = blobs(4, 20_000, centres)
    family, r64, r32 = _fit_pair(x, offset, centres + 0.5, iters=10)
    spacing = float(np.spacing(np.float32(offset)))
    means32 = np.asarray(r32.params.components.means, np.float64) - offset
    np.testing.assert_allclose(means32, r64.params.components.means, atol=spacing)
    np.testing.assert_allclose(
        family.covariances(r32.params.components),
        family.covariances(r64.params.components),
        rtol=1e-4,
    )
    np.testing.assert_allclose(r32.params.weights, r64.params.weights, atol=1e-6)
    np.testing.assert_allclose(
        family.covariances(r64.params.components), np.broadcast_to(np.eye(2), (3, 2, 2)), atol=0.05
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_float32_diagonal_expansion_far_from_origin(covariance_type):
    """Diagonal densities and statistics expand the square about each chunk's mean, with an error
    of float32 eps times (distance to that mean / component width)^2. Clusters 20 widths apart at
    1e4 in float32 still fit as in float64: means to two float32 spacings at the offset, variances
    to 1e-3 relative (measured 1.4e-4 diag, 4e-5 spherical), weights to 1e-5 (measured 2e-8).
    """
    offset = 1e4
    centres = np.array([[0.0, 0.0, 0.0], [20.0, 0.0, 5.0], [0.0, 20.0, -5.0]])
    x32 = (blobs(6, 20_000, centres) + offset).astype(np.float32)
    family = jaxem.Gaussian(3, covariance_type=covariance_type)
    algo = jaxem.em(jaxem.Mixture(family))
    scales = {"diag": np.ones((3, 3)), "spherical": np.ones(3)}[covariance_type]
    start64 = jaxem.MixtureParams(
        jnp.full(3, 1.0 / 3), jaxem.GaussianParams(jnp.asarray(centres + 0.5), jnp.asarray(scales))
    )
    start32 = jaxem.MixtureParams(
        jnp.full(3, 1.0 / 3, jnp.float32),
        jaxem.GaussianParams(
            jnp.asarray(centres + 0.5 + offset, jnp.float32), jnp.asarray(scales, jnp.float32)
        ),
    )
    r64 = jaxem.fit(algo, start64, x32.astype(np.float64) - offset, max_iter=10, tol=0.0)
    r32 = jaxem.fit(algo, start32, x32, max_iter=10, tol=0.0)
    assert r32.params.components.means.dtype == jnp.float32
    spacing = float(np.spacing(np.float32(offset)))
    means32 = np.asarray(r32.params.components.means, np.float64) - offset
    np.testing.assert_allclose(means32, r64.params.components.means, atol=2 * spacing)
    np.testing.assert_allclose(
        family.covariances(r32.params.components),
        family.covariances(r64.params.components),
        rtol=1e-3,
    )
    np.testing.assert_allclose(r32.params.weights, r64.params.weights, atol=1e-5)
    np.testing.assert_allclose(family.covariances(r64.params.components), 1.0, atol=0.05)


# ---- features computed once per fit --------------------------------------------------------------


@pytest.mark.timeout(60)
def test_prepare_rows_only_where_features_pay_and_fit(monkeypatch):
    x64 = jnp.ones((1000, 4))
    prepared = jaxem.Gaussian(3).prepare_rows(x64)
    assert isinstance(prepared, gaussian.ExpandedRows)
    assert prepared.features.shape == (1000, 4 * 5 // 2 + 4)
    np.testing.assert_array_equal(prepared.shift, 1.0)
    for family, x in [
        (jaxem.Gaussian(3), x64.astype(jnp.float32)),  # float32 keeps the difference form
        (jaxem.Gaussian(3, "tied"), x64),
        (jaxem.Gaussian(3, "diag"), x64),
    ]:
        assert family.prepare_rows(x) is x
    # Wrappers that read the data their own way keep it as it is (they forward other attributes).
    for wrapper in (jaxem.MissingValues, jaxem.Labelled):
        assert jaxem.Mixture(wrapper(jaxem.Gaussian(3))).prepare_rows(x64) is x64
    monkeypatch.setattr(gaussian, "PREPARED_ELEMENTS", 1000 * 14 - 1)
    assert jaxem.Gaussian(3).prepare_rows(x64) is x64


@pytest.mark.timeout(180)
def test_fit_with_features_computed_once_equals_fit_building_them_per_chunk(monkeypatch):
    """Float64 full covariance: a fit within the budget builds the quadratic features once, about
    the data's mean (``prepare_rows`` returns them for all rows, before the loop, and every chunk
    the densities and statistics read is a slice of them); with the budget at 0 the chunks are the
    raw rows (the features are built in every chunk, about the chunk's mean). Recorded while
    tracing. Same fit, whole or chunked, with and without weights."""
    x = blobs(6, 600, np.array([[0.0, 0.0, 0.0], [4.0, 1.0, -2.0], [-3.0, 5.0, 1.0]]))
    weights = np.random.default_rng(6).uniform(0.0, 2.0, 600)
    family = jaxem.Gaussian(3)
    start = jaxem.MixtureParams(
        jnp.full(3, 1 / 3),
        family.params_from_covariances(
            jnp.asarray(x[:3] + 0.5), jnp.asarray(identity_precisions("full", 3, 3, 2.0))
        ),
    )
    prepared, chunks = [], []  # (expanded?, shape of the first leaf) of what the methods saw

    def seen(rows):
        return isinstance(rows, gaussian.ExpandedRows), jax.tree.leaves(rows)[0].shape

    def recording(name, record):
        method = getattr(jaxem.Gaussian, name)

        def wrapper(self, *args):
            out = method(self, *args)
            record(out if name == "prepare_rows" else args[1])
            return out

        monkeypatch.setattr(jaxem.Gaussian, name, wrapper)

    recording("prepare_rows", lambda rows: prepared.append(seen(rows)))
    for name in ("log_prob_chunk", "chunk_stats"):
        recording(name, lambda rows: chunks.append(seen(rows)))
    width = 3 * 4 // 2 + 3
    fits = {}
    for budget in (gaussian.PREPARED_ELEMENTS, 0):
        monkeypatch.setattr(gaussian, "PREPARED_ELEMENTS", budget)
        jax.clear_caches()  # the budget is read while tracing
        clear_memory()
        for chunk_size in (None, 64):
            for w in (None, weights):
                prepared.clear()
                chunks.clear()
                algo = jaxem.em(jaxem.Mixture(family), chunk_size=chunk_size)
                fit = jaxem.fit(algo, start, x, w, max_iter=15, tol=0.0)
                fits[budget, chunk_size, w is None] = fit
                sizes = {600} if chunk_size is None else {64, 24}
                if budget:  # once, for all rows, before the loop; the chunks slice them
                    assert prepared == [(True, (600, width))]
                    assert {(True, (size, width)) for size in sizes} == set(chunks)
                else:  # built in the E-step and the statistics of each chunk shape
                    assert set(prepared) == {(False, (600, 3))}
                    assert {(False, (size, 3)) for size in sizes} == set(chunks)
    for (budget, chunk_size, plain), fit in fits.items():
        if budget:
            other = fits[0, chunk_size, plain]
            np.testing.assert_allclose(fit.history, other.history, rtol=1e-13)
            for a, b in zip(
                jax.tree.leaves(fit.params), jax.tree.leaves(other.params), strict=True
            ):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# ---- degeneracy ----------------------------------------------------------------------------------


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
def test_component_on_duplicate_points_is_degenerate(covariance_type):
    rng = np.random.default_rng(5)
    d = 2
    spread = rng.normal(size=(300, d)) * [1.0, 2.0]
    duplicates = np.tile([[40.0, 40.0]], (6, 1))
    x = np.concatenate([spread, duplicates])
    family = jaxem.Gaussian(2, covariance_type=covariance_type)
    start = jaxem.MixtureParams(
        jnp.array([0.5, 0.5]),
        family.params_from_covariances(
            jnp.array([[0.0, 0.0], [40.0, 40.0]]),
            jnp.asarray(identity_precisions(covariance_type, 2, d, 1.0)),
        ),
    )
    algo = jaxem.em(jaxem.Mixture(family))
    result = jaxem.fit(algo, start, x, max_iter=20)
    stats, _ = jax.jit(algo.e_pass)(result.params, jnp.asarray(x), None)
    flags = np.asarray(family.degenerate(result.params.components, stats.counts))
    np.testing.assert_array_equal(flags, [False, True])
    collapsed = np.asarray(family.covariances(result.params.components)[1])
    smallest = np.linalg.eigvalsh(collapsed)[0] if collapsed.ndim == 2 else np.min(collapsed)
    np.testing.assert_allclose(smallest, family.reg_covar, rtol=1e-6)


def test_too_few_points_for_full_covariance_is_degenerate():
    family = jaxem.Gaussian(2)
    params = family.params_from_covariances(jnp.zeros((2, 3)), jnp.stack([jnp.eye(3)] * 2))
    flags = family.degenerate(params, jnp.array([100.0, 3.0]))
    np.testing.assert_array_equal(np.asarray(flags), [False, True])


# ---- configuration errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_components": 0}, "num_components must be a positive integer, got 0."),
        (
            {"num_components": 2, "covariance_type": "banded"},
            "Unknown covariance_type 'banded': use one of full, tied, diag, spherical.",
        ),
        ({"num_components": 2, "reg_covar": -1.0}, "reg_covar must be non-negative, got -1.0."),
        (
            {"num_components": 2, "init_method": "best"},
            "Unknown init_method 'best': use one of kmeans++, kmeans, random_resp, random_rows.",
        ),
    ],
)
def test_bad_configuration_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=f"^{__import__('re').escape(message)}$"):
        jaxem.Gaussian(**kwargs)
