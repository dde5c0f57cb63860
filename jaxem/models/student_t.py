"""Multivariate Student-t components with full scale matrices (robust clustering).

A Student-t is a Gaussian whose precision is scaled by a latent ``u ~ Gamma(dof / 2, dof / 2)``.
Given the responsibilities ``r`` and the latent weights ``E[u] = (dof + D) / (dof + delta^2)``
(``delta`` the Mahalanobis distance under the old parameters), location and scale have closed forms
(McLachlan and Peel, 2000, ch. 7): a ``r u``-weighted mean and scatter over ``sum r``. The degrees
of freedom have none, so they are left to the gradient M-step: ``closed_form_blocks`` marks them
``False``. Use ``jaxem.Gradient()`` to fit all three (ECM); with ``jaxem.ClosedForm()`` the degrees
of freedom stay at their initial value.

Parameters follow the Gaussian's convention: ``precision_cholesky`` is the upper-triangular ``U``
with ``U U^T`` the inverse of the scale matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from jaxem.core.constraints import Positive, Real, UpperCholesky
from jaxem.core.model import ConjugateComponents
from jaxem.models.gaussian import INIT_METHODS, Gaussian, upper_cholesky_of_inverse

Array = jax.Array


class StudentTParams(NamedTuple):
    """Locations ``[K, D]``, upper Cholesky factors of the inverse scales ``[K, D, D]``, and
    degrees of freedom ``[K]``."""

    means: Array
    precision_cholesky: Array
    dof: Array


class StudentTStats(NamedTuple):
    """Sums of ``r``, ``r u``, ``r u (x - c)`` and ``r u (x - c)(x - c)^T`` about the old means."""

    counts: Array
    scale_weights: Array
    first: Array
    second: Array


@dataclass(frozen=True)
class StudentT(ConjugateComponents):
    """K multivariate Student-t densities.

    Args:
        num_components: K.
        dof: initial degrees of freedom of every component.
        reg_covar: added to the diagonal of every scale matrix.
        init_method: as for :class:`jaxem.Gaussian` (locations and scales start from its fit).

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.t(jax.random.key(0), 3.0, (300, 2))
        >>> model = jaxem.Mixture(jaxem.StudentT(2))
        >>> result = jaxem.fit(jaxem.em(model, jaxem.Gradient()), jax.random.key(1), x, max_iter=20)
        >>> result.params.components.dof.shape
        (2,)
    """

    num_components: int
    dof: float = 10.0
    reg_covar: float = 1e-6
    init_method: str = "kmeans++"

    def __post_init__(self) -> None:
        if not isinstance(self.num_components, int) or self.num_components < 1:
            raise ValueError(
                f"num_components must be a positive integer, got {self.num_components!r}."
            )
        if not self.dof > 0:
            raise ValueError(f"dof must be positive, got {self.dof!r}.")
        if not self.reg_covar >= 0:
            raise ValueError(f"reg_covar must be non-negative, got {self.reg_covar!r}.")
        if self.init_method not in INIT_METHODS:
            raise ValueError(
                f"Unknown init_method {self.init_method!r}: use one of {', '.join(INIT_METHODS)}."
            )

    def constraints(self) -> StudentTParams:
        return StudentTParams(Real(), UpperCholesky(), Positive())

    def closed_form_blocks(self) -> StudentTParams:
        return StudentTParams(True, True, False)

    def _mahalanobis(self, params: StudentTParams, x: Array) -> Array:
        """Squared Mahalanobis distances ``[C, K]``."""
        z = x[:, None, :] - params.means[None, :, :]
        y = jnp.einsum("ckd,kde->cke", z, params.precision_cholesky)
        return jnp.sum(y * y, axis=-1)

    def log_prob_chunk(self, params: StudentTParams, x: Array) -> Array:
        d = x.shape[-1]
        nu = params.dof
        log_det = jnp.sum(jnp.log(jnp.diagonal(params.precision_cholesky, axis1=-2, axis2=-1)), -1)
        norm = gammaln(0.5 * (nu + d)) - gammaln(0.5 * nu) - 0.5 * d * jnp.log(nu * math.pi)
        return norm + log_det - 0.5 * (nu + d) * jnp.log1p(self._mahalanobis(params, x) / nu)

    def log_prob(self, params: StudentTParams, x_one: Array) -> Array:
        return self.log_prob_chunk(params, x_one[None])[0]

    def chunk_stats(self, params: StudentTParams, x: Array, resp: Array) -> StudentTStats:
        d = x.shape[-1]
        latent = (params.dof + d) / (params.dof + self._mahalanobis(params, x))
        ru = resp * latent
        z = x[:, None, :] - params.means[None, :, :]
        ruz = ru[:, :, None] * z
        second = jnp.einsum("ckd,cke->kde", ruz, z)
        return StudentTStats(jnp.sum(resp, 0), jnp.sum(ru, 0), jnp.sum(ruz, 0), second)

    def suff_stats(self, params: StudentTParams, x_one: Array, resp: Array) -> StudentTStats:
        return self.chunk_stats(params, x_one[None], resp[None])

    def m_step(self, params: StudentTParams, stats: StudentTStats) -> StudentTParams:
        """Closed-form locations and scales; the degrees of freedom pass through unchanged."""
        dtype = params.means.dtype
        eps = 10 * jnp.finfo(dtype).eps
        counts, weights = stats.counts + eps, stats.scale_weights + eps
        delta = stats.first / weights[:, None]
        means = params.means + delta
        d = means.shape[-1]
        scatter = stats.second - weights[:, None, None] * delta[:, :, None] * delta[:, None, :]
        scale = scatter / counts[:, None, None] + self.reg_covar * jnp.eye(d, dtype=dtype)
        return StudentTParams(means, upper_cholesky_of_inverse(scale), params.dof)

    def init(self, key: Array, x: Array, row_weights: Array | None) -> StudentTParams:
        gaussian = Gaussian(self.num_components, "full", self.reg_covar, self.init_method)
        start = gaussian.init(key, x, row_weights)
        dof = jnp.full((self.num_components,), self.dof, x.dtype)
        return StudentTParams(start.means, start.precision_cholesky, dof)

    def sample(self, key: Array, params: StudentTParams, labels: Array) -> Array:
        """One draw per entry of ``labels`` (component indices)."""
        key_normal, key_gamma = jax.random.split(key)
        d = params.means.shape[-1]
        dtype = params.means.dtype
        nu = params.dof[labels]
        g = jax.random.gamma(key_gamma, 0.5 * nu, dtype=dtype) / (0.5 * nu)
        y = jax.random.normal(key_normal, (labels.shape[0], d), dtype)
        # x = mean + U^-T y / sqrt(g), since (U U^T)^-1 = U^-T U^-1 is the scale matrix.
        u = params.precision_cholesky[labels]
        z = jax.scipy.linalg.solve_triangular(u, y[..., None], lower=False, trans="T")[..., 0]
        return params.means[labels] + z / jnp.sqrt(g)[:, None]

    def num_free_parameters(self, num_features: int) -> int:
        k, d = self.num_components, num_features
        return k * (d + d * (d + 1) // 2 + 1)


__all__ = ["StudentT", "StudentTParams", "StudentTStats"]
