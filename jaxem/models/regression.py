"""Mixture of linear regressions: each component is ``y = x . beta_k + b_k + noise_k``.

The data are a pair ``(covariates [N, P], target [N])`` sharing the row axis. The M-step is
weighted least squares per component and the noise variance is the weighted mean squared residual
plus ``reg_variance``. Statistics are accumulated about the previous fit: with
``e = y - z . beta_old`` (``z`` the covariates with a column of ones for the intercept) the sums
``r z z^T``, ``r z e`` and ``r e^2`` give ``beta_new = beta_old + G^+ c`` and the residual sum of
squares ``s - c . G^+ c`` without the cancellation that sums of ``y^2`` about zero would suffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxem.core.constraints import Positive
from jaxem.models.closed_form import (
    ChunkConjugateComponents,
    check_init_method,
    check_num_components,
    init_from_responsibilities,
)

Array = jax.Array


class RegressionParams(NamedTuple):
    """Coefficients ``[K, P]``, intercepts ``[K]`` and noise variances ``[K]``."""

    coefficients: Array
    intercepts: Array
    variances: Array


class RegressionStats(NamedTuple):
    """Sums over data of ``r``, ``r z z^T``, ``r z e`` and ``r e^2`` (``e``: residual of the fit
    the statistics were accumulated about)."""

    counts: Array
    gram: Array
    cross: Array
    residual_squares: Array


def check_regression_data(x: Any, family: str) -> tuple[np.ndarray, np.ndarray]:
    """``(covariates, target)`` as NumPy arrays, or a ValueError saying what shape is expected."""
    if not (isinstance(x, (tuple, list)) and len(x) == 2):
        raise ValueError(
            f"{family} components need x as a pair (covariates, target): covariates of shape "
            "[N, P] and target of shape [N]."
        )
    covariates, target = np.asarray(x[0]), np.asarray(x[1])
    if covariates.ndim != 2 or target.ndim != 1 or covariates.shape[0] != target.shape[0]:
        raise ValueError(
            f"{family} components need covariates [N, P] and target [N] with the same N, got "
            f"shapes {covariates.shape} and {target.shape}."
        )
    for name, a in (("covariates", covariates), ("target", target)):
        if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
            raise ValueError(f"{family} components need finite numbers in {name}.")
    return covariates, target


@dataclass(frozen=True)
class LinearRegression(ChunkConjugateComponents):
    """K linear regressions of a scalar target on P covariates, each with its own noise variance.

    Args:
        num_components: K.
        fit_intercept: whether each component has an intercept.
        reg_variance: added to every noise variance (keeps a component that fits a few points
            exactly from a zero variance and an unbounded likelihood).
        init_method: ``"kmeans++"`` (default, on the rows ``[covariates, target]``),
            ``"random_rows"`` or ``"random_resp"``.

    Example:
        >>> import jax, jax.numpy as jnp, jaxem
        >>> covariates = jax.random.normal(jax.random.key(0), (200, 1))
        >>> target = jnp.where(jnp.arange(200) % 2 == 0, 2.0, -2.0) * covariates[:, 0]
        >>> model = jaxem.Mixture(jaxem.LinearRegression(2))
        >>> result = jaxem.fit(jaxem.em(model), jax.random.key(1), (covariates, target))
        >>> result.params.components.coefficients.shape
        (2, 1)
    """

    num_components: int
    fit_intercept: bool = True
    reg_variance: float = 1e-6
    init_method: str = "kmeans++"

    def __post_init__(self) -> None:
        check_num_components(self.num_components)
        if not (np.isscalar(self.reg_variance) and self.reg_variance >= 0):
            raise ValueError(f"reg_variance must be non-negative, got {self.reg_variance!r}.")
        check_init_method(self.init_method)

    def design(self, covariates: Array) -> Array:
        """``z``: the covariates, with a last column of ones when fitting intercepts."""
        if not self.fit_intercept:
            return covariates
        return jnp.concatenate([covariates, jnp.ones_like(covariates[:, :1])], axis=1)

    def predict(self, params: RegressionParams, covariates: Array) -> Array:
        """Each component's prediction of the target, shape ``[C, K]``."""
        return covariates @ params.coefficients.T + params.intercepts

    def log_prob_chunk(self, params: RegressionParams, x: tuple[Array, Array]) -> Array:
        covariates, target = x
        residual = target[:, None] - self.predict(params, covariates)
        variances = params.variances
        return -0.5 * (math.log(2 * math.pi) + jnp.log(variances) + residual**2 / variances)

    def chunk_stats(
        self, params: RegressionParams, x: tuple[Array, Array], resp: Array
    ) -> RegressionStats:
        covariates, target = x
        z = self.design(covariates)
        residual = target[:, None] - self.predict(params, covariates)
        rz = resp[:, :, None] * z[:, None, :]
        return RegressionStats(
            counts=jnp.sum(resp, axis=0),
            gram=jnp.einsum("ckp,cq->kpq", rz, z),
            cross=jnp.einsum("ckp,ck->kp", rz, residual),
            residual_squares=jnp.sum(resp * residual**2, axis=0),
        )

    def m_step(self, params: RegressionParams, stats: RegressionStats) -> RegressionParams:
        # The pseudo-inverse gives the minimum-norm solution when a component has too few points
        # for its covariates (a singular Gram matrix) instead of NaN.
        step = jnp.einsum("kpq,kq->kp", jnp.linalg.pinv(stats.gram, hermitian=True), stats.cross)
        rss = jnp.maximum(stats.residual_squares - jnp.sum(step * stats.cross, axis=-1), 0)
        counts = stats.counts
        has_points = counts > 0
        variances = rss / jnp.where(has_points, counts, 1) + self.reg_variance
        if self.fit_intercept:
            coefficients = params.coefficients + step[:, :-1]
            intercepts = params.intercepts + step[:, -1]
        else:
            coefficients, intercepts = params.coefficients + step, params.intercepts
        return RegressionParams(
            coefficients,
            intercepts,
            jnp.where(has_points, variances, params.variances).astype(params.variances.dtype),
        )

    def init(
        self, key: Array, x: tuple[Array, Array], row_weights: Array | None
    ) -> RegressionParams:
        covariates = x[0]
        k, p = self.num_components, covariates.shape[1]
        dtype = covariates.dtype
        reference = RegressionParams(
            jnp.zeros((k, p), dtype), jnp.zeros((k,), dtype), jnp.ones((k,), dtype)
        )

        def joint(xc: tuple[Array, Array]) -> Array:
            return jnp.concatenate([xc[0], xc[1][:, None]], axis=1)

        return init_from_responsibilities(self, key, x, row_weights, reference, joint)

    def sample(
        self, key: Array, params: RegressionParams, labels: Array, covariates: Array
    ) -> Array:
        """A target per row of ``covariates`` from the component in ``labels``, shape ``[n]``."""
        mean = jnp.take_along_axis(self.predict(params, covariates), labels[:, None], axis=1)[:, 0]
        noise = jax.random.normal(key, mean.shape, mean.dtype)
        return mean + jnp.sqrt(params.variances[labels]) * noise

    def num_free_parameters(self, num_features: int) -> int:
        """Per component: P coefficients, the intercept if fitted, and the noise variance."""
        return self.num_components * (num_features + int(self.fit_intercept) + 1)

    def check_data(self, x: Any) -> None:
        """Raise ``ValueError`` unless ``x`` is a pair ``(covariates [N, P], target [N])``."""
        check_regression_data(x, "LinearRegression")

    def constraints(self) -> RegressionParams:
        return RegressionParams(None, None, Positive(self.reg_variance))
