"""Multivariate Gaussian components with full, tied, diagonal or spherical covariances.

Parameters are the means and the Cholesky factor of the precision, as in scikit-learn: for ``full``
an upper-triangular ``U_k`` with ``precision_k = U_k U_k^T`` (shape ``[K, D, D]``), for ``tied`` one
such ``[D, D]`` factor, for ``diag`` ``1 / std`` per coordinate (``[K, D]``), for ``spherical``
``1 / std`` per component (``[K]``).

Statistics are accumulated about the previous means, per component, (``sum r (x - c)(x - c)^T``
with ``c`` the old mean) and corrected in the M-step, so float32 keeps its precision on data far
from the origin. Every product with the data is taken about the chunk's own mean, which depends on
no parameter: the second moment of a chunk is one matrix product, and under ``vmap`` over restarts
the data stay an unbatched operand, so all lanes share one large product. Where float64 full
covariances fit ``PREPARED_ELEMENTS``, a fit computes the features once, about the data's mean
(:meth:`Gaussian.prepare_rows`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.linalg import solve_triangular

from jaxem import init as initializers
from jaxem.core.constraints import Positive, Real, UpperCholesky
from jaxem.core.model import ConjugateComponents, NoConditionalMStep
from jaxem.core.rows import default_chunk_size, reduce_chunks

Array = jax.Array

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
# The most feature values a fit computes once and keeps (128 MiB in float64). Float64 full
# covariance otherwise rebuilds its D (D + 1) / 2 + D quadratic features from every chunk at every
# iteration, about half of the iteration's time on CPU. Measured per EM iteration on the 2-core CPU,
# same process, min (median) of 8-10 interleaved runs: (10^5, 16, 16) 35.4 (44.0) ms against 43.4
# (58.7), (2 10^4, 32, 16) 39.8 (50.8) against 65.9 (77.6). Larger data keep the per-chunk features,
# so memory still does not grow with N: (10^6, 8, 8) would hold 44 million values.
PREPARED_ELEMENTS = 1 << 24
INIT_METHODS = ("kmeans++", "kmeans", "random_resp", "random_rows")


class GaussianParams(NamedTuple):
    """Means ``[K, D]`` and the precision Cholesky factor (shape by covariance type)."""

    means: Array
    precision_cholesky: Array


class GaussianStats(NamedTuple):
    """Sums over data of ``r``, ``r (x - c)`` and ``r (x - c)(x - c)^T`` (or its diagonal).

    ``c`` is the mean the statistics were accumulated about (the previous means).
    """

    counts: Array
    first: Array
    second: Array


class ExpandedRows(NamedTuple):
    """Data as its quadratic features, computed once (see :meth:`Gaussian.prepare_rows`).

    ``shift`` repeats, on every row, the point the features are taken about, so that both fields
    are sliced into chunks together.
    """

    features: Array
    shift: Array


def upper_cholesky_of_inverse(cov: Array) -> Array:
    """The upper-triangular ``U`` with ``U U^T = cov^-1`` (batched over leading axes): the
    precision Cholesky factor of covariances ``cov``, in scikit-learn's convention.

    Example:
        >>> import jax.numpy as jnp
        >>> upper_cholesky_of_inverse(jnp.array([[4.0, 0.0], [0.0, 1.0]])).tolist()
        [[0.5, 0.0], [0.0, 1.0]]
    """
    lower = jnp.linalg.cholesky(cov)
    eye = jnp.broadcast_to(jnp.eye(cov.shape[-1], dtype=cov.dtype), cov.shape)
    return jnp.swapaxes(solve_triangular(lower, eye, lower=True), -1, -2)


def _chunk_shift(x: Array) -> Array:
    """The mean of a chunk's finite rows: a centre close to the data that depends on no parameter.

    Quadratic forms are evaluated about it (x - shift is then small and exact in float32 far from
    the origin), and under ``vmap`` over restarts it is shared by every lane, so the products with
    the data stay single unbatched matrix products. Non-finite rows (padding with weight 0) are
    left out so that they cannot spread to the other rows of the chunk.
    """
    finite = jnp.all(jnp.isfinite(x), axis=-1, keepdims=True)
    count = jnp.maximum(jnp.sum(finite), 1).astype(x.dtype)
    return jnp.sum(jnp.where(finite, x, 0), axis=0) / count


def _features(moved: Array, full: bool) -> Array:
    """Quadratic and linear features of ``moved = x - shift`` ``[C, F]``.

    Full: the upper triangle of ``moved moved^T`` row by row (``np.triu_indices`` order), then
    ``moved`` (``F = D (D + 1) / 2 + D``); diagonal: ``moved^2`` then ``moved`` (``F = 2 D``). The
    triangle is built from contiguous slices, not gathered: a gather of its columns costs more than
    the halved product saves, the slices fuse into one pass.
    """
    if full:
        d = moved.shape[-1]
        quadratic = [moved[:, i : i + 1] * moved[:, i:] for i in range(d)]
        return jnp.concatenate([*quadratic, moved], axis=-1)
    return jnp.concatenate([moved * moved, moved], axis=-1)


def _triangle_positions(d: int) -> np.ndarray:
    """``[D, D]`` positions of entry ``(i, j)`` in the row-major upper triangle (symmetric)."""
    rows, cols = np.triu_indices(d)
    positions = np.zeros((d, d), dtype=np.int32)
    positions[rows, cols] = np.arange(rows.size)
    positions[cols, rows] = np.arange(rows.size)
    return positions


@dataclass(frozen=True)
class Gaussian(ConjugateComponents):
    """K multivariate Gaussians.

    Args:
        num_components: K.
        covariance_type: ``"full"``, ``"tied"``, ``"diag"`` or ``"spherical"``.
        reg_covar: added to the diagonal of every covariance (keeps it positive definite).
        init_method: ``"kmeans++"`` (default), ``"kmeans"``, ``"random_resp"`` or ``"random_rows"``:
            centres (or random responsibilities) from which the first parameters are estimated.
        prior: a conjugate :class:`~jaxem.models.gaussian_prior.GaussianPrior` for MAP-EM (see
            ``default_prior``); the M-step stays closed form and ``reg_covar`` is not added.

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (300, 2))
        >>> model = jaxem.Mixture(jaxem.Gaussian(3, covariance_type="tied"))
        >>> jaxem.fit(jaxem.em(model), jax.random.key(0), x).params.components.means.shape
        (3, 2)
    """

    num_components: int
    covariance_type: str = "full"
    reg_covar: float = 1e-6
    init_method: str = "kmeans++"
    prior: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.num_components, int) or self.num_components < 1:
            raise ValueError(
                f"num_components must be a positive integer, got {self.num_components!r}."
            )
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"Unknown covariance_type {self.covariance_type!r}: "
                f"use one of {', '.join(COVARIANCE_TYPES)}."
            )
        if not self.reg_covar >= 0:
            raise ValueError(f"reg_covar must be non-negative, got {self.reg_covar!r}.")
        if self.init_method not in INIT_METHODS:
            raise ValueError(
                f"Unknown init_method {self.init_method!r}: use one of {', '.join(INIT_METHODS)}."
            )

    # ---- densities -------------------------------------------------------------------------------

    def _whitened(self, params: GaussianParams, moved: Array, shift: Array) -> Array:
        """``y = (x - mean_k) U_k`` ``[C, K, D]`` from ``moved = x - shift``: ``|y|^2`` is the
        Mahalanobis distance.

        For full covariances this is one ``[C, D] x [D, K D]`` matrix product minus a per-component
        constant. ``shift`` does not depend on the parameters, so under ``vmap`` over restarts the
        data operand is shared and the product is one large matrix product over every lane.
        """
        means, u = params.means, params.precision_cholesky
        k, d = means.shape
        if self.covariance_type == "full":
            stacked = jnp.transpose(u, (1, 0, 2)).reshape(d, k * d)
            offsets = jnp.einsum("kd,kde->ke", means - shift, u)
            return (moved @ stacked).reshape(-1, k, d) - offsets
        if self.covariance_type == "tied":
            return (moved @ u)[:, None, :] - (means - shift) @ u
        z = moved[:, None, :] - (means - shift)[None, :, :]
        return z * (u[None] if self.covariance_type == "diag" else u[None, :, None])

    def _expanded(self, dtype: Any) -> bool:
        """Whether to evaluate the quadratic forms by their expansion about the chunk's shift.

        The expansion turns the E-step and the statistics into products with data features that
        every restart shares (under ``vmap`` only the small coefficient matrices are per lane), but
        it cancels terms of size ``|x - shift|^2 / variance``: its error is ``eps`` times that
        ratio. In float64 that is far below anything that matters, so full covariances expand
        there, and the statistics reuse the E-step's features. Float32 full and tied forms (and
        tied statistics) keep the difference-then-product form, whose error is only linear in that
        ratio, still one product with the shared data. Diagonal families always expand: their
        alternative is elementwise work over ``[C, K, D]``, slower than scikit-learn (which expands
        about the origin).
        """
        if self.covariance_type in ("diag", "spherical"):
            return True
        if self.covariance_type == "tied":
            return False  # one shared [C, D] x [D, D] product is cheaper than features
        return jnp.dtype(dtype) == jnp.float64

    def point_width(self, num_features: int, dtype: Any) -> int:
        """Values per data point in a chunk's largest intermediates (chunk sizing): the features
        and the responsibilities where the quadratic forms are expanded, else the ``[C, K, D]``
        differences to every component."""
        k, d = self.num_components, num_features
        if not self._expanded(dtype):
            return k * d
        return (d * (d + 1) // 2 + d if self._full_features else 2 * d) + k

    def prepare_rows(self, x: Array) -> Array | ExpandedRows:
        """The data a fit iterates over: the quadratic features of ``x`` about its mean, computed
        once, where float64 full covariances expand them and they fit ``PREPARED_ELEMENTS``;
        otherwise ``x`` itself (the features are then built chunk by chunk).

        Example:
            >>> import jax.numpy as jnp, jaxem
            >>> x = jnp.ones((100, 3), jnp.float32)
            >>> jaxem.Gaussian(2).prepare_rows(x) is x  # float32 keeps the difference form
            True
        """
        if self.covariance_type != "full" or not self._expanded(x.dtype):
            return x
        n, d = x.shape
        if n * (d * (d + 1) // 2 + d) > PREPARED_ELEMENTS:
            return x
        shift = _chunk_shift(x)
        features = _features(x - shift, full=True)
        return ExpandedRows(features, jnp.broadcast_to(shift, x.shape))

    def log_det_precision_cholesky(self, params: GaussianParams) -> Array:
        """``log det U_k`` per component, shape ``[K]``."""
        u = params.precision_cholesky
        k, d = params.means.shape
        if self.covariance_type == "full":
            return jnp.sum(jnp.log(jnp.diagonal(u, axis1=-2, axis2=-1)), axis=-1)
        if self.covariance_type == "tied":
            return jnp.broadcast_to(jnp.sum(jnp.log(jnp.diagonal(u))), (k,))
        if self.covariance_type == "diag":
            return jnp.sum(jnp.log(u), axis=-1)
        return d * jnp.log(u)

    def _chunk_terms(self, x: Array | ExpandedRows) -> tuple[Array, Array | None, Array | None]:
        """``(shift, x - shift, features)`` of a chunk: the features where the quadratic forms are
        expanded (else ``None``); prepared rows bring their shift and features, and no
        differences."""
        if isinstance(x, ExpandedRows):
            return x.shift[0], None, x.features
        shift = _chunk_shift(x)
        moved = x - shift
        if not self._expanded(x.dtype):
            return shift, moved, None
        return shift, moved, _features(moved, full=self._full_features)

    def log_prob_chunk(self, params: GaussianParams, x: Array | ExpandedRows) -> Array:
        d = params.means.shape[-1]
        log_det = self.log_det_precision_cholesky(params)
        constant = log_det - 0.5 * d * math.log(2 * math.pi)
        shift, moved, features = self._chunk_terms(x)
        if features is None:
            y = self._whitened(params, moved, shift)
            return constant - 0.5 * jnp.sum(y * y, axis=-1)
        # -|x - mu|^2_P / 2 = phi(x - s) . w_k + c_k: one [C, F] x [F, K] product.
        coefficients, offset = self._expansion_coefficients(params, shift)
        return features @ coefficients.T + (constant + offset)

    @property
    def _full_features(self) -> bool:
        return self.covariance_type in ("full", "tied")

    def _expansion_coefficients(self, params: GaussianParams, shift: Array) -> tuple[Array, Array]:
        """``w_k [K, F]`` and ``c_k [K]`` with ``-|x - mu_k|^2_P / 2 = phi(x - s) . w_k + c_k``."""
        means, u = params.means, params.precision_cholesky
        k, d = means.shape
        centred = means - shift
        if self._full_features:
            u = jnp.broadcast_to(u, (k, d, d))
            projected = jnp.einsum("kd,kde->ke", centred, u)
            # phi holds each off-diagonal product once, so its coefficient is the whole -P_ij.
            precision = u @ jnp.swapaxes(u, -1, -2)
            rows, cols = np.triu_indices(d)
            quadratic = jnp.where(rows == cols, -0.5, -1.0) * precision[:, rows, cols]
            linear = jnp.einsum("kde,ke->kd", u, projected)
            offset = -0.5 * jnp.sum(projected * projected, axis=-1)
        else:
            precision = u * u if self.covariance_type == "diag" else (u * u)[:, None]
            precision = jnp.broadcast_to(precision, (k, d))
            quadratic = -0.5 * precision
            linear = precision * centred
            offset = -0.5 * jnp.sum(linear * centred, axis=-1)
        return jnp.concatenate([quadratic, linear], axis=-1), offset

    def log_prob(self, params: GaussianParams, x_one: Array) -> Array:
        return self.log_prob_chunk(params, x_one[None])[0]

    # ---- statistics and M-step -------------------------------------------------------------------

    def chunk_stats(
        self, params: GaussianParams, x: Array | ExpandedRows, resp: Array
    ) -> GaussianStats:
        k, d = params.means.shape
        counts = jnp.sum(resp, axis=0)
        shift, moved, features = self._chunk_terms(x)
        centred = params.means - shift
        if features is not None:
            # Moments about the shift as one [K, C] x [C, F] product with the shared features, then
            # moved to each component's old mean c: with a = c - s and F = sum r (x - s),
            # sum r (x-c)(x-c)^T = S - a F^T - F a^T + N a a^T (diagonal: S - 2 a F + N a^2).
            moments = resp.T @ features
            first_about_shift = moments[:, -d:]
            first = first_about_shift - counts[:, None] * centred
            if self._full_features:
                outer = centred[:, :, None] * first_about_shift[:, None, :]
                second = (
                    moments[:, _triangle_positions(d)]
                    - outer
                    - jnp.swapaxes(outer, -1, -2)
                    + counts[:, None, None] * centred[:, :, None] * centred[:, None, :]
                )
            else:
                second = (
                    moments[:, :d]
                    - 2 * centred * first_about_shift
                    + counts[:, None] * centred * centred
                )
            return GaussianStats(counts, first, second)
        # sum r z z^T about each component's old mean (z = x - mean_k = moved - centred_k): one
        # [D + 1, C] x [C, K D] product of [moved, 1]^T with r z gives sum r z moved^T and
        # first = sum r z, and sum r z z^T = sum r z moved^T - first centred_k^T. The cancellation
        # is only linear in (spread of the means) / (component width). The barrier keeps the
        # transposed operand laid out row by row instead of folded into the product: contracting
        # over the leading axis of both operands ran 2x slower on CPU.
        rz = (resp[:, :, None] * (moved[:, None, :] - centred[None, :, :])).reshape(-1, k * d)
        augmented = jnp.concatenate([moved, jnp.ones_like(moved[:, :1])], axis=-1)
        products = lax.optimization_barrier(augmented.T) @ rz
        first = products[d].reshape(k, d)
        cross = jnp.transpose(products[:d].reshape(d, k, d), (1, 2, 0))
        second = cross - first[:, :, None] * centred[:, None, :]
        second = 0.5 * (second + jnp.swapaxes(second, -1, -2))
        return GaussianStats(counts, first, second)

    def suff_stats(self, params: GaussianParams, x_one: Array, resp: Array) -> GaussianStats:
        return self.chunk_stats(params, x_one[None], resp[None])

    def covariance_from_stats(self, means_old: Array, stats: GaussianStats) -> tuple[Array, Array]:
        """New means and covariances (``reg_covar`` added) from statistics about ``means_old``."""
        dtype = means_old.dtype
        # scikit-learn adds 10 eps to every count so that an empty component stays finite.
        counts = stats.counts + 10 * jnp.finfo(dtype).eps
        delta = stats.first / counts[:, None]
        means = means_old + delta
        d = means.shape[-1]
        reg = jnp.asarray(self.reg_covar, dtype)
        if self.covariance_type == "full":
            cov = stats.second / counts[:, None, None] - delta[:, :, None] * delta[:, None, :]
            cov = cov + reg * jnp.eye(d, dtype=dtype)
        elif self.covariance_type == "tied":
            centred = stats.second - counts[:, None, None] * delta[:, :, None] * delta[:, None, :]
            cov = jnp.sum(centred, axis=0) / jnp.sum(counts) + reg * jnp.eye(d, dtype=dtype)
        elif self.covariance_type == "diag":
            cov = stats.second / counts[:, None] - delta * delta + reg
        else:
            cov = jnp.mean(stats.second / counts[:, None] - delta * delta + reg, axis=-1)
        return means, cov

    def m_step(self, params: GaussianParams, stats: GaussianStats) -> GaussianParams:
        if self.prior is None:
            means, cov = self.covariance_from_stats(params.means, stats)
        else:
            means, cov = self.prior.m_step(self.covariance_type, params.means, stats)
        return GaussianParams(means, self.precision_cholesky_from_covariances(cov))

    def m_step_given(
        self, params: GaussianParams, stats: GaussianStats, frozen: GaussianParams
    ) -> GaussianParams:
        """The exact M-step with the blocks marked in ``frozen`` (bools) held.

        The statistics are accumulated about the previous means, so with the means held the
        covariances are re-estimated about them by dropping the first moment; the means' update
        does not depend on the covariances. Under a prior the MAP covariance depends on the MAP
        mean, so holding the means there has no closed form.
        """
        if frozen.means and self.prior is not None:
            raise NoConditionalMStep("Gaussian with a prior and frozen means")
        if frozen.means:
            stats = stats._replace(first=jnp.zeros_like(stats.first))
        new = self.m_step(params, stats)
        return GaussianParams(
            params.means if frozen.means else new.means,
            params.precision_cholesky if frozen.precision_cholesky else new.precision_cholesky,
        )

    def log_prior(self, params: GaussianParams) -> Array:
        if self.prior is None:
            return jnp.zeros((), params.means.dtype)
        return self.prior.log_prior(self.covariance_type, params.means, params.precision_cholesky)

    # ---- conversions -----------------------------------------------------------------------------

    def precision_cholesky_from_covariances(self, cov: Array) -> Array:
        if self.covariance_type in ("full", "tied"):
            return upper_cholesky_of_inverse(cov)
        return 1.0 / jnp.sqrt(cov)

    def covariances(self, params: GaussianParams) -> Array:
        """Covariances in scikit-learn's shapes for the covariance type."""
        u = params.precision_cholesky
        if self.covariance_type in ("full", "tied"):
            eye = jnp.broadcast_to(jnp.eye(u.shape[-1], dtype=u.dtype), u.shape)
            v = solve_triangular(u, eye, lower=False)
            return jnp.swapaxes(v, -1, -2) @ v
        return 1.0 / (u * u)

    def precisions(self, params: GaussianParams) -> Array:
        """Precision matrices (or diagonal precisions) in scikit-learn's shapes."""
        u = params.precision_cholesky
        if self.covariance_type in ("full", "tied"):
            return u @ jnp.swapaxes(u, -1, -2)
        return u * u

    def params_from_covariances(self, means: Array, covariances: Array) -> GaussianParams:
        return GaussianParams(means, self.precision_cholesky_from_covariances(covariances))

    def params_from_precisions(self, means: Array, precisions: Array) -> GaussianParams:
        """Parameters from precisions given as in scikit-learn's ``precisions_init``."""
        if self.covariance_type in ("full", "tied"):
            # P = U U^T with U upper: the lower Cholesky factor of the index-reversed P, reversed
            # back.
            flipped = jnp.flip(precisions, axis=(-2, -1))
            return GaussianParams(means, jnp.flip(jnp.linalg.cholesky(flipped), axis=(-2, -1)))
        return GaussianParams(means, jnp.sqrt(precisions))

    def sample(self, key: Array, params: GaussianParams, labels: Array) -> Array:
        """One draw from component ``labels[i]`` for each ``i``, shape ``[len(labels), D]``."""
        means = params.means[labels]
        noise = jax.random.normal(key, means.shape, means.dtype)
        u = params.precision_cholesky
        if self.covariance_type == "full":
            # mean + U^-T e has covariance U^-T U^-1 = (U U^T)^-1, the component's covariance.
            u_t = jnp.swapaxes(u[labels], -1, -2)
            return means + solve_triangular(u_t, noise[..., None], lower=True)[..., 0]
        if self.covariance_type == "tied":
            return means + solve_triangular(u.T, noise.T, lower=True).T
        if self.covariance_type == "diag":
            return means + noise / u[labels]
        return means + noise / u[labels][:, None]

    def constraints(self) -> GaussianParams:
        """Free means; a Cholesky factor with positive diagonal, or positive scales (gradient
        M-step)."""
        triangular = self.covariance_type in ("full", "tied")
        return GaussianParams(Real(), UpperCholesky() if triangular else Positive())

    def num_free_parameters(self, num_features: int) -> int:
        """Free parameters of the K components (means and covariances), without mixture weights."""
        k, d = self.num_components, num_features
        cov = {
            "full": k * d * (d + 1) // 2,
            "tied": d * (d + 1) // 2,
            "diag": k * d,
            "spherical": k,
        }
        return k * d + cov[self.covariance_type]

    def degenerate(self, params: GaussianParams, counts: Array) -> Array:
        """Per component: supported by fewer points than it needs, or a covariance at the floor.

        A full covariance needs ``D + 1`` points, the others 2 (a tied covariance is shared, so only
        the floor is checked); "at the floor" means the smallest variance is within 1.5x of
        ``reg_covar``, i.e. the data gave it (almost) none of its own.
        """
        k, d = params.means.shape
        cov = self.covariances(params)
        if self.covariance_type in ("full", "tied"):
            smallest = jnp.linalg.eigvalsh(cov)[..., 0]
        elif self.covariance_type == "diag":
            smallest = jnp.min(cov, axis=-1)
        else:
            smallest = cov
        smallest = jnp.broadcast_to(smallest, (k,))
        at_floor = smallest <= 1.5 * self.reg_covar
        needed = {"full": d + 1, "tied": 0, "diag": 2, "spherical": 2}[self.covariance_type]
        return at_floor | (counts < needed)

    # ---- initialisation --------------------------------------------------------------------------

    def init(self, key: Array, x: Array, row_weights: Array | None) -> GaussianParams:
        k = self.num_components
        chunk_size = default_chunk_size(x.shape[0], k * x.shape[1])
        if self.init_method == "random_resp":
            total = reduce_chunks(
                lambda xc, wc, _: jnp.sum(xc if wc is None else xc * wc[:, None], axis=0),
                x,
                row_weights,
                chunk_size,
            )
            norm = x.shape[0] if row_weights is None else jnp.sum(row_weights)
            centers = jnp.broadcast_to(total / norm, (k, x.shape[1]))

            def resp_fn(xc: Array, rows: Array) -> Array:
                return initializers.random_resp(key, rows, k, xc.dtype)

        else:
            if self.init_method == "kmeans++":
                centers = initializers.kmeans_plusplus(key, x, row_weights, k)
            elif self.init_method == "kmeans":
                centers = initializers.kmeans(key, x, row_weights, k, chunk_size=chunk_size)
            else:
                centers = initializers.random_rows(key, x, row_weights, k)

            def resp_fn(xc: Array, rows: Array) -> Array:
                return initializers.nearest_center(xc, centers)

        reference = GaussianParams(centers, jnp.zeros(()))

        def chunk(xc: Array, wc: Array | None, rows: Array) -> GaussianStats:
            resp = resp_fn(xc, rows)
            if wc is not None:
                resp = resp * wc[:, None]
            return self.chunk_stats(reference, xc, resp)

        stats = reduce_chunks(chunk, x, row_weights, chunk_size)
        return self.m_step(reference, stats)
