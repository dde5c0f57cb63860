"""Figures render headlessly to PNG and show what they claim."""

import sys

import jax
import matplotlib
import numpy as np
import pytest

import jaxem
from jaxem import plot
from jaxem.datasets import load_old_faithful
from jaxem.models.gaussian import COVARIANCE_TYPES
from jaxem.select import select

matplotlib.use("Agg")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def faithful():
    return load_old_faithful()


@pytest.fixture(scope="module")
def fitted(faithful):
    model = jaxem.Mixture(jaxem.Gaussian(2, "full"))
    best, lanes = jaxem.fit_restarts(jaxem.em(model), jax.random.key(0), faithful, num_restarts=3)
    return model, best, lanes


def _saved(fig, tmp_path, name):
    path = tmp_path / name
    fig.savefig(path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    return path


def test_mixture_plot_draws_every_component(fitted, faithful, tmp_path):
    model, best, _ = fitted
    fig = plot.plot_mixture(model, best.params, faithful, columns=("eruptions", "waiting"))
    (ax,) = fig.axes
    assert len(ax.patches) == 2 * 2  # two components, ellipses at 1 and 2 standard deviations
    assert ax.get_xlabel() == "eruptions" and ax.get_ylabel() == "waiting"
    # ellipse centres are the fitted means
    centres = sorted(tuple(np.round(p.center, 6)) for p in ax.patches[::2])
    means = sorted(tuple(np.round(m, 6)) for m in np.asarray(best.params.components.means))
    assert centres == means
    _saved(fig, tmp_path, "mixture.png")


def test_pairwise_panels_for_more_than_two_features(tmp_path):
    x = np.random.default_rng(0).normal(size=(60, 3))
    model = jaxem.Mixture(jaxem.Gaussian(2, "diag"))
    params = jaxem.fit(jaxem.em(model), jax.random.key(0), x, max_iter=5).params
    fig = plot.plot_mixture(model, params, x)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 3  # pairs (0,1), (0,2), (1,2)
    assert {(ax.get_xlabel(), ax.get_ylabel()) for ax in visible} == {
        ("x0", "x1"),
        ("x0", "x2"),
        ("x1", "x2"),
    }
    _saved(fig, tmp_path, "pairs.png")


def test_log_likelihood_plot_has_one_trace_per_restart(fitted, tmp_path):
    _, _, lanes = fitted
    fig = plot.plot_log_likelihood(lanes)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3
    best = int(np.argmax(np.asarray(lanes.log_likelihood)))
    n = int(lanes.num_iters[best])
    np.testing.assert_array_equal(lines[-1].get_ydata(), np.asarray(lanes.history[best, :n]))
    # The history is a total over the rows, not a mean: the axis says so.
    assert fig.axes[0].get_ylabel() == "log-likelihood"
    _saved(fig, tmp_path, "trace.png")


def test_criteria_and_summary_figures(faithful, tmp_path):
    result = select(faithful, (1, 2), ("diag", "spherical"), num_restarts=2)
    fig = plot.plot_criteria(result)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["diag", "spherical", "chosen"]
    _saved(fig, tmp_path, "criteria.png")
    summary = plot.plot_selection(result, faithful, columns=("eruptions", "waiting"))
    assert len(summary.axes) == 3
    _saved(summary, tmp_path, "summary.png")


def test_uncertainty_is_one_minus_the_largest_responsibility(fitted, faithful, tmp_path):
    model, best, _ = fitted
    fig = plot.plot_uncertainty(model, best.params, faithful)
    colours = fig.axes[0].collections[0].get_array()
    resp = plot.responsibilities(model, best.params, faithful)
    np.testing.assert_allclose(resp.sum(axis=1), 1.0)
    np.testing.assert_allclose(colours, 1 - resp.max(axis=1))
    _saved(fig, tmp_path, "uncertainty.png")


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_full_covariances_for_every_type(faithful, covariance_type):
    model = jaxem.Mixture(jaxem.Gaussian(2, covariance_type))
    params = jaxem.fit(jaxem.em(model), jax.random.key(0), faithful, max_iter=3).params
    full = plot.full_covariances(model, params)
    assert full.shape == (2, 2, 2)
    precisions = np.asarray(model.components.precisions(params.components))
    if covariance_type in ("full", "tied"):
        precisions = np.broadcast_to(precisions, (2, 2, 2))
    elif covariance_type == "diag":
        precisions = np.stack([np.diag(p) for p in precisions])
    else:
        precisions = precisions[:, None, None] * np.eye(2)
    np.testing.assert_allclose(full @ precisions, np.broadcast_to(np.eye(2), (2, 2, 2)), atol=1e-8)


def test_missing_matplotlib_names_the_plot_extra(fitted, faithful, monkeypatch):
    model, best, _ = fitted
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "jaxem\[plot\]"'):
        plot.plot_mixture(model, best.params, faithful)
