"""Conjugate priors for Gaussian mixtures, with closed-form MAP M-steps for all covariance types.

For each component, ``mean | covariance ~ N(m0, covariance / shrinkage)``, and the covariance has
the conjugate prior of its type: inverse-Wishart ``IW(dof, scale)`` for ``full`` (one shared
covariance for ``tied``), and inverse-gamma ``IG(dof / 2, scale / 2)`` on each variance for
``diag`` (one per coordinate) and ``spherical`` (one per component). The MAP M-step is then, with
``n`` the component's weight, ``xbar`` its mean, ``W`` its scatter about ``xbar`` and
``b = xbar - m0``:

* mean ``(n xbar + shrinkage m0) / (n + shrinkage)``;
* full ``(scale + W + s b b^T) / (n + dof + d + 2)`` with ``s = shrinkage n / (n + shrinkage)``;
* tied ``(scale + sum_k W_k + sum_k s_k b_k b_k^T) / (N + dof + d + 1 + K)``;
* diag ``(scale_j + W_jj + s b_j^2) / (n + dof + 3)``;
* spherical ``(scale + tr W + s |b|^2) / (n d + dof + d + 2)``.

These are the updates of Fraley and Raftery (2007) for mclust, whose ``defaultPrior`` is
reproduced by :func:`default_prior`: ``m0`` the data mean, shrinkage 0.01, ``dof = d + 2`` and the
scale the data covariance divided by ``K^(2/d)``. The prior keeps every covariance away from 0, so a
component cannot collapse onto repeated points (Old Faithful's integer waiting times). With a prior
``reg_covar`` is not added: the prior is the regulariser and the M-step stays an exact maximiser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _as_tuple(a: Any) -> Any:
    a = np.asarray(a, dtype=float)
    if a.ndim == 0:
        return float(a)
    return tuple(_as_tuple(row) for row in a)


@dataclass(frozen=True)
class GaussianPrior:
    """Hyperparameters of the conjugate prior (floats and tuples, so the model stays hashable).

    Args:
        mean: ``m0``, length D.
        scale: full/tied: a D x D positive-definite matrix; diag: length D; spherical: a float.
        dof: degrees of freedom (inverse-Wishart) or twice the inverse-gamma shape.
        shrinkage: ``kappa``, the prior's weight in data points on the mean.

    Example:
        >>> import jax, jaxem
        >>> from jaxem.models.gaussian_prior import default_prior
        >>> x = jax.random.normal(jax.random.key(0), (200, 2))
        >>> family = jaxem.Gaussian(3, prior=default_prior(x, 3, "full"))
        >>> result = jaxem.fit(jaxem.em(jaxem.Mixture(family)), jax.random.key(0), x)
    """

    mean: tuple
    scale: Any
    dof: float
    shrinkage: float = 0.01

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _as_tuple(self.mean))
        object.__setattr__(self, "scale", _as_tuple(self.scale))
        if not self.shrinkage > 0:
            raise ValueError(f"shrinkage must be positive, got {self.shrinkage!r}.")
        if not self.dof > 0:
            raise ValueError(f"dof must be positive, got {self.dof!r}.")
        if np.any(np.asarray(self.scale) < 0) and np.ndim(self.scale) < 2:
            raise ValueError("scale must be positive.")

    def check(self, covariance_type: str, num_features: int) -> None:
        """Raise ``ValueError`` if the shapes do not fit ``covariance_type`` and D."""
        expected = {
            "full": (num_features, num_features),
            "tied": (num_features, num_features),
            "diag": (num_features,),
            "spherical": (),
        }[covariance_type]
        if len(self.mean) != num_features or np.shape(self.scale) != expected:
            raise ValueError(
                f"the prior has mean of length {len(self.mean)} and scale of shape "
                f"{np.shape(self.scale)}, but the data have {num_features} features and "
                f"covariance_type={covariance_type!r} needs scale of shape {expected}: build it "
                "with default_prior(x, num_components, covariance_type)."
            )

    # ---- MAP M-step -----------------------------------------------------------------------------

    def m_step(self, covariance_type: str, means_old: Array, stats: Any) -> tuple[Array, Array]:
        """MAP means and covariances (the family's shapes) from statistics about ``means_old``."""
        dtype = means_old.dtype
        k, d = means_old.shape
        self.check(covariance_type, d)
        m0 = jnp.asarray(self.mean, dtype)
        scale = jnp.asarray(self.scale, dtype)
        kappa, dof = self.shrinkage, self.dof
        n = stats.counts
        safe = jnp.where(n > 0, n, 1)
        delta = jnp.where(n[:, None] > 0, stats.first / safe[:, None], 0)
        xbar = means_old + delta
        means = (n[:, None] * xbar + kappa * m0) / (n[:, None] + kappa)
        b = xbar - m0
        s = kappa * n / (n + kappa)
        if covariance_type in ("full", "tied"):
            scatter = stats.second - n[:, None, None] * delta[:, :, None] * delta[:, None, :]
            shrink = s[:, None, None] * b[:, :, None] * b[:, None, :]
            if covariance_type == "full":
                cov = (scale + scatter + shrink) / (n + dof + d + 2)[:, None, None]
            else:
                total = jnp.sum(n) + dof + d + 1 + k
                cov = (scale + jnp.sum(scatter + shrink, axis=0)) / total
        else:
            scatter = stats.second - n[:, None] * delta * delta
            shrink = s[:, None] * b * b
            if covariance_type == "diag":
                cov = (scale + scatter + shrink) / (n + dof + 3)[:, None]
            else:
                cov = (scale + jnp.sum(scatter + shrink, axis=-1)) / (n * d + dof + d + 2)
        return means, cov

    # ---- log density (up to a constant) ---------------------------------------------------------

    def log_prior(self, covariance_type: str, means: Array, precision_cholesky: Array) -> Array:
        """Log prior density of the parameters, up to an additive constant."""
        dtype = means.dtype
        k, d = means.shape
        m0 = jnp.asarray(self.mean, dtype)
        scale = jnp.asarray(self.scale, dtype)
        kappa, dof = self.shrinkage, self.dof
        u = precision_cholesky
        b = means - m0
        if covariance_type in ("full", "tied"):
            log_det_u = jnp.sum(jnp.log(jnp.diagonal(u, axis1=-2, axis2=-1)), axis=-1)
            trace = jnp.sum(u * (scale @ u), axis=(-2, -1))  # tr(U^T scale U) = tr(scale P)
            if covariance_type == "full":
                whitened = jnp.einsum("kd,kde->ke", b, u)
                coef = dof + d + 2
                return jnp.sum(coef * log_det_u - 0.5 * trace) - 0.5 * kappa * jnp.sum(whitened**2)
            whitened = b @ u
            coef = dof + d + 1 + k
            return coef * log_det_u - 0.5 * trace - 0.5 * kappa * jnp.sum(whitened**2)
        if covariance_type == "diag":
            u2 = u * u
            return jnp.sum((dof + 3) * jnp.log(u) - 0.5 * u2 * (scale + kappa * b * b))
        u2 = u * u
        return jnp.sum(
            (dof + d + 2) * jnp.log(u) - 0.5 * u2 * (scale + kappa * jnp.sum(b * b, axis=-1))
        )


def default_prior(
    x: Any, num_components: int, covariance_type: str = "full", row_weights: Any = None
) -> GaussianPrior:
    """mclust's ``defaultPrior``: data mean, shrinkage 0.01, ``dof = D + 2``, and the data
    covariance over ``K^(2/D)`` as the scale (its diagonal for ``diag``, its mean variance for
    ``spherical``).

    Example:
        >>> import numpy as np
        >>> prior = default_prior(np.eye(3), 2, "diag")
        >>> prior.dof
        5.0
    """
    x = np.asarray(x, dtype=float)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(
            f"default_prior needs x of shape (n_samples >= 2, n_features), got {x.shape}."
        )
    n, d = x.shape
    w = np.ones(n) if row_weights is None else np.asarray(row_weights, dtype=float)
    mean = np.average(x, axis=0, weights=w)
    centred = x - mean
    cov = (w[:, None] * centred).T @ centred / np.sum(w)
    factor = float(num_components) ** (2.0 / d)
    if covariance_type in ("full", "tied"):
        scale = cov / factor
    elif covariance_type == "diag":
        scale = np.diag(cov) / factor
    elif covariance_type == "spherical":
        scale = float(np.trace(cov) / d) / factor
    else:
        raise ValueError(
            f"Unknown covariance_type {covariance_type!r}: use one of full, tied, diag, spherical."
        )
    return GaussianPrior(mean=mean, scale=scale, dof=float(d + 2), shrinkage=0.01)


__all__ = ["GaussianPrior", "default_prior"]
