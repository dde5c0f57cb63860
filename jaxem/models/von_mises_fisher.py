"""Von Mises-Fisher components: directions on the unit sphere S^{D-1} (unit rows of length D).

``p(x | k) = C_D(kappa_k) exp(kappa_k mu_k . x)`` with
``log C_D(kappa) = (D/2 - 1) log kappa - (D/2) log(2 pi) - log I_{D/2-1}(kappa)``. Given the
responsibilities the mean direction has a closed form, ``mu_k = normalize(sum_n r_nk x_n)``, which
does not depend on ``kappa``; the concentration has none (Banerjee et al., 2005, use an
approximation), so ``closed_form_blocks`` leaves it to the gradient M-step: with
``jaxem.Gradient()`` each M-step is the exact mean direction followed by a one-dimensional concave
maximisation in ``kappa`` (ECM, monotone); with ``jaxem.ClosedForm()`` the concentrations stay at
their initial values.

:func:`log_bessel_iv` is the log of the modified Bessel function of the first kind, stable from
``kappa`` near 0 to ``kappa`` in the millions and differentiable in ``kappa``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from jaxem.core.constraints import Positive, UnitVector
from jaxem.core.model import ConjugateComponents
from jaxem.models.closed_form import (
    as_matrix,
    check_init_method,
    check_num_components,
    init_from_responsibilities,
)

Array = jax.Array

# Below this argument log I_v is the power series (summed in log space), above it Debye's uniform
# asymptotic expansion with four correction terms: both are within about 1e-10 of the exact value
# there (checked against scipy.special.ive for orders 0.5 to 150).
_SERIES_BELOW = 100.0
# Terms of the series: they peak near m = x / 2 and fall off within a few sqrt(x) of it.
_SERIES_TERMS = 200


def _log_bessel_series(order: float, x: Array) -> Array:
    m = jnp.arange(_SERIES_TERMS, dtype=x.dtype)
    terms = (2 * m + order) * jnp.log(x / 2)[..., None] - gammaln(m + 1) - gammaln(m + order + 1)
    return jax.nn.logsumexp(terms, axis=-1)


def _log_bessel_debye(order: float, x: Array) -> Array:
    """Debye's expansion of I_v(v z) (Abramowitz and Stegun 9.7.7), uniform in z = x / v."""
    z = x / order
    root = jnp.sqrt(1 + z * z)
    t = 1 / root
    t2 = t * t
    u1 = t * (3 - 5 * t2) / 24
    u2 = t2 * (81 - 462 * t2 + 385 * t2**2) / 1152
    u3 = t * t2 * (30375 - 369603 * t2 + 765765 * t2**2 - 425425 * t2**3) / 414720
    u4 = (
        t2**2
        * (4465125 - 94121676 * t2 + 349922430 * t2**2 - 446185740 * t2**3 + 185910725 * t2**4)
        / 39813120
    )
    series = 1 + u1 / order + u2 / order**2 + u3 / order**3 + u4 / order**4
    eta = root + jnp.log(z / (1 + root))
    return order * eta - 0.5 * jnp.log(2 * math.pi * order * root) + jnp.log(series)


def log_bessel_iv(order: float, x: Array) -> Array:
    """``log I_order(x)`` for a static ``order >= 0`` and ``x > 0``, differentiable in ``x``.

    The power series below ``x = 100`` and Debye's uniform asymptotic expansion above (order 0 uses
    ``i0e``), so neither overflows: ``log I_v(x)`` grows like ``x`` where ``I_v`` itself overflows
    float64 beyond ``x`` near 700.

    Example:
        >>> import jax.numpy as jnp
        >>> round(float(log_bessel_iv(1.5, jnp.asarray(1000.0))), 2)
        995.63
    """
    order = float(order)
    if order < 0:
        raise ValueError(f"order must be non-negative, got {order!r}.")
    x = jnp.asarray(x)
    if order == 0:
        return jnp.log(jax.scipy.special.i0e(x)) + x
    # Each branch sees arguments inside its own range, so the other's gradient is never NaN.
    small = x < _SERIES_BELOW
    below = _log_bessel_series(order, jnp.where(small, x, 1.0))
    above = _log_bessel_debye(order, jnp.where(small, _SERIES_BELOW, x))
    return jnp.where(small, below, above)


def log_normalizer(dim: int, concentration: Array) -> Array:
    """``log C_D(kappa)``, the log normalising constant of a von Mises-Fisher on S^{D-1}."""
    order = dim / 2 - 1
    return (
        order * jnp.log(concentration)
        - (dim / 2) * math.log(2 * math.pi)
        - log_bessel_iv(order, concentration)
    )


def approximate_concentration(mean_resultant: Array, dim: int) -> Array:
    """Banerjee et al.'s (2005) approximation of the maximum-likelihood ``kappa`` from the mean
    resultant length ``R`` in (0, 1): ``R (D - R^2) / (1 - R^2)``."""
    r = jnp.clip(mean_resultant, 1e-6, 1 - 1e-6)
    return r * (dim - r * r) / (1 - r * r)


class VonMisesFisherParams(NamedTuple):
    """Mean directions ``[K, D]`` (unit rows) and concentrations ``[K]``."""

    directions: Array
    concentrations: Array


class VonMisesFisherStats(NamedTuple):
    """Sums over data of ``r`` (``[K]``) and ``r x`` (``[K, D]``, the resultant vectors)."""

    counts: Array
    resultants: Array


@dataclass(frozen=True)
class VonMisesFisher(ConjugateComponents):
    """K von Mises-Fisher densities on the unit sphere (rows of ``x`` have norm 1).

    Fit with ``jaxem.Gradient()``: the mean directions take their closed form, the concentrations
    the gradient path.

    Args:
        num_components: K.
        min_concentration: concentrations stay above this (keeps ``log kappa`` finite).
        init_method: ``"kmeans++"`` (default), ``"random_rows"`` or ``"random_resp"``; the first
            concentrations follow from the same assignment by Banerjee et al.'s approximation.

    Example:
        >>> import jax, jax.numpy as jnp, jaxem
        >>> z = jax.random.normal(jax.random.key(0), (200, 3)) + jnp.array([3.0, 0.0, 0.0])
        >>> x = z / jnp.linalg.norm(z, axis=1, keepdims=True)
        >>> model = jaxem.Mixture(jaxem.VonMisesFisher(2))
        >>> result = jaxem.fit(jaxem.em(model, jaxem.Gradient()), jax.random.key(1), x)
        >>> result.params.components.concentrations.shape
        (2,)
    """

    num_components: int
    min_concentration: float = 1e-6
    init_method: str = "kmeans++"

    def __post_init__(self) -> None:
        check_num_components(self.num_components)
        if not (np.isscalar(self.min_concentration) and self.min_concentration > 0):
            raise ValueError(f"min_concentration must be positive, got {self.min_concentration!r}.")
        check_init_method(self.init_method)

    def constraints(self) -> VonMisesFisherParams:
        return VonMisesFisherParams(UnitVector(), Positive(self.min_concentration))

    def closed_form_blocks(self) -> VonMisesFisherParams:
        return VonMisesFisherParams(True, False)

    def log_prob_chunk(self, params: VonMisesFisherParams, x: Array) -> Array:
        kappa = params.concentrations
        return log_normalizer(x.shape[-1], kappa) + (x @ params.directions.T) * kappa

    def log_prob(self, params: VonMisesFisherParams, x_one: Array) -> Array:
        return self.log_prob_chunk(params, x_one[None])[0]

    def chunk_stats(
        self, params: VonMisesFisherParams, x: Array, resp: Array
    ) -> VonMisesFisherStats:
        return VonMisesFisherStats(jnp.sum(resp, axis=0), resp.T @ x)

    def suff_stats(
        self, params: VonMisesFisherParams, x_one: Array, resp: Array
    ) -> VonMisesFisherStats:
        return self.chunk_stats(params, x_one[None], resp[None])

    def m_step(
        self, params: VonMisesFisherParams, stats: VonMisesFisherStats
    ) -> VonMisesFisherParams:
        """Closed-form mean directions; the concentrations pass through unchanged."""
        norm = jnp.linalg.norm(stats.resultants, axis=-1, keepdims=True)
        # An empty component (or one whose points cancel out) keeps its direction.
        safe = jnp.where(norm > 0, norm, 1)
        directions = jnp.where(norm > 0, stats.resultants / safe, params.directions)
        return VonMisesFisherParams(
            directions.astype(params.directions.dtype), params.concentrations
        )

    def init(self, key: Array, x: Array, row_weights: Array | None) -> VonMisesFisherParams:
        k, d = self.num_components, x.shape[1]
        reference = VonMisesFisherParams(
            jnp.zeros((k, d), x.dtype).at[:, 0].set(1), jnp.ones((k,), x.dtype)
        )
        return init_from_responsibilities(
            self, key, x, row_weights, reference, m_step=self._first_estimate
        )

    def _first_estimate(
        self, params: VonMisesFisherParams, stats: VonMisesFisherStats
    ) -> VonMisesFisherParams:
        """Closed-form directions and Banerjee's concentrations, for the first parameters."""
        directions = self.m_step(params, stats).directions
        has_points = stats.counts > 0
        length = jnp.linalg.norm(stats.resultants, axis=-1) / jnp.where(has_points, stats.counts, 1)
        kappa = jnp.maximum(
            approximate_concentration(length, directions.shape[-1]), self.min_concentration
        )
        kappa = jnp.where(has_points, kappa, params.concentrations).astype(directions.dtype)
        return VonMisesFisherParams(directions, kappa)

    def sample(self, key: Array, params: VonMisesFisherParams, labels: Array) -> Array:
        """One draw per entry of ``labels`` (component indices), shape ``[n, D]``, by Wood's (1994)
        rejection sampler for the component along the first axis, rotated onto its direction."""
        dtype = params.directions.dtype
        d = params.directions.shape[-1]
        kappa = params.concentrations[labels]
        key_w, key_v = jax.random.split(key)
        w = jax.vmap(lambda k, c: _wood_cosine(k, c, d))(
            jax.random.split(key_w, labels.shape[0]), kappa
        )
        v = jax.random.normal(key_v, (labels.shape[0], d - 1), dtype)
        v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
        around_first = jnp.concatenate(
            [w[:, None], jnp.sqrt(jnp.maximum(1 - w * w, 0))[:, None] * v], axis=-1
        )
        return _householder_to(params.directions[labels], around_first)

    def num_free_parameters(self, num_features: int) -> int:
        """Per component: a direction (D - 1 free) and a concentration."""
        return self.num_components * num_features

    def check_data(self, x: Any) -> None:
        """Raise ``ValueError`` unless the rows of ``x`` are unit vectors."""
        array = as_matrix(x, "VonMisesFisher")
        if array.shape[1] < 2:
            raise ValueError(
                "VonMisesFisher components need rows of at least 2 coordinates (points on a circle "
                f"or sphere), got {array.shape[1]}."
            )
        norms = np.linalg.norm(array, axis=1)
        tol = 1e-6 if array.dtype == np.float64 else 1e-4
        if np.any(np.abs(norms - 1) > tol):
            worst = int(np.argmax(np.abs(norms - 1)))
            raise ValueError(
                f"VonMisesFisher components need unit-norm rows, but row {worst} has norm "
                f"{norms[worst]:.6g}: divide each row by its norm "
                "(x / np.linalg.norm(x, axis=1, keepdims=True))."
            )


def _wood_cosine(key: Array, kappa: Array, dim: int) -> Array:
    """``w = mu . x`` of one von Mises-Fisher draw (Wood, 1994), by rejection in a while loop."""
    dtype = kappa.dtype
    b = (dim - 1) / (2 * kappa + jnp.sqrt(4 * kappa**2 + (dim - 1) ** 2))
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + (dim - 1) * jnp.log(1 - x0 * x0)
    half = (dim - 1) / 2

    def cond(state: tuple) -> Array:
        return ~state[2]

    def body(state: tuple) -> tuple:
        key, _, _ = state
        key, kz, ku = jax.random.split(key, 3)
        z = jax.random.beta(kz, half, half, dtype=dtype)
        w = (1 - (1 + b) * z) / (1 - (1 - b) * z)
        u = jax.random.uniform(ku, dtype=dtype)
        accept = kappa * w + (dim - 1) * jnp.log(1 - x0 * w) - c >= jnp.log(u)
        return key, w, accept

    return jax.lax.while_loop(cond, body, (key, jnp.zeros((), dtype), jnp.array(False)))[1]


def _householder_to(directions: Array, around_first: Array) -> Array:
    """Rotate vectors given about the first axis ``e1`` onto ``directions`` (row by row), by the
    reflection that swaps ``e1`` and the direction."""
    e1 = jnp.zeros_like(directions).at[:, 0].set(1)
    u = e1 - directions
    norm2 = jnp.sum(u * u, axis=-1, keepdims=True)
    reflected = around_first - 2 * u * jnp.sum(u * around_first, -1, keepdims=True) / jnp.where(
        norm2 > 0, norm2, 1
    )
    return jnp.where(norm2 > 0, reflected, around_first)


__all__ = [
    "VonMisesFisher",
    "VonMisesFisherParams",
    "VonMisesFisherStats",
    "approximate_concentration",
    "log_bessel_iv",
    "log_normalizer",
]
