"""Model selection: criteria against scikit-learn, the padded grid against plain fits."""

import importlib
import math

import jax
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

import jaxem
from jaxem.datasets import load_old_faithful
from jaxem.models.gaussian import COVARIANCE_TYPES
from jaxem.testing import count_compilations

# The module (jaxem.select itself is the function).
selection = importlib.import_module("jaxem.select")

# Old Faithful, EEE (tied) with 3 components: total log-likelihood reported by R's mclust
# (BIC -2314.386 with 11 parameters on 272 rows).
MCLUST_EEE3_LOG_LIKELIHOOD = -1126.358


@pytest.fixture(scope="module")
def faithful():
    return load_old_faithful()


GRID = {"num_components": (1, 3), "covariance_types": COVARIANCE_TYPES, "num_restarts": 3}
GRID_FIT = {"chunk_size": 100, "tol": 1e-4}


@pytest.fixture(scope="module")
def grid(faithful):
    return selection.select(faithful, **GRID, **GRID_FIT, key=7)


def _row(result, k, cov):
    return next(r for r in result.rows if (r.num_components, r.covariance_type) == (k, cov))


@pytest.mark.timeout(450)  # includes the grid fixture; generous for a shared, loaded machine
def test_grid_equals_plain_fits_cell_by_cell(faithful, grid):
    """Padded, vmapped, chunked grid == fit_restarts of each K alone, lane by lane."""
    for cov in COVARIANCE_TYPES:
        for k in GRID["num_components"]:
            model = jaxem.Mixture(jaxem.Gaussian(k, cov))
            _, plain = jaxem.fit_restarts(
                jaxem.em(model), jax.random.key(7), faithful, num_restarts=3, tol=1e-4
            )
            cell = grid.restarts[(k, cov)]
            np.testing.assert_array_equal(cell.num_iters, plain.num_iters)
            np.testing.assert_array_equal(cell.status, plain.status)
            np.testing.assert_allclose(cell.log_likelihood, plain.log_likelihood, rtol=1e-10)
            leaves = zip(jax.tree.leaves(cell.params), jax.tree.leaves(plain.params), strict=True)
            for got, want in leaves:
                assert got.shape == want.shape
                np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)
            row = _row(grid, k, cov)
            best = int(np.argmax(plain.log_likelihood))  # nothing degenerate on these data
            assert not row.degenerate
            assert row.best_restart == best
            # Both are totals over the rows.
            assert row.log_likelihood == pytest.approx(float(plain.log_likelihood[best]))
            params = jax.tree.map(lambda a, b=best: a[b], plain.params)
            assert row.bic == pytest.approx(selection.bic(params, model, faithful), rel=1e-10)
            assert row.aic == pytest.approx(selection.aic(params, model, faithful), rel=1e-10)
            assert row.icl == pytest.approx(selection.icl(params, model, faithful), rel=1e-10)


def _sklearn_with(model, params):
    """A scikit-learn GaussianMixture carrying jaxem's fitted parameters."""
    comp = model.components
    gm = GaussianMixture(comp.num_components, covariance_type=comp.covariance_type)
    gm.weights_ = np.asarray(params.weights)
    gm.means_ = np.asarray(params.components.means)
    gm.precisions_cholesky_ = np.asarray(params.components.precision_cholesky)
    gm.covariances_ = np.asarray(comp.covariances(params.components))
    gm.precisions_ = np.asarray(comp.precisions(params.components))
    gm.converged_, gm.n_iter_, gm.lower_bound_ = True, 1, 0.0
    gm.n_features_in_ = params.components.means.shape[1]
    return gm


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_bic_aic_equal_sklearn(faithful, grid, covariance_type):
    model = jaxem.Mixture(jaxem.Gaussian(3, covariance_type))
    params = jax.tree.map(lambda a: a[0], grid.restarts[(3, covariance_type)].params)
    gm = _sklearn_with(model, params)
    assert selection.bic(params, model, faithful) == pytest.approx(gm.bic(faithful), rel=1e-12)
    assert selection.aic(params, model, faithful) == pytest.approx(gm.aic(faithful), rel=1e-12)
    assert selection.num_parameters(model, 2) == gm._n_parameters()
    assert selection.log_likelihood(params, model, faithful) == pytest.approx(
        gm.score(faithful) * faithful.shape[0], rel=1e-12
    )


def test_icl_adds_twice_the_entropy(faithful, grid):
    model = jaxem.Mixture(jaxem.Gaussian(3, "full"))
    params = jax.tree.map(lambda a: a[0], grid.restarts[(3, "full")].params)
    resp = _sklearn_with(model, params).predict_proba(faithful)
    entropy = -np.sum(np.where(resp > 0, resp * np.log(np.where(resp > 0, resp, 1)), 0))
    assert entropy > 0.1
    want = selection.bic(params, model, faithful) + 2 * entropy
    assert selection.icl(params, model, faithful) == pytest.approx(want, rel=1e-10)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_old_faithful_grid_reaches_mclust_and_skips_degenerate(faithful):
    result = selection.select(faithful, range(1, 8), num_restarts=10, key=0, tol=1e-7, max_iter=500)
    assert len(result.rows) == 7 * 4
    assert not result.best.degenerate
    assert (result.best.num_components, result.best.covariance_type) == (3, "tied")
    assert result.best.bic == min(r.bic for r in result.rows if not r.degenerate)
    # mclust stops at a relative change of 1e-5; 0.05 out of 1126 is well inside that.
    assert result.best.log_likelihood == pytest.approx(MCLUST_EEE3_LOG_LIKELIHOOD, abs=0.05)
    assert result.model == jaxem.Mixture(jaxem.Gaussian(3, "tied"))
    assert result.params.components.means.shape == (3, 2)
    assert float(result.best_fit.log_likelihood) == pytest.approx(result.best.log_likelihood)
    table = result.format_table().splitlines()
    assert table[1 + result.best_index].startswith("*")
    assert sum(line.startswith("*") for line in table) == 1


def test_degenerate_cell_is_never_chosen():
    """A spike of identical points gives K=2 a huge likelihood, but a covariance at the floor."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(40, 2)), np.full((10, 2), 5.0)])
    result = selection.select(x, (1, 2), ("full",), num_restarts=2, key=0)
    one, two = result.rows
    assert two.degenerate and not one.degenerate
    assert two.bic < one.bic  # without the rule, K=2 would win
    assert result.best.num_components == 1


def test_one_compiled_fit_per_covariance_type_and_none_on_repeat(faithful, grid):
    x = faithful[:100]
    small = {"num_components": (1, 2, 3), "covariance_types": ("diag", "spherical")}
    selection.select(x, **small, num_restarts=2, key=1)
    # Another key or tol (run-time values), and the fixture's grid again: nothing compiles.
    with count_compilations() as compiled:
        selection.select(x, **small, num_restarts=2, key=2, tol=1e-4)
        selection.select(faithful, **GRID, **GRID_FIT, key=3)
    assert compiled == []
    # Another reg_covar is another family: per covariance type one start, one fit and one summary
    # program for all three K, while the k-means++ seeds, shared by every type, are reused.
    with count_compilations() as compiled:
        selection.select(x, **small, num_restarts=2, key=1, reg_covar=1e-5)
    assert len(compiled) == 2 * 3, compiled


def test_criterion_choice_and_table_columns(faithful, grid):
    result = selection.select(faithful, **GRID, **GRID_FIT, key=7, criterion="aic")
    assert result.criterion == "aic"
    assert result.best.aic == min(r.aic for r in result.rows)
    assert [r.aic for r in result.rows] == [r.aic for r in grid.rows]
    cols = result.columns()
    assert list(cols) == list(selection.SelectionRow._fields)
    assert cols["num_parameters"].tolist() == [5, 17, 5, 11, 4, 14, 3, 11]
    assert cols["bic"] - cols["aic"] == pytest.approx(cols["num_parameters"] * (math.log(272) - 2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"num_components": (1, 60)},
            "x has 50 rows but num_components goes up to 60: use at most 50 components or "
            "more data.",
        ),
        (
            {"covariance_types": ("full", "banded")},
            "Unknown covariance type(s) ['banded']: use some of full, tied, diag, spherical.",
        ),
        ({"criterion": "mdl"}, "Unknown criterion 'mdl': use one of bic, aic, icl."),
        ({"num_restarts": 0}, "num_restarts must be a positive integer, got 0."),
        (
            {"num_components": (0, 2)},
            "num_components must be positive integers (e.g. range(1, 7)), got (0, 2).",
        ),
    ],
)
def test_bad_arguments_raise_before_fitting(kwargs, message):
    x = np.random.default_rng(0).normal(size=(50, 2))
    with pytest.raises(ValueError) as info:
        selection.select(x, **kwargs)
    assert str(info.value) == message


def test_input_is_not_modified(faithful, grid):
    x = faithful.copy()
    selection.select(x, **GRID, **GRID_FIT)
    np.testing.assert_array_equal(x, faithful)
