"""Maps from unconstrained space onto the sets parameters live in.

The gradient M-step optimises in an unconstrained space and maps back with ``forward``, and SQUAREM
extrapolates in the same space: it is each family's one unconstrained map. A family
declares, through ``Components.constraints()``, a pytree of :class:`Constraint` objects that is a
*prefix* of its parameters: one constraint may cover a whole subtree, and ``None`` (or a missing
entry) means unconstrained. For instance a Gaussian with full covariances declares
``GaussianParams(means=Real(), precision_cholesky=UpperCholesky())``.

Every constraint is a frozen dataclass (hashable), with ``forward(u) -> p`` and ``inverse(p) -> u``
such that ``forward(inverse(p)) == p`` for every valid ``p``. ``inverse`` may pick one of several
preimages (a simplex is over-parameterised by its logits); that does not matter to the optimiser.

Example:
    >>> import jax.numpy as jnp
    >>> from jaxem.core import constraints
    >>> c = constraints.Positive()
    >>> float(c.forward(c.inverse(jnp.asarray(2.5))))
    2.5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def floored_log(p: Array) -> Array:
    """``log p`` floored at ``log(tiny)`` of its dtype: finite for ``p = 0``, so that an inverse
    map stays finite and ``0 * log 0`` in a matrix product is 0, not NaN.

    Example:
        >>> import jax.numpy as jnp
        >>> bool(jnp.isfinite(floored_log(jnp.zeros(()))))
        True
    """
    floor = float(np.log(np.finfo(np.dtype(p.dtype)).tiny))
    return jnp.maximum(jnp.log(p), floor)


def floored_log1m(p: Array) -> Array:
    """``log(1 - p)`` with the same floor as :func:`floored_log`."""
    floor = float(np.log(np.finfo(np.dtype(p.dtype)).tiny))
    return jnp.maximum(jnp.log1p(-p), floor)


class Constraint:
    """The base of every constraint: ``forward`` maps R^n onto the set, ``inverse`` back."""

    def forward(self, u: Array) -> Array:
        raise NotImplementedError

    def inverse(self, p: Array) -> Array:
        raise NotImplementedError


@dataclass(frozen=True)
class Real(Constraint):
    """No constraint (the identity map)."""

    def forward(self, u: Array) -> Array:
        return u

    def inverse(self, p: Array) -> Array:
        return p


@dataclass(frozen=True)
class Positive(Constraint):
    """Values above ``minimum`` (default 0), by ``minimum + softplus(u)``.

    Softplus rather than exp: it grows linearly, so a large optimiser step cannot overflow.
    """

    minimum: float = 0.0

    def forward(self, u: Array) -> Array:
        return self.minimum + jax.nn.softplus(u)

    def inverse(self, p: Array) -> Array:
        y = p - self.minimum
        # log(exp(y) - 1) without overflow for large y, finite at y = 0.
        return y + floored_log(-jnp.expm1(-y))


@dataclass(frozen=True)
class Interval(Constraint):
    """Values in ``(low, high)``, by a scaled sigmoid."""

    low: float = 0.0
    high: float = 1.0

    def forward(self, u: Array) -> Array:
        return self.low + (self.high - self.low) * jax.nn.sigmoid(u)

    def inverse(self, p: Array) -> Array:
        t = (p - self.low) / (self.high - self.low)
        return floored_log(t) - floored_log1m(t)


@dataclass(frozen=True)
class Simplex(Constraint):
    """Probability vectors along the last axis, by a softmax of logits."""

    def forward(self, u: Array) -> Array:
        return jax.nn.softmax(u, axis=-1)

    def inverse(self, p: Array) -> Array:
        return floored_log(p)


@dataclass(frozen=True)
class UnitVector(Constraint):
    """Vectors of Euclidean norm 1 along the last axis, by ``u / |u|``."""

    def forward(self, u: Array) -> Array:
        return u / jnp.linalg.norm(u, axis=-1, keepdims=True)

    def inverse(self, p: Array) -> Array:
        return p


def _triangular_with_positive_diagonal(u: Array, upper: bool) -> Array:
    tri = jnp.triu(u, 1) if upper else jnp.tril(u, -1)
    diag = jax.nn.softplus(jnp.diagonal(u, axis1=-2, axis2=-1))
    return tri + diag[..., :, None] * jnp.eye(u.shape[-1], dtype=u.dtype)


def _unconstrained_triangular(p: Array, upper: bool) -> Array:
    tri = jnp.triu(p, 1) if upper else jnp.tril(p, -1)
    diag = Positive().inverse(jnp.diagonal(p, axis1=-2, axis2=-1))
    return tri + diag[..., :, None] * jnp.eye(p.shape[-1], dtype=p.dtype)


@dataclass(frozen=True)
class UpperCholesky(Constraint):
    """Upper-triangular matrices with a positive diagonal (batched over leading axes).

    The strictly lower part of ``u`` is ignored, so its gradient is zero.
    """

    def forward(self, u: Array) -> Array:
        return _triangular_with_positive_diagonal(u, upper=True)

    def inverse(self, p: Array) -> Array:
        return _unconstrained_triangular(p, upper=True)


@dataclass(frozen=True)
class LowerCholesky(Constraint):
    """Lower-triangular matrices with a positive diagonal (batched over leading axes)."""

    def forward(self, u: Array) -> Array:
        return _triangular_with_positive_diagonal(u, upper=False)

    def inverse(self, p: Array) -> Array:
        return _unconstrained_triangular(p, upper=False)


@dataclass(frozen=True)
class Covariance(Constraint):
    """Symmetric positive-definite matrices, as ``L L^T`` with ``L`` a :class:`LowerCholesky`."""

    def forward(self, u: Array) -> Array:
        lower = LowerCholesky().forward(u)
        return lower @ jnp.swapaxes(lower, -1, -2)

    def inverse(self, p: Array) -> Array:
        return LowerCholesky().inverse(jnp.linalg.cholesky(p))


def _is_constraint(c: Any) -> bool:
    return c is None or isinstance(c, Constraint)


def _apply(constraints: Any, tree: Any, method: str) -> Any:
    if constraints is None:
        return tree

    def one(c: Constraint | None, sub: Any) -> Any:
        if c is None:
            return sub
        return jax.tree.map(getattr(c, method), sub)

    return jax.tree.map(one, constraints, tree, is_leaf=_is_constraint)


def constrain(constraints: Any, unconstrained: Any) -> Any:
    """Map an unconstrained pytree to parameters; ``constraints`` is a prefix of the tree."""
    return _apply(constraints, unconstrained, "forward")


def unconstrain(constraints: Any, params: Any) -> Any:
    """Map parameters to the unconstrained space; the inverse of :func:`constrain`."""
    return _apply(constraints, params, "inverse")


__all__ = [
    "Constraint",
    "Covariance",
    "Interval",
    "LowerCholesky",
    "Positive",
    "Real",
    "Simplex",
    "UnitVector",
    "UpperCholesky",
    "constrain",
    "floored_log",
    "floored_log1m",
    "unconstrain",
]
