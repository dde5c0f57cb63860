"""Exact EM with missing values: NaN entries are marginalised, never imputed before fitting.

:class:`MissingValues` wraps a component family so that its data may hold NaN. A row's density is
the marginal density of its observed entries, so the objective is the observed-data
log-likelihood and EM still never decreases it.

* Gaussian components (every covariance type): the E-step evaluates the observed sub-vector's
  Gaussian, ``N(x_o; mu_o, S_oo)``, by a Cholesky factor of the covariance with the missing rows and
  columns replaced by the identity and the missing residuals set to zero (its determinant and
  quadratic form are exactly those of ``S_oo``). The statistics are the classic ones for
  incomplete data (Dempster, Laird and Rubin, 1977): the missing coordinates are replaced by their
  conditional means ``E[x_m | x_o, k] = mu_m + S_mo S_oo^-1 (x_o - mu_o)`` and the conditional
  covariance ``S_mm - S_mo S_oo^-1 S_om`` is added to the second moments, so the family's own
  M-step is the exact maximiser of Q.
* Families whose density is a product over the features (Bernoulli, Poisson, exponential and any
  family that sets ``factorised_features = True``): a missing feature contributes nothing to its
  row's likelihood and nothing to that feature's statistics. The family is run as D one-feature
  families side by side (``vmap`` over the feature axis, axis 1 of every parameter leaf), so its own
  densities and M-step are reused unchanged.
* Categorical components: a missing code becomes -1, whose one-hot vector is zero, so it adds
  nothing to the likelihood or to the level counts.

The statistics stay additive, so chunking, restarts and sharding work as for complete data. With no
NaN at all, the fit equals the plain family's fit.

Example:
    >>> import jax, jax.numpy as jnp, jaxem
    >>> from jaxem.missing import MissingValues
    >>> x = jax.random.normal(jax.random.key(0), (200, 3))
    >>> x = x.at[::4, 1].set(jnp.nan)  # a quarter of column 1 missing
    >>> model = jaxem.Mixture(MissingValues(jaxem.Gaussian(2)))
    >>> result = jaxem.fit(jaxem.em(model), jax.random.key(1), x)
    >>> bool(jnp.isfinite(result.log_likelihood))
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxem.core.inputs import check_missing
from jaxem.core.mixture import Mixture, MixtureParams
from jaxem.core.model import Components, ConjugateComponents, WrappedComponents
from jaxem.core.program_cache import cached_jit
from jaxem.core.rows import default_chunk_size, reduce_chunks
from jaxem.models.bernoulli import Bernoulli
from jaxem.models.categorical import Categorical
from jaxem.models.exponential import Exponential
from jaxem.models.gaussian import Gaussian, GaussianParams, GaussianStats
from jaxem.models.poisson import Poisson

Array = jax.Array

MISSING_OPTIONS = ("error", "marginalize")

# Per-row intermediates of the full and tied Gaussians are K x D x D: rows are processed in
# batches of at most this many elements, whatever the chunk size.
ROW_BATCH_ELEMENTS = 1 << 20

# The mean of each feature under each component, [K, D], for imputation.
FEATURE_MEANS = {
    Bernoulli: lambda params: params.probs,
    Poisson: lambda params: params.rates,
    Exponential: lambda params: 1.0 / params.rates,
}


def observed_mask(x: Array) -> Array:
    """True where ``x`` holds a value, False where it is NaN."""
    return ~jnp.isnan(x)


def fill_column_means(x: Array, row_weights: Array | None = None) -> Array:
    """``x`` with each NaN replaced by the (weighted) mean of the observed values of its column.

    Used for the first parameters only; the fit itself never imputes. A copy is returned.

    Example:
        >>> import jax.numpy as jnp
        >>> fill_column_means(jnp.array([[1.0, jnp.nan], [3.0, 4.0]])).tolist()
        [[1.0, 4.0], [3.0, 4.0]]
    """
    observed = observed_mask(x)

    def sums(xc: Array, wc: Array | None, _: Array) -> tuple[Array, Array]:
        oc = observed_mask(xc)
        w = jnp.ones(xc.shape[:1], xc.dtype) if wc is None else wc
        counts = jnp.where(oc, w[:, None], 0)
        return jnp.sum(jnp.where(oc, xc, 0) * counts, axis=0), jnp.sum(counts, axis=0)

    total, count = reduce_chunks(sums, x, row_weights, default_chunk_size(x.shape[0], x.shape[1]))
    return jnp.where(observed, x, total / jnp.where(count > 0, count, 1))


def _first_observed(array: np.ndarray) -> np.ndarray:
    """``array`` with each NaN replaced by the first observed value of its column (a value the
    family accepts, so its own data check can run on the observed entries)."""
    missing = np.isnan(array)
    first = np.argmax(~missing, axis=0)
    fill = array[first, np.arange(array.shape[1])]
    return np.where(missing, np.where(np.isnan(fill), 0, fill)[None, :], array)


# The per-row factorisations below are written with jnp operations rather than LAPACK calls: two
# batched LAPACK Cholesky kernels that XLA's CPU runtime schedules concurrently (the E-step's
# densities and statistics) can wait on each other's thread pool forever.


def cholesky_lower(a: Array) -> Array:
    """Lower Cholesky factor of each symmetric positive definite ``[..., D, D]`` matrix, column by
    column."""
    d = a.shape[-1]
    index = jnp.arange(d)

    def column(j: Array, lower: Array) -> Array:
        row = lower[..., j, :]  # entries before j are set, the others still 0
        pivot = jnp.sqrt(a[..., j, j] - jnp.sum(row * row, axis=-1))
        below = (a[..., :, j] - jnp.einsum("...ik,...k->...i", lower, row)) / pivot[..., None]
        new = jnp.where(index > j, below, jnp.where(index == j, pivot[..., None], 0))
        return lower.at[..., :, j].set(new)

    return lax.fori_loop(0, d, column, jnp.zeros_like(a))


def solve_lower(lower: Array, b: Array, transpose: bool = False) -> Array:
    """``L^-1 b`` (or ``L^-T b`` with ``transpose``) for lower-triangular ``L`` ``[..., D, D]`` and
    ``b`` ``[..., D, M]``, by substitution."""
    d = lower.shape[-1]
    matrix = jnp.swapaxes(lower, -1, -2) if transpose else lower

    def step(i: Array, y: Array) -> Array:
        row = i if not transpose else d - 1 - i
        done = jnp.einsum("...k,...km->...m", matrix[..., row, :], y)
        value = (b[..., row, :] - done) / matrix[..., row, row][..., None]
        return y.at[..., row, :].set(value)

    shape = jnp.broadcast_shapes(matrix.shape[:-2], b.shape[:-2]) + b.shape[-2:]
    return lax.fori_loop(0, d, step, jnp.zeros(shape, b.dtype))


def gaussian_covariances(params: GaussianParams) -> Array:
    """Covariances ``(U U^T)^-1 = U^-T U^-1`` from the precision Cholesky factors ``U``."""
    u = params.precision_cholesky
    eye = jnp.broadcast_to(jnp.eye(u.shape[-1], dtype=u.dtype), u.shape)
    # U is upper triangular, so U^T is lower: V = U^-T solves U^T V = I.
    v = solve_lower(jnp.swapaxes(u, -1, -2), eye)
    return v @ jnp.swapaxes(v, -1, -2)


def is_factorised(components: Components) -> bool:
    """Whether a family's density is a product over the features with the feature on axis 1 of
    every parameter leaf (the built-in Bernoulli, Poisson and exponential families, or a family
    that sets ``factorised_features = True``)."""
    builtin = isinstance(components, (Bernoulli, Poisson, Exponential))
    return builtin or bool(getattr(components, "factorised_features", False))


@dataclass(frozen=True)
class MissingValues(WrappedComponents, ConjugateComponents):
    """A component family fitted on data whose missing entries are NaN.

    ``MissingValues(family)`` is a :class:`MissingGaussian`, :class:`MissingCodes` (categorical)
    or :class:`MissingFactorised` (per-feature families) depending on the family; every attribute
    the wrapper does not define (``covariances``, ``sample``, ``num_free_parameters``, ...) is the
    family's, and the parameters are the family's own. Rows must have at least one observed value.

    Args:
        components: the family, e.g. ``jaxem.Gaussian(3, covariance_type="diag")``.

    Example:
        >>> import jaxem
        >>> type(MissingValues(jaxem.Gaussian(2))).__name__
        'MissingGaussian'
    """

    components: ConjugateComponents
    handles_missing: ClassVar[bool] = True

    def __new__(cls, components: Any = None) -> MissingValues:
        if cls is MissingValues:
            if isinstance(components, Gaussian):
                cls = MissingGaussian
            elif isinstance(components, Categorical):
                cls = MissingCodes
            elif isinstance(components, ConjugateComponents) and is_factorised(components):
                cls = MissingFactorised
        return super().__new__(cls)

    def __post_init__(self) -> None:
        if isinstance(self.components, MissingValues):
            raise ValueError("The components already handle missing values: wrap the family once.")
        if type(self) is MissingValues:
            name = type(self.components).__name__
            raise ValueError(
                f"Missing values cannot be marginalised for {name} components: supported are "
                "Gaussian, Categorical, Bernoulli, Poisson and Exponential, and closed-form "
                "families whose density is a product over the features (set "
                "factorised_features = True on them). Impute or drop the missing entries instead."
            )

    def m_step(self, params: Any, stats: Any) -> Any:
        return self.components.m_step(params, stats)

    def suff_stats(self, params: Any, x_one: Array, resp: Array) -> Any:
        return self.chunk_stats(params, x_one[None], resp[None])

    def log_prob(self, params: Any, x_one: Array) -> Array:
        return self.log_prob_chunk(params, x_one[None])[0]

    def init(self, key: Array, x: Array, row_weights: Array | None) -> Any:
        """The family's first parameters, estimated on the data with column means filled in."""
        return self.components.init(key, fill_column_means(x, row_weights), row_weights)

    def check_data(self, x: Any) -> None:
        """The family's own data check (if it has one) on the observed entries."""
        array = np.asarray(x, dtype=float)
        check = getattr(self.components, "check_data", None)
        if check is not None:
            check(_first_observed(array))

    def impute_chunk(self, params: Any, x: Array, resp: Array) -> Array:
        """``x`` with each NaN replaced by its responsibility-weighted conditional mean."""
        raise NotImplementedError


@dataclass(frozen=True)
class MissingGaussian(MissingValues):
    """Gaussian components with NaN entries marginalised (see the module docstring)."""

    def _row_batch(self, num_features: int) -> int:
        return max(1, ROW_BATCH_ELEMENTS // (self.num_components * num_features * num_features))

    def _scales(self, params: GaussianParams) -> Array:
        """``1 / std`` per component and coordinate, ``[K, D]`` (diagonal and spherical)."""
        u = params.precision_cholesky
        return (
            u
            if self.covariance_type == "diag"
            else jnp.broadcast_to(u[:, None], params.means.shape)
        )

    def _conditional_row(
        self, params: GaussianParams, cov: Array, x_one: Array, observed_one: Array, moments: bool
    ) -> Any:
        """One row under every component (full or tied covariance).

        Returns the observed entries' log density ``[K]``; with ``moments`` also the conditional
        means ``[K, D]`` (the observed entries themselves where observed) and the conditional
        covariances (``[K, D, D]``, or ``[D, D]`` for tied), zero outside the missing block.
        """
        tied = self.covariance_type == "tied"
        d = x_one.shape[-1]
        both = observed_one[:, None] & observed_one[None, :]
        # Identity on the missing block and zero coupling: det and quadratic form are S_oo's.
        lower = cholesky_lower(jnp.where(both, cov, jnp.eye(d, dtype=cov.dtype)))
        z = jnp.where(observed_one, x_one - params.means, 0)

        def solve(b: Array, transpose: bool) -> Array:
            """``L^-1 b`` (or ``L^-T b``) for every component's ``b`` ``[K, D]``."""
            if tied:
                return solve_lower(lower, b.T, transpose).T
            return solve_lower(lower, b[..., None], transpose)[..., 0]

        y = solve(z, False)
        log_det = jnp.sum(jnp.log(jnp.diagonal(lower, axis1=-2, axis2=-1)), axis=-1)
        num_observed = jnp.sum(observed_one).astype(x_one.dtype)
        log_prob = -0.5 * (num_observed * math.log(2 * math.pi) + jnp.sum(y * y, axis=-1)) - log_det
        if not moments:
            return log_prob
        w = solve(y, True)  # S~^-1 z: zero on the missing coordinates
        shift = w @ cov if tied else jnp.einsum("kde,ke->kd", cov, w)
        x_hat = jnp.where(observed_one, x_one, params.means + shift)
        observed_rows = jnp.where(observed_one[:, None], cov, 0)  # S_o. (the others zero)
        g = solve_lower(lower, observed_rows)
        cond_cov = cov - jnp.swapaxes(g, -1, -2) @ g
        missing_block = ~observed_one[:, None] & ~observed_one[None, :]
        return log_prob, x_hat, jnp.where(missing_block, cond_cov, 0)

    def _marginal_log_prob(self, params: GaussianParams, x0: Array, observed: Array) -> Array:
        if self.covariance_type in ("diag", "spherical"):
            u = self._scales(params)
            y = (x0[:, None, :] - params.means[None]) * u[None]
            per = -0.5 * math.log(2 * math.pi) + jnp.log(u)[None] - 0.5 * y * y
            return jnp.sum(jnp.where(observed[:, None, :], per, 0), axis=-1)
        cov = gaussian_covariances(params)
        row = partial(self._conditional_row, params, cov, moments=False)
        batch = self._row_batch(x0.shape[-1])
        return _map_rows(lambda args: row(*args), (x0, observed), batch)

    def log_prob_chunk(self, params: GaussianParams, x: Array) -> Array:
        observed = observed_mask(x)
        x0 = jnp.where(observed, x, 0)
        complete = self.components.log_prob_chunk(params, x0)
        marginal = self._marginal_log_prob(params, x0, observed)
        # Complete rows take the family's own arithmetic, so a fit without NaN is the plain fit.
        return jnp.where(jnp.all(observed, axis=-1)[:, None], complete, marginal)

    def _diagonal_moments(self, params: GaussianParams, x0: Array, observed: Array) -> Any:
        """Conditional means ``[C, K, D]`` and variances ``[C, K, D]`` (diagonal, spherical)."""
        u = self._scales(params)
        x_hat = jnp.where(observed[:, None, :], x0[:, None, :], params.means[None])
        cond_var = jnp.where(observed[:, None, :], 0, 1.0 / (u * u)[None])
        return x_hat, cond_var

    def chunk_stats(self, params: GaussianParams, x: Array, resp: Array) -> GaussianStats:
        observed = observed_mask(x)
        x0 = jnp.where(observed, x, 0)
        if self.covariance_type in ("diag", "spherical"):
            x_hat, cond_var = self._diagonal_moments(params, x0, observed)
            z = x_hat - params.means[None]
            rz = resp[:, :, None] * z
            second = jnp.sum(rz * z, axis=0) + jnp.sum(resp[:, :, None] * cond_var, axis=0)
            return GaussianStats(jnp.sum(resp, axis=0), jnp.sum(rz, axis=0), second)

        cov = gaussian_covariances(params)
        row = partial(self._conditional_row, params, cov, moments=True)
        cov_term = "ck,cde->kde" if self.covariance_type == "tied" else "ck,ckde->kde"

        def batch(data: tuple[Array, Array, Array], _w: Any, _rows: Array) -> GaussianStats:
            xb, ob, rb = data
            _, x_hat, cond_cov = jax.vmap(row)(xb, ob)
            z = x_hat - params.means[None]
            rz = rb[:, :, None] * z
            second = jnp.einsum("ckd,cke->kde", rz, z) + jnp.einsum(cov_term, rb, cond_cov)
            return GaussianStats(jnp.sum(rb, axis=0), jnp.sum(rz, axis=0), second)

        return reduce_chunks(batch, (x0, observed, resp), None, self._row_batch(x.shape[-1]))

    def conditional_means(self, params: GaussianParams, x: Array) -> Array:
        """``E[x | x_o, k]`` per row and component, ``[C, K, D]`` (observed entries unchanged)."""
        observed = observed_mask(x)
        x0 = jnp.where(observed, x, 0)
        if self.covariance_type in ("diag", "spherical"):
            return self._diagonal_moments(params, x0, observed)[0]
        cov = gaussian_covariances(params)
        row = partial(self._conditional_row, params, cov, moments=True)
        batch = self._row_batch(x.shape[-1])
        return _map_rows(lambda args: row(*args)[1], (x0, observed), batch)

    def impute_chunk(self, params: GaussianParams, x: Array, resp: Array) -> Array:
        x_hat = jnp.einsum("ck,ckd->cd", resp, self.conditional_means(params, x))
        return jnp.where(observed_mask(x), x, x_hat)


@dataclass(frozen=True)
class MissingCodes(MissingValues):
    """Categorical components with NaN codes: a missing code is -1, whose one-hot vector is zero."""

    @staticmethod
    def _codes(x: Array) -> Array:
        return jnp.where(jnp.isnan(x), -1, x)

    def log_prob_chunk(self, params: Any, x: Array) -> Array:
        return self.components.log_prob_chunk(params, self._codes(x))

    def chunk_stats(self, params: Any, x: Array, resp: Array) -> Any:
        return self.components.chunk_stats(params, self._codes(x), resp)

    def init(self, key: Array, x: Array, row_weights: Array | None) -> Any:
        """The family's first parameters, with missing codes left out of its one-hot features."""
        return self.components.init(key, self._codes(x), row_weights)

    def impute_chunk(self, params: Any, x: Array, resp: Array) -> Array:
        """The most probable level of each missing code under the row's posterior predictive."""
        predictive = jnp.einsum("ck,kdl->cdl", resp, params.probs)
        mode = jnp.argmax(predictive, axis=-1).astype(x.dtype)
        return jnp.where(observed_mask(x), x, mode)


def _map_rows(fn: Any, args: Any, batch_size: int) -> Any:
    """``lax.map(fn, args, batch_size=...)``, or one ``vmap`` when every row fits in one batch."""
    if jax.tree.leaves(args)[0].shape[0] <= batch_size:
        return jax.vmap(fn)(args)
    return lax.map(fn, args, batch_size=batch_size)


def _feature_view(tree: Any) -> Any:
    """One feature's parameters (leaves ``[K, ...]``) as a one-feature family's ``[K, 1, ...]``."""
    return jax.tree.map(lambda a: a[:, None], tree)


@dataclass(frozen=True)
class MissingFactorised(MissingValues):
    """A per-feature family with NaN entries: run as D one-feature families side by side.

    The statistics carry a leading feature axis (the family's statistics of each feature, counted
    over the rows where that feature is observed); the M-step is the family's, per feature.
    """

    def _per_feature_log_prob(self, params: Any, x0: Array) -> Array:
        """Log density of each feature, ``[C, K, D]``."""

        def one(p: Any, column: Array) -> Array:
            return self.components.log_prob_chunk(_feature_view(p), column[:, None])

        return jax.vmap(one, in_axes=(1, 1), out_axes=2)(params, x0)

    def log_prob_chunk(self, params: Any, x: Array) -> Array:
        observed = observed_mask(x)
        x0 = jnp.where(observed, x, 0)
        per_feature = self._per_feature_log_prob(params, x0)
        marginal = jnp.sum(jnp.where(observed[:, None, :], per_feature, 0), axis=-1)
        complete = self.components.log_prob_chunk(params, x0)
        return jnp.where(jnp.all(observed, axis=-1)[:, None], complete, marginal)

    def chunk_stats(self, params: Any, x: Array, resp: Array) -> Any:
        observed = observed_mask(x)
        x0 = jnp.where(observed, x, 0)

        def one(p: Any, column: Array, seen: Array) -> Any:
            kept = jnp.where(seen[:, None], resp, 0)
            return self.components.chunk_stats(_feature_view(p), column[:, None], kept)

        return jax.vmap(one, in_axes=(1, 1, 1))(params, x0, observed)

    def m_step(self, params: Any, stats: Any) -> Any:
        def one(p: Any, s: Any) -> Any:
            new = self.components.m_step(_feature_view(p), s)
            return jax.tree.map(lambda a: a[:, 0], new)

        return jax.vmap(one, in_axes=(1, 0), out_axes=1)(params, stats)

    def impute_chunk(self, params: Any, x: Array, resp: Array) -> Array:
        """Each missing entry's mean under the row's posterior (a probability for Bernoulli)."""
        mean = FEATURE_MEANS.get(type(self.components), getattr(self.components, "mean", None))
        if mean is None:
            raise NotImplementedError(
                f"{type(self.components).__name__} has no mean(params) method returning each "
                "feature's mean per component ([K, D]): add one to impute with it."
            )
        return jnp.where(observed_mask(x), x, resp @ mean(params))


def marginalize_missing(model: Mixture) -> Mixture:
    """The same mixture with its components wrapped in :class:`MissingValues`.

    Example:
        >>> import jaxem
        >>> marginalize_missing(jaxem.Mixture(jaxem.Gaussian(2))).handles_missing
        True
    """
    if getattr(model.components, "handles_missing", False):
        return model
    return Mixture(MissingValues(model.components), model.weight_concentration)


@partial(cached_jit, static_argnames=("model", "batch_size"))
def _impute(model: Mixture, params: MixtureParams, x: Array, batch_size: int) -> Array:
    def rows(xc: Array) -> Array:
        log_resp, _ = model.log_resp(params, xc)
        return model.components.impute_chunk(params.components, xc, jnp.exp(log_resp))

    return _map_rows(lambda x_one: rows(x_one[None])[0], x, batch_size)


def impute(model: Mixture, params: MixtureParams, x: Any, batch_size: int | None = None) -> Array:
    """``x`` with every NaN replaced by its conditional mean given the row's observed values.

    The conditional means of each component are weighted by the row's responsibilities (computed
    from the observed values alone). For Gaussian components this is ``E[x_m | x_o]`` under the
    mixture; categorical codes get their most probable level. ``x`` itself is not modified.

    Args:
        model: a mixture (its components are wrapped in :class:`MissingValues` if they are not).
        params: the mixture's parameters.
        x: data ``[N, D]`` with NaN for missing entries.
        batch_size: rows processed at once (``None``: chosen from the sizes).

    Example:
        >>> import jax, jax.numpy as jnp, jaxem
        >>> model = jaxem.Mixture(jaxem.Gaussian(1))
        >>> params = jaxem.MixtureParams(
        ...     jnp.ones(1), jaxem.GaussianParams(jnp.array([[0.0, 1.0]]), jnp.eye(2)[None]))
        >>> impute(model, params, jnp.array([[5.0, jnp.nan]])).tolist()
        [[5.0, 1.0]]
    """
    model = marginalize_missing(model)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (rows, features), got shape {x.shape}.")
    check_missing(np.asarray(x), "x", check_columns=False)
    size = batch_size or default_chunk_size(x.shape[0], x.shape[1] * model.num_components)
    return _impute(model, params, x, int(size))
