"""Figures for fitted mixtures: data with component ellipses, log-likelihood traces, criteria, and
responsibilities.

Matplotlib is imported only when a function is called (``pip install "jaxem[plot]"``). Figures
are built with matplotlib's object-oriented API, without pyplot, so they render headlessly
and never touch global state; every function returns the figure (save it with ``fig.savefig``).
Pass ``ax`` to draw into an existing axes instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxem.core.program_cache import cached_jit

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from jaxem.core.mixture import Mixture, MixtureParams
    from jaxem.drivers.fit import FitResult
    from jaxem.select import Selection


def _matplotlib() -> Any:
    try:
        import matplotlib
        import matplotlib.figure
        import matplotlib.patches
    except ImportError as error:
        raise ImportError(
            'jaxem\'s plots need matplotlib: install it with pip install "jaxem[plot]".'
        ) from error
    return matplotlib


def _figure_and_axes(
    ax: Axes | None, size: tuple[float, float] = (5.0, 4.0)
) -> tuple[Figure, Axes]:
    mpl = _matplotlib()
    if ax is not None:
        return ax.figure, ax
    fig = mpl.figure.Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def _colors(num: int) -> list[Any]:
    cmap = _matplotlib().colormaps["tab10" if num <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(num)]


@partial(cached_jit, static_argnames=("components",))
def _covariances(components: Any, params: Any) -> Any:
    # Compiled (and stored): run eagerly, each operation compiles on its own in a new process.
    return components.covariances(params)


def full_covariances(model: Mixture, params: MixtureParams) -> np.ndarray:
    """Every component's covariance as a ``[K, D, D]`` matrix, whatever the covariance type."""
    components = model.components
    means = np.asarray(params.components.means)
    k, d = means.shape
    cov = np.asarray(_covariances(components, params.components))
    kind = getattr(components, "covariance_type", "full")
    if kind == "tied":
        return np.broadcast_to(cov, (k, d, d)).copy()
    if kind == "diag":
        return np.stack([np.diag(c) for c in cov])
    if kind == "spherical":
        return cov[:, None, None] * np.eye(d)
    return cov


def responsibilities(model: Mixture, params: MixtureParams, x: Any) -> np.ndarray:
    """Posterior probabilities of the components for every row of ``x``, shape ``[N, K]``."""
    import jax.numpy as jnp

    log_resp, _ = model.log_resp(params, jnp.asarray(x))
    return np.exp(np.asarray(log_resp))


def _draw_ellipses(
    ax: Axes, means: np.ndarray, covs: np.ndarray, colors: list[Any], n_std: Sequence[float]
) -> None:
    patches = _matplotlib().patches
    for mean, cov, color in zip(means, covs, colors, strict=True):
        values, vectors = np.linalg.eigh(cov)
        angle = np.degrees(np.arctan2(vectors[1, -1], vectors[0, -1]))
        for s in n_std:
            width, height = 2 * s * np.sqrt(np.maximum(values[::-1], 0))
            ax.add_patch(
                patches.Ellipse(
                    mean, width, height, angle=angle, fill=False, color=color, lw=1.5, alpha=0.9
                )
            )
        ax.plot(*mean, marker="+", color="black", ms=10, mew=2)


def plot_mixture(
    model: Mixture,
    params: MixtureParams,
    x: Any,
    *,
    columns: Sequence[str] | None = None,
    n_std: Sequence[float] = (1.0, 2.0),
    ax: Axes | None = None,
) -> Figure:
    """Scatter of the data coloured by most likely component, with each Gaussian's ellipses.

    Ellipses are drawn at ``n_std`` standard deviations. With more than two features the figure has
    one panel per pair of features (``ax`` is then not accepted).

    Example:
        >>> import jax, jaxem
        >>> from jaxem.plot import plot_mixture
        >>> x = jaxem.datasets.load_old_faithful()
        >>> model = jaxem.Mixture(jaxem.Gaussian(2))
        >>> params = jaxem.fit(jaxem.em(model), jax.random.key(0), x).params
        >>> fig = plot_mixture(model, params, x, columns=("eruptions", "waiting"))
        >>> len(fig.axes[0].patches)  # an ellipse at 1 and 2 standard deviations per component
        4
    """
    x = np.asarray(x)
    d = x.shape[1]
    names = list(columns) if columns is not None else [f"x{i}" for i in range(d)]
    labels = responsibilities(model, params, x).argmax(axis=1)
    means = np.asarray(params.components.means)
    covs = full_covariances(model, params)
    colors = _colors(means.shape[0])
    point_colors = [colors[i] for i in labels]
    if d == 2 or ax is not None:
        fig, ax = _figure_and_axes(ax)
        panels = [(ax, 0, 1)]
    else:
        if d < 2:
            raise ValueError(f"plot_mixture needs at least 2 features, got {d}.")
        mpl = _matplotlib()
        fig = mpl.figure.Figure(figsize=(3.2 * (d - 1), 3.2 * (d - 1)), layout="constrained")
        grid = fig.subplots(d - 1, d - 1, squeeze=False)
        panels = []
        for row in range(d - 1):
            for col in range(d - 1):
                if col > row:
                    grid[row, col].set_visible(False)
                else:
                    panels.append((grid[row, col], col, row + 1))
    for panel, i, j in panels:
        panel.scatter(x[:, i], x[:, j], c=point_colors, s=10, alpha=0.6, linewidths=0)
        pair = np.ix_([i, j], [i, j])
        _draw_ellipses(panel, means[:, [i, j]], covs[(slice(None), *pair)], colors, n_std)
        panel.set_xlabel(names[i])
        panel.set_ylabel(names[j])
    panels[0][0].set_title(f"{means.shape[0]} components")
    return fig


def plot_log_likelihood(result: FitResult, *, ax: Axes | None = None) -> Figure:
    """Log-likelihood per EM iteration of every restart (the best one highlighted): the
    ``history`` of ``result``, totals over the (weighted) rows.

    ``result`` is a :class:`jaxem.FitResult`, with a leading restart axis (from
    :func:`jaxem.fit_restarts`) or without (from :func:`jaxem.fit`).
    """
    history = np.atleast_2d(np.asarray(result.history))
    num_iters = np.atleast_1d(np.asarray(result.num_iters))
    final = np.atleast_1d(np.asarray(result.log_likelihood))
    best = int(np.argmax(np.where(np.isfinite(final), final, -np.inf)))
    fig, ax = _figure_and_axes(ax)
    for lane, (trace, n) in enumerate(zip(history, num_iters, strict=True)):
        steps = np.arange(1, int(n) + 1)
        if lane == best:
            continue
        ax.plot(steps, trace[: int(n)], color="0.6", lw=0.8, alpha=0.7)
    n = int(num_iters[best])
    ax.plot(
        np.arange(1, n + 1), history[best, :n], color="C3", lw=2, label=f"best (restart {best})"
    )
    ax.set_xlabel("EM iteration")
    ax.set_ylabel("log-likelihood")
    ax.set_title(f"{history.shape[0]} restart{'s' if history.shape[0] > 1 else ''}")
    ax.legend(loc="lower right")
    return fig


def plot_criteria(
    selection: Selection, *, criterion: str | None = None, ax: Axes | None = None
) -> Figure:
    """A criterion against K, one line per covariance type; degenerate cells are crossed out and
    the chosen cell is starred."""
    criterion = criterion or selection.criterion
    fig, ax = _figure_and_axes(ax)
    types = list(dict.fromkeys(r.covariance_type for r in selection.rows))
    for i, cov in enumerate(types):
        rows = [r for r in selection.rows if r.covariance_type == cov]
        ks = [r.num_components for r in rows]
        values = [getattr(r, criterion) for r in rows]
        ax.plot(ks, values, marker="o", color=f"C{i}", label=cov)
        bad = [(k, v) for k, v, r in zip(ks, values, rows, strict=True) if r.degenerate]
        if bad:
            ax.plot(*zip(*bad, strict=True), "x", color="black", ms=9, mew=2)
    best = selection.best
    ax.plot(
        best.num_components,
        getattr(best, criterion),
        marker="*",
        color="gold",
        ms=18,
        mec="black",
        ls="none",
        label="chosen",
    )
    ax.set_xlabel("number of components K")
    ax.set_ylabel(f"{criterion.upper()} (lower is better)")
    ax.legend()
    return fig


def plot_uncertainty(
    model: Mixture,
    params: MixtureParams,
    x: Any,
    *,
    features: tuple[int, int] = (0, 1),
    columns: Sequence[str] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """The data coloured by classification uncertainty, ``1 - max_k r_nk`` (0: certain)."""
    x = np.asarray(x)
    uncertainty = 1.0 - responsibilities(model, params, x).max(axis=1)
    i, j = features
    names = list(columns) if columns is not None else [f"x{c}" for c in range(x.shape[1])]
    fig, ax = _figure_and_axes(ax)
    points = ax.scatter(x[:, i], x[:, j], c=uncertainty, cmap="viridis", s=12, vmin=0.0)
    fig.colorbar(points, ax=ax, label="1 - max responsibility")
    ax.set_xlabel(names[i])
    ax.set_ylabel(names[j])
    ax.set_title("classification uncertainty")
    return fig


def plot_selection(selection: Selection, x: Any, *, columns: Sequence[str] | None = None) -> Figure:
    """Summary of a :func:`jaxem.select` run: the chosen fit on the data, the log-likelihood of
    every restart of the chosen cell, and the criterion against K."""
    mpl = _matplotlib()
    fig = mpl.figure.Figure(figsize=(15, 4.5), layout="constrained")
    data_ax, trace_ax, criteria_ax = fig.subplots(1, 3)
    row = selection.best
    plot_mixture(
        selection.model, selection.params, np.asarray(x)[:, :2], columns=columns, ax=data_ax
    )
    data_ax.set_title(f"chosen: K={row.num_components}, {row.covariance_type} covariance")
    plot_log_likelihood(selection.restarts[(row.num_components, row.covariance_type)], ax=trace_ax)
    plot_criteria(selection, ax=criteria_ax)
    return fig


__all__ = [
    "full_covariances",
    "plot_criteria",
    "plot_log_likelihood",
    "plot_mixture",
    "plot_selection",
    "plot_uncertainty",
    "responsibilities",
]
