"""Categorical components, one categorical distribution per feature (latent class analysis).

Each datum is a row of integer codes, ``x_d`` in ``0 .. num_levels[d] - 1``; features may have
different numbers of levels. ``p(x | k) = prod_d p_kd[x_d]``. Probabilities are stored padded to
the largest number of levels, ``probs[k, d, l]`` being 0 for ``l >= num_levels[d]``. A symmetric
Dirichlet(alpha) prior on every ``p_kd`` gives the MAP M-step
``p_kdl = (n_kdl + alpha - 1) / (n_kd + L_d (alpha - 1))``; the default alpha = 2 adds one
pseudo-count per level, so a level never seen in a class keeps a probability above 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxem.core.constraints import Constraint, floored_log
from jaxem.models.closed_form import (
    ChunkConjugateComponents,
    as_matrix,
    check_at_least_one,
    check_init_method,
    check_num_components,
    divide_or_keep,
    init_from_responsibilities,
)

Array = jax.Array


class CategoricalParams(NamedTuple):
    """Level probabilities ``[K, D, L]`` (``L`` the largest number of levels; padding is 0)."""

    probs: Array


class CategoricalStats(NamedTuple):
    """Sums over data of ``r`` (``[K]``) and of ``r`` per observed level (``[K, D, L]``)."""

    counts: Array
    level_counts: Array


@dataclass(frozen=True)
class LevelSimplex(Constraint):
    """Per-feature probability vectors padded to the largest number of levels: a softmax over the
    levels that exist, so that padding levels keep probability 0 under the gradient M-step."""

    num_levels: tuple[int, ...]

    def forward(self, u: Array) -> Array:
        mask = np.arange(max(self.num_levels)) < np.asarray(self.num_levels)[:, None]
        return jax.nn.softmax(jnp.where(mask, u, -jnp.inf), axis=-1)

    def inverse(self, p: Array) -> Array:
        return floored_log(p)


@dataclass(frozen=True)
class Categorical(ChunkConjugateComponents):
    """K products of independent categorical distributions over D features.

    Args:
        num_components: K (the latent classes).
        num_levels: number of levels of each feature, e.g. ``(3, 2, 5)``; see :meth:`from_data`.
        dirichlet_concentration: alpha >= 1 of the symmetric Dirichlet prior on each feature's
            probabilities; 1 is maximum likelihood, the default 2 adds one pseudo-count per level.
        init_method: ``"kmeans++"`` (default, on the one-hot codes), ``"random_rows"`` or
            ``"random_resp"``.

    Example:
        >>> import jax, jaxem
        >>> codes = jax.random.randint(jax.random.key(0), (300, 3), 0, 3)
        >>> model = jaxem.Mixture(jaxem.Categorical(2, num_levels=(3, 3, 3)))
        >>> jaxem.fit(jaxem.em(model), jax.random.key(1), codes).params.components.probs.shape
        (2, 3, 3)
    """

    num_components: int
    num_levels: tuple[int, ...]
    dirichlet_concentration: float = 2.0
    init_method: str = "kmeans++"

    def __post_init__(self) -> None:
        check_num_components(self.num_components)
        levels = tuple(self.num_levels) if isinstance(self.num_levels, (list, tuple)) else None
        if not levels or not all(isinstance(n, (int, np.integer)) and n >= 1 for n in levels):
            raise ValueError(
                "num_levels must be a non-empty sequence of positive integers, one per feature, "
                f"got {self.num_levels!r}."
            )
        # A tuple of Python ints keeps the configuration hashable.
        object.__setattr__(self, "num_levels", tuple(int(n) for n in levels))
        check_at_least_one(
            "dirichlet_concentration", self.dirichlet_concentration, "1 is maximum likelihood"
        )
        check_init_method(self.init_method)

    @classmethod
    def from_data(cls, num_components: int, x: Any, **options: Any) -> Categorical:
        """Components whose ``num_levels`` are ``1 + max`` of each column of the codes ``x``.

        Example:
            >>> import numpy as np, jaxem
            >>> jaxem.Categorical.from_data(2, np.array([[0, 1], [2, 0]])).num_levels
            (3, 2)
        """
        array = as_matrix(x, "Categorical")
        if np.any(array < 0) or np.any(array != np.round(array)):
            raise ValueError(
                "Categorical components need x as non-negative integer codes (0, 1, 2, ...) per "
                "feature: encode each column's categories as integers first."
            )
        return cls(num_components, tuple(int(m) + 1 for m in array.max(axis=0)), **options)

    @property
    def max_levels(self) -> int:
        return max(self.num_levels)

    def level_mask(self) -> np.ndarray:
        """``[D, L]``: True where the level exists for that feature."""
        return np.arange(self.max_levels)[None, :] < np.asarray(self.num_levels)[:, None]

    def one_hot(self, x: Array, dtype: Any) -> Array:
        """One-hot codes ``[C, D, L]``."""
        return jax.nn.one_hot(x.astype(jnp.int32), self.max_levels, dtype=dtype)

    def log_prob_chunk(self, params: CategoricalParams, x: Array) -> Array:
        # Padding levels are set to 1 before the log (log 1 = 0): masking after the log would
        # give NaN gradients, as the log's derivative is infinite at their probability 0.
        log_p = floored_log(jnp.where(self.level_mask(), params.probs, 1))
        return jnp.einsum("cdl,kdl->ck", self.one_hot(x, log_p.dtype), log_p)

    def chunk_stats(self, params: CategoricalParams, x: Array, resp: Array) -> CategoricalStats:
        level_counts = jnp.einsum("ck,cdl->kdl", resp, self.one_hot(x, resp.dtype))
        return CategoricalStats(jnp.sum(resp, axis=0), level_counts)

    def m_step(self, params: CategoricalParams, stats: CategoricalStats) -> CategoricalParams:
        mask = self.level_mask()
        numerator = jnp.where(mask, stats.level_counts + (self.dirichlet_concentration - 1.0), 0)
        # Summing the numerator rather than using the class counts stays right when a feature is
        # unobserved in some rows.
        denominator = jnp.sum(numerator, axis=-1, keepdims=True)
        return CategoricalParams(divide_or_keep(numerator, denominator, params.probs))

    def log_prior(self, params: CategoricalParams) -> Array:
        """Dirichlet(alpha) log density summed over classes and features, up to a constant."""
        alpha = self.dirichlet_concentration
        if alpha == 1:
            return jnp.zeros((), params.probs.dtype)
        log_p = floored_log(jnp.where(self.level_mask(), params.probs, 1))
        return (alpha - 1.0) * jnp.sum(log_p)

    def uniform_params(self, dtype: Any) -> CategoricalParams:
        """Every level of every feature equally likely in every class."""
        mask = self.level_mask()
        uniform = mask / mask.sum(axis=-1, keepdims=True)
        shape = (self.num_components, *mask.shape)
        return CategoricalParams(jnp.broadcast_to(jnp.asarray(uniform, dtype), shape))

    def init(self, key: Array, x: Array, row_weights: Array | None) -> CategoricalParams:
        dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.result_type(float)

        def flat_one_hot(xc: Array) -> Array:
            return self.one_hot(xc, dtype).reshape(xc.shape[0], -1)

        reference = self.uniform_params(dtype)
        return init_from_responsibilities(self, key, x, row_weights, reference, flat_one_hot)

    def sample(self, key: Array, params: CategoricalParams, labels: Array) -> Array:
        """Integer codes, one row per entry of ``labels`` (component indices), shape ``[n, D]``."""
        logits = jnp.where(self.level_mask(), floored_log(params.probs[labels]), -jnp.inf)
        return jax.random.categorical(key, logits, axis=-1)

    def num_free_parameters(self, num_features: int | None = None) -> int:
        """K x sum(L_d - 1) probabilities (mixture weights not included)."""
        del num_features
        return self.num_components * sum(n - 1 for n in self.num_levels)

    def check_data(self, x: Any) -> None:
        """Raise ``ValueError`` unless ``x`` holds valid integer codes for every feature."""
        array = as_matrix(x, "Categorical")
        if array.shape[1] != len(self.num_levels):
            raise ValueError(
                f"x has {array.shape[1]} columns but num_levels has {len(self.num_levels)} "
                "entries: give the number of levels of every feature."
            )
        too_big = array >= np.asarray(self.num_levels)[None, :]
        if np.any(array < 0) or np.any(array != np.round(array)) or np.any(too_big):
            raise ValueError(
                "Categorical components need x as integer codes 0 .. num_levels[d] - 1 in each "
                "column d: re-encode the data or raise num_levels (Categorical.from_data infers "
                "it)."
            )

    def constraints(self) -> CategoricalParams:
        return CategoricalParams(LevelSimplex(self.num_levels))
