"""Model selection: BIC, AIC and ICL, and a grid over K, covariance type and restarts.

The criteria follow scikit-learn's sign convention: lower is better. They apply to every model with
a parameter count: mixtures of any family (``num_free_parameters`` of the family plus K - 1
weights), gated mixtures, and hidden Markov models on :class:`jaxem.Sequences`, whose sample size
is the (weighted) number of time steps, as in hmmlearn.

:func:`select` fits the whole grid with one compiled program per covariance type. Every K of the
grid runs as a mixture of ``max(K)`` components whose surplus slots start (and therefore stay) at
weight zero: their log-weight is ``-inf``, so they receive no responsibility and never change the
others. The k-means++ seeding draws its centres one after the other from the same key, so the first
K centres of a ``max(K)`` seeding are exactly the K-centre seeding; starting each lane from them
gives, lane by lane, the fit that a plain K-component model would run from the same key.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxem import init as initializers
from jaxem.core.algorithm import em
from jaxem.core.estep import num_rows, total_weight
from jaxem.core.inputs import is_key, prepare_data, seeded_keys
from jaxem.core.kernel import Status
from jaxem.core.mixture import Mixture, MixtureParams
from jaxem.core.model import count_free_parameters
from jaxem.core.program_cache import cached_jit
from jaxem.core.rows import chunk_width, default_chunk_size, reduce_chunks
from jaxem.drivers.fit import FitResult, fit_restarts
from jaxem.hmm.model import HiddenMarkovModel, Sequences
from jaxem.models.gaussian import COVARIANCE_TYPES, Gaussian, GaussianParams

Array = jax.Array

CRITERIA = ("bic", "aic", "icl")


# ---- criteria of one fitted model ---------------------------------------------------------------


def num_parameters(model: Any, num_features: int) -> int:
    """Free parameters of ``model`` on data with ``num_features`` columns.

    A mixture counts its family's parameters and K - 1 weights; any other model (a gated mixture, a
    hidden Markov model) counts itself with ``num_free_parameters(num_features)``. For a regression
    family ``num_features`` is the number of covariates; for an HMM, the features of one time step.

    Example:
        >>> import jaxem
        >>> num_parameters(jaxem.Mixture(jaxem.Gaussian(3, "diag")), 2)
        14
        >>> num_parameters(jaxem.HiddenMarkovModel(jaxem.Gaussian(3, "diag")), 2)
        20
    """
    counted = model.components if isinstance(model, Mixture) else model
    extra = model.num_components - 1 if isinstance(model, Mixture) else 0
    return count_free_parameters(counted, num_features) + extra


def _chunk_size_for(model: Any, x: Array, chunk_size: int | None, lanes: int = 1) -> int:
    if chunk_size is not None:
        return chunk_size
    return default_chunk_size(num_rows(x), chunk_width(model, x) * lanes)


def _num_features(model: Any, x: Any) -> int:
    """Columns of the data: of one time step for sequences, of the covariates (the first leaf)
    for a pair such as ``(covariates, target)`` or ``(x, labels)``."""
    if isinstance(model, HiddenMarkovModel):
        leaf = jax.tree.leaves(x.observations)[0]
        return leaf.shape[2] if leaf.ndim > 2 else 1
    if isinstance(x, jax.Array):
        if x.ndim != 2:
            raise ValueError(f"x must be a 2-D array (rows x features), got shape {x.shape}.")
        return x.shape[1]
    leaf = jax.tree.leaves(x)[0]
    return leaf.shape[1] if leaf.ndim > 1 else 1


@partial(cached_jit, static_argnames=("model", "chunk_size"))
def _log_likelihood_and_entropy(
    model: Any, params: Any, x: Array, row_weights: Array | None, chunk_size: int
) -> tuple[Array, Array]:
    def chunk(xc: Array, wc: Array | None, _: Array) -> tuple[Array, Array]:
        loglik = model.e_step(params, xc, wc)[1]  # the unused statistics are compiled away
        entropy = model.entropy(params, xc, wc) if hasattr(model, "entropy") else jnp.zeros(())
        return loglik, entropy

    return reduce_chunks(chunk, x, row_weights, chunk_size)


def _criteria_inputs(
    params: Any, model: Any, x: Any, row_weights: Any, chunk_size: int | None
) -> tuple[float, float, float, int]:
    if isinstance(model, HiddenMarkovModel) and not isinstance(x, Sequences):
        raise ValueError(
            f"A HiddenMarkovModel needs its data as jaxem.Sequences, got {type(x).__name__}: "
            "pass jaxem.pad_sequences(x, lengths)."
        )
    x, row_weights = prepare_data(
        x, row_weights, allow_missing=getattr(model, "handles_missing", False)
    )
    p = num_parameters(model, _num_features(model, x))
    size = _chunk_size_for(model, x, chunk_size)
    loglik, entropy = _log_likelihood_and_entropy(model, params, x, row_weights, size)
    # The sample size: data points, or the time steps of sequences (hmmlearn's len(X)).
    count = getattr(model, "num_observations", None)
    n = float(
        total_weight(x, row_weights, loglik.dtype) if count is None else count(x, row_weights)
    )
    return float(loglik), float(entropy), n, p


def log_likelihood(
    params: Any, model: Any, x: Any, row_weights: Any = None, *, chunk_size: int | None = None
) -> float:
    """Total (weighted) log-likelihood of ``x`` under ``model`` with ``params``, chunk by chunk.

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (50, 2))
        >>> model = jaxem.Mixture(jaxem.Gaussian(1))
        >>> result = jaxem.fit(jaxem.em(model), jax.random.key(0), x)
        >>> abs(log_likelihood(result.params, model, x) - float(result.log_likelihood)) < 1e-3
        True
    """
    return _criteria_inputs(params, model, x, row_weights, chunk_size)[0]


def bic(
    params: Any, model: Any, x: Any, row_weights: Any = None, *, chunk_size: int | None = None
) -> float:
    """Bayesian information criterion ``-2 log L + p log N`` (lower is better).

    ``N`` is the (weighted) number of rows, or of time steps for a hidden Markov model.

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (100, 2))
        >>> model = jaxem.Mixture(jaxem.Gaussian(2))
        >>> params = jaxem.fit(jaxem.em(model), jax.random.key(0), x).params
        >>> bic(params, model, x) > aic(params, model, x)
        True
        >>> hmm = jaxem.HiddenMarkovModel(jaxem.Gaussian(2, "diag"))
        >>> data = jaxem.pad_sequences(x, [60, 40])
        >>> params = jaxem.fit(jaxem.em(hmm), jax.random.key(0), data, max_iter=20).params
        >>> icl(params, hmm, data) >= bic(params, hmm, data)
        True
    """
    loglik, _, n, p = _criteria_inputs(params, model, x, row_weights, chunk_size)
    return -2.0 * loglik + p * math.log(n)


def aic(
    params: Any, model: Any, x: Any, row_weights: Any = None, *, chunk_size: int | None = None
) -> float:
    """Akaike information criterion ``-2 log L + 2 p`` (lower is better).

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (100, 2))
        >>> model = jaxem.Mixture(jaxem.Gaussian(2))
        >>> params = jaxem.fit(jaxem.em(model), jax.random.key(0), x).params
        >>> p = 2 * 2 + 2 * 3 + 1  # means, full covariances, free weights
        >>> abs(aic(params, model, x) - (-2 * log_likelihood(params, model, x) + 2 * p)) < 1e-6
        True
    """
    loglik, _, _, p = _criteria_inputs(params, model, x, row_weights, chunk_size)
    return -2.0 * loglik + 2.0 * p


def icl(
    params: Any, model: Any, x: Any, row_weights: Any = None, *, chunk_size: int | None = None
) -> float:
    """Integrated completed likelihood: BIC plus twice the entropy of the latent variables.

    ``-2 log L + p log N + 2 sum_n H(r_n)``, lower is better; it penalises overlapping components
    (Biernacki, Celeux & Govaert, 2000; mclust's ``icl`` with the sign flipped). For a hidden
    Markov model the entropy is that of the posterior over whole state paths, ``H(z | x)``.

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (100, 2))
        >>> model = jaxem.Mixture(jaxem.Gaussian(2))
        >>> params = jaxem.fit(jaxem.em(model), jax.random.key(0), x).params
        >>> icl(params, model, x) >= bic(params, model, x)  # two overlapping components
        True
    """
    if not hasattr(model, "entropy"):
        raise ValueError(
            f"ICL needs the entropy of the latent variables: {type(model).__name__} has no "
            "entropy(params, x, weights) method (mixtures and hidden Markov models have one)."
        )
    loglik, entropy, n, p = _criteria_inputs(params, model, x, row_weights, chunk_size)
    return -2.0 * loglik + p * math.log(n) + 2.0 * entropy


# ---- the grid -----------------------------------------------------------------------------------


class SelectionRow(NamedTuple):
    """One cell of the grid, summarised by its chosen restart.

    Attributes:
        num_components: K.
        covariance_type: the Gaussian covariance type.
        log_likelihood: total (weighted) log-likelihood of the chosen restart.
        num_parameters: free parameters (means, covariances and K - 1 weights).
        bic, aic, icl: the criteria (lower is better).
        degenerate: every restart of the cell has a component with too little support or a
            covariance at the ``reg_covar`` floor (see ``Gaussian.degenerate``).
        best_restart: index of the chosen restart: the highest log-likelihood among the finite,
            non-degenerate ones (among all finite ones when none is non-degenerate).
        num_iters: EM iterations of that restart.
        status: its :class:`jaxem.Status` name.
    """

    num_components: int
    covariance_type: str
    log_likelihood: float
    num_parameters: int
    bic: float
    aic: float
    icl: float
    degenerate: bool
    best_restart: int
    num_iters: int
    status: str


@dataclass(frozen=True, eq=False)
class Selection:
    """The outcome of :func:`select`.

    Attributes:
        rows: one :class:`SelectionRow` per cell, by covariance type then K.
        criterion: the criterion the choice was made by.
        best_index: index into ``rows`` of the chosen cell.
        model: the chosen model (a ``Mixture`` of ``Gaussian``).
        params: its fitted parameters.
        restarts: ``(K, covariance_type) -> FitResult`` of every restart of every cell (a leading
            restart axis on every leaf; parameters with exactly K components).
    """

    rows: tuple[SelectionRow, ...]
    criterion: str
    best_index: int
    model: Mixture
    params: MixtureParams
    restarts: dict[tuple[int, str], FitResult] = field(repr=False)

    @property
    def best(self) -> SelectionRow:
        """The chosen cell."""
        return self.rows[self.best_index]

    @property
    def best_fit(self) -> FitResult:
        """The chosen restart's :class:`jaxem.FitResult`."""
        row = self.best
        lanes = self.restarts[(row.num_components, row.covariance_type)]
        return jax.tree.map(lambda a: a[row.best_restart], lanes)

    def columns(self) -> dict[str, np.ndarray]:
        """The table as named NumPy columns."""
        return {
            name: np.array([getattr(r, name) for r in self.rows]) for name in SelectionRow._fields
        }

    def format_table(self) -> str:
        """The table as aligned text; the chosen cell is marked with ``*``."""
        header = (
            "",
            "K",
            "covariance",
            "log-lik",
            "params",
            "BIC",
            "AIC",
            "ICL",
            "degenerate",
            "restart",
            "iters",
            "status",
        )
        lines = [header]
        for i, r in enumerate(self.rows):
            lines.append(
                (
                    "*" if i == self.best_index else "",
                    str(r.num_components),
                    r.covariance_type,
                    f"{r.log_likelihood:.2f}",
                    str(r.num_parameters),
                    f"{r.bic:.2f}",
                    f"{r.aic:.2f}",
                    f"{r.icl:.2f}",
                    "yes" if r.degenerate else "no",
                    str(r.best_restart),
                    str(r.num_iters),
                    r.status.lower(),
                )
            )
        widths = [max(len(line[c]) for line in lines) for c in range(len(header))]
        return "\n".join(
            " ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
            for line in lines
        )


def _take_components(params: MixtureParams, k: int, covariance_type: str) -> MixtureParams:
    """The first ``k`` components of padded parameters (a leading restart axis is kept)."""
    comp = params.components
    precision = comp.precision_cholesky
    if covariance_type != "tied":
        precision = precision[:, :k]
    return MixtureParams(params.weights[:, :k], GaussianParams(comp.means[:, :k], precision))


@partial(cached_jit, static_argnames=("num_centers",))
def _seed_centers(keys: Array, x: Array, row_weights: Array | None, num_centers: int) -> Array:
    """k-means++ centres per key, shared by every covariance type (compiled once per grid)."""
    return jax.vmap(lambda key: initializers.kmeans_plusplus(key, x, row_weights, num_centers))(
        keys
    )


@partial(cached_jit, static_argnames=("components", "chunk_size"))
def _padded_initial_params(
    components: Gaussian,
    centers: Array,
    num_active: Array,
    x: Array,
    row_weights: Array | None,
    chunk_size: int,
) -> MixtureParams:
    """Per lane, what ``Mixture(Gaussian(num_active)).init`` makes of the first ``num_active``
    k-means++ centres, padded to ``components.num_components`` with zero-weight components.

    Mirrors the k-means++ path of ``Gaussian.init`` with the surplus centres masked out.
    """
    k_max = components.num_components

    def one(lane_centers: Array, k: Array) -> MixtureParams:
        live = jnp.arange(k_max) < k
        reference = GaussianParams(lane_centers, jnp.zeros(()))

        def chunk(xc: Array, wc: Array | None, _: Array) -> Any:
            distances = initializers.squared_distances(xc, lane_centers)
            nearest = jnp.argmin(jnp.where(live, distances, jnp.inf), axis=-1)
            resp = jax.nn.one_hot(nearest, k_max, dtype=xc.dtype)
            if wc is not None:
                resp = resp * wc[:, None]
            return components.chunk_stats(reference, xc, resp)

        comp = components.m_step(reference, reduce_chunks(chunk, x, row_weights, chunk_size))
        mix_weights = jnp.where(live, 1.0 / k, 0.0).astype(x.dtype)
        return MixtureParams(mix_weights, comp)

    return jax.vmap(one)(centers, num_active)


@partial(cached_jit, static_argnames=("model", "chunk_size"))
def _lane_summaries(
    model: Mixture,
    params: MixtureParams,
    num_active: Array,
    x: Array,
    row_weights: Array | None,
    chunk_size: int,
) -> tuple[Array, Array]:
    """Per lane: the responsibilities' entropy and whether a live component is degenerate."""
    k_max = model.num_components

    def one(p: MixtureParams, k: Array) -> tuple[Array, Array]:
        def chunk(xc: Array, wc: Array | None, _: Array) -> tuple[Array, Array]:
            return model.e_step(p, xc, wc)[0].counts, model.entropy(p, xc, wc)

        counts, entropy = reduce_chunks(chunk, x, row_weights, chunk_size)
        live = jnp.arange(k_max) < k
        return entropy, jnp.any(model.components.degenerate(p.components, counts) & live)

    return jax.vmap(one)(params, num_active)


def _check_grid(
    num_components: Any, covariance_types: Any, num_restarts: Any, criterion: str
) -> tuple[list[int], list[str]]:
    ks = [num_components] if isinstance(num_components, int) else list(num_components)
    if not ks or not all(isinstance(k, (int, np.integer)) and k >= 1 for k in ks):
        raise ValueError(
            f"num_components must be positive integers (e.g. range(1, 7)), got {num_components!r}."
        )
    types = [covariance_types] if isinstance(covariance_types, str) else list(covariance_types)
    unknown = [t for t in types if t not in COVARIANCE_TYPES]
    if not types or unknown:
        raise ValueError(
            f"Unknown covariance type(s) {unknown or types!r}: "
            f"use some of {', '.join(COVARIANCE_TYPES)}."
        )
    if not isinstance(num_restarts, (int, np.integer)) or num_restarts < 1:
        raise ValueError(f"num_restarts must be a positive integer, got {num_restarts!r}.")
    if criterion not in CRITERIA:
        raise ValueError(f"Unknown criterion {criterion!r}: use one of {', '.join(CRITERIA)}.")
    return sorted({int(k) for k in ks}), list(dict.fromkeys(types))


def _best_restart(loglik: np.ndarray, degenerate: np.ndarray) -> int:
    finite = np.isfinite(loglik)
    usable = finite & ~degenerate
    pool = usable if usable.any() else finite
    if not pool.any():
        return 0
    return int(np.argmax(np.where(pool, loglik, -np.inf)))


def select(
    x: Any,
    num_components: Iterable[int] | int = range(1, 7),
    covariance_types: Iterable[str] | str = COVARIANCE_TYPES,
    *,
    num_restarts: int = 10,
    key: Any = 0,
    row_weights: Any = None,
    reg_covar: float = 1e-6,
    max_iter: int = 100,
    tol: float = 1e-3,
    chunk_size: int | None = None,
    criterion: str = "bic",
    progress: bool = False,
) -> Selection:
    """Fit Gaussian mixtures over a grid of K and covariance types and choose one by a criterion.

    Each cell runs ``num_restarts`` k-means++ restarts; restart ``i`` of every cell starts from
    ``jax.random.split(key, num_restarts)[i]``, so a cell equals
    ``jaxem.fit_restarts(jaxem.em(jaxem.Mixture(jaxem.Gaussian(K, type, reg_covar))), key, x,
    num_restarts=num_restarts)`` lane by lane. All K of one covariance type run as one compiled,
    vmapped program. Degenerate cells are never chosen (unless every cell is degenerate, which
    warns).

    Args:
        x: data, shape ``[N, D]``.
        num_components: the K to try.
        covariance_types: among ``"full"``, ``"tied"``, ``"diag"``, ``"spherical"``.
        num_restarts: restarts per cell.
        key: a PRNG key or an integer seed.
        row_weights: optional non-negative weight per row.
        reg_covar, max_iter, tol, chunk_size: as for ``Gaussian``, ``fit`` and ``em``.
        criterion: ``"bic"`` (default), ``"aic"`` or ``"icl"``; lower is better.
        progress: show a progress bar over covariance types (needs ``tqdm``).

    Returns:
        A :class:`Selection`: the table (``rows``, ``format_table()``), the chosen ``model`` and
        ``params``, and every restart of every cell.

    Example:
        >>> import jaxem
        >>> x = jaxem.datasets.load_old_faithful()
        >>> result = select(x, range(1, 4), ("full", "diag"), num_restarts=4)
        >>> result.best.num_components, len(result.rows)
        (2, 6)
    """
    ks, types = _check_grid(num_components, covariance_types, num_restarts, criterion)
    components = {t: Gaussian(max(ks), t, reg_covar) for t in types}
    x, row_weights = prepare_data(x, row_weights)
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D array (rows x features), got shape {x.shape}.")
    n, d = x.shape
    if max(ks) > n:
        raise ValueError(
            f"x has {n} rows but num_components goes up to {max(ks)}: use at most {n} components "
            "or more data."
        )
    # Host arrays and compiled programs only: an eager operation compiles on its own, per shape,
    # in every new process.
    keys = (
        jax.random.split(key, num_restarts) if is_key(key) else seeded_keys(int(key), num_restarts)
    )
    num_active = np.repeat(np.asarray(ks), num_restarts)
    total = float(n if row_weights is None else np.sum(np.asarray(row_weights)))
    # Every cell uses the same keys, so the max(K) seeding per key serves all of them.
    centers = np.tile(np.asarray(_seed_centers(keys, x, row_weights, max(ks))), (len(ks), 1, 1))

    rows: list[SelectionRow] = []
    restarts: dict[tuple[int, str], FitResult] = {}
    chosen_params: dict[tuple[int, str], MixtureParams] = {}
    for cov in _progress(types, progress):
        model = Mixture(components[cov])
        size = _chunk_size_for(model, x, chunk_size, len(ks) * num_restarts)
        init = _padded_initial_params(components[cov], centers, num_active, x, row_weights, size)
        _, lanes = fit_restarts(
            em(model, chunk_size=chunk_size), init, x, row_weights, max_iter=max_iter, tol=tol
        )
        entropy, degenerate = jax.device_get(
            _lane_summaries(model, lanes.params, num_active, x, row_weights, size)
        )
        lanes = jax.device_get(lanes)  # cells are sliced on the host
        loglik, num_iters, status = lanes.log_likelihood, lanes.num_iters, lanes.status
        for i, k in enumerate(ks):
            cell = slice(i * num_restarts, (i + 1) * num_restarts)
            r = _best_restart(loglik[cell], degenerate[cell])
            lane = i * num_restarts + r
            total_loglik = float(loglik[lane])
            p = num_parameters(Mixture(Gaussian(k, cov, reg_covar)), d)
            bic_value = -2.0 * total_loglik + p * math.log(total)
            rows.append(
                SelectionRow(
                    k,
                    cov,
                    total_loglik,
                    p,
                    bic_value,
                    -2.0 * total_loglik + 2.0 * p,
                    bic_value + 2.0 * float(entropy[lane]),
                    bool(np.all(degenerate[cell])),
                    r,
                    int(num_iters[lane]),
                    Status(int(status[lane])).name,
                )
            )
            cell_lanes = jax.tree.map(lambda a, c=cell: a[c], lanes)
            cell_lanes = cell_lanes._replace(params=_take_components(cell_lanes.params, k, cov))
            restarts[(k, cov)] = cell_lanes
            chosen_params[(k, cov)] = jax.tree.map(lambda a, r=r: a[r], cell_lanes.params)

    best_index = _choose(rows, criterion)
    best = rows[best_index]
    return Selection(
        rows=tuple(rows),
        criterion=criterion,
        best_index=best_index,
        model=Mixture(Gaussian(best.num_components, best.covariance_type, reg_covar)),
        params=chosen_params[(best.num_components, best.covariance_type)],
        restarts=restarts,
    )


def _choose(rows: list[SelectionRow], criterion: str) -> int:
    scores = np.array([getattr(r, criterion) for r in rows])
    usable = np.isfinite(scores) & ~np.array([r.degenerate for r in rows])
    if not usable.any():
        warnings.warn(
            "Every cell of the grid is degenerate or non-finite; the chosen model is unreliable. "
            "Try fewer components, a larger reg_covar, or scaling the data.",
            UserWarning,
            stacklevel=3,
        )
        usable = np.isfinite(scores) if np.isfinite(scores).any() else np.ones_like(usable)
    return int(np.argmin(np.where(usable, scores, np.inf)))


def _progress(items: list[str], enabled: bool) -> Iterable[str]:
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc="covariance types", unit="type", leave=False)


__all__ = [
    "CRITERIA",
    "Selection",
    "SelectionRow",
    "aic",
    "bic",
    "icl",
    "log_likelihood",
    "num_parameters",
    "select",
]
