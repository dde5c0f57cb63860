"""Finite mixtures: K components of one family with mixture weights on the simplex.

The weights always have a closed-form M-step (MAP under an optional symmetric Dirichlet prior). The
component parameters take the family's closed form when it has one (:class:`ConjugateComponents`);
otherwise the gradient M-step maximises Q over them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxem.core.constraints import Simplex
from jaxem.core.estep import normalize_log, weighted_sum
from jaxem.core.model import Components, ConjugateComponents, conditional_m_step

Array = jax.Array


class MixtureParams(NamedTuple):
    """Parameters of a mixture.

    Attributes:
        weights: mixture weights, shape ``[K]``, on the simplex.
        components: the family's parameters, leaves with a leading ``K`` axis.
    """

    weights: Array
    components: Any


class MixtureStats(NamedTuple):
    """Additive statistics of a mixture E-step.

    Attributes:
        counts: summed (weighted) responsibilities, shape ``[K]``.
        components: the family's summed statistics, or ``None`` when it has no closed form.
    """

    counts: Array
    components: Any


@dataclass(frozen=True)
class Mixture:
    """A mixture of ``components.num_components`` densities of one family.

    Args:
        components: the component family (a :class:`Components`).
        weight_concentration: concentration ``alpha >= 1`` of a symmetric Dirichlet prior on the
            weights; ``1.0`` (the default) is a flat prior, i.e. maximum likelihood. Below 1 the
            posterior is unbounded at the simplex's edge, so no MAP estimate exists.

    Example:
        >>> import jax, jaxem
        >>> model = jaxem.Mixture(jaxem.Gaussian(2))
        >>> x = jax.random.normal(jax.random.key(0), (100, 2))
        >>> result = jaxem.fit(jaxem.em(model), jax.random.key(1), x)
        >>> result.params.weights.shape
        (2,)
    """

    components: Components
    weight_concentration: float = 1.0

    def __post_init__(self) -> None:
        if not self.weight_concentration >= 1.0:
            raise ValueError(
                f"weight_concentration must be >= 1, got {self.weight_concentration!r}: below 1 "
                "the "
                "Dirichlet posterior has no maximum (it grows without bound as a weight goes to 0)."
            )

    @property
    def num_components(self) -> int:
        return self.components.num_components

    @property
    def handles_missing(self) -> bool:
        """Whether the components marginalise NaN entries (see :mod:`jaxem.missing`)."""
        return bool(getattr(self.components, "handles_missing", False))

    def init(self, key: Array, x: Any, row_weights: Array | None) -> MixtureParams:
        comp = self.components.init(key, x, row_weights)
        leaves = jax.tree.leaves(comp)
        dtype = leaves[0].dtype if leaves else jnp.result_type(float)
        k = self.num_components
        return MixtureParams(jnp.full((k,), 1.0 / k, dtype), comp)

    def log_joint(self, params: MixtureParams, x: Any) -> Array:
        """``log w_k + log p_k(x_n)`` for a chunk, shape ``[C, K]``."""
        log_prob = self.components.log_prob_chunk(params.components, x)
        return log_prob + jnp.log(params.weights)

    def log_resp(self, params: MixtureParams, x: Any) -> tuple[Array, Array]:
        """Log-responsibilities ``[C, K]`` and per-point log-likelihoods ``[C]`` of a chunk."""
        return normalize_log(self.log_joint(params, x))

    def prepare_rows(self, x: Any) -> Any:
        """The components' data-only work, done once per fit (see :mod:`jaxem.core.model`)."""
        prepare = getattr(self.components, "prepare_rows", None)  # families not built on Components
        return x if prepare is None else prepare(x)

    def e_step(
        self,
        params: MixtureParams,
        x: Any,
        row_weights: Array | None,
        reference: MixtureParams | None = None,
    ) -> tuple[MixtureStats, Array]:
        """Statistics of a chunk and its weighted log-likelihood.

        Responsibilities come from ``params``; the component statistics are accumulated about
        ``reference`` (default ``params``), so that statistics from different ``params`` can be
        averaged, as online EM does (pass the same ``reference`` to :meth:`m_step`).
        """
        log_resp, log_norm = self.log_resp(params, x)
        resp = jnp.exp(log_resp)
        if row_weights is not None:
            resp = jnp.where(row_weights[:, None] > 0, resp * row_weights[:, None], 0)
        comp_stats = None
        if isinstance(self.components, ConjugateComponents):
            about = params if reference is None else reference
            comp_stats = self.components.chunk_stats(about.components, x, resp)
        return MixtureStats(jnp.sum(resp, axis=0), comp_stats), weighted_sum(log_norm, row_weights)

    def m_step_weights(self, counts: Array) -> Array:
        alpha = self.weight_concentration
        raw = counts + (alpha - 1.0)
        return raw / jnp.sum(raw)

    def m_step(self, params: MixtureParams, stats: MixtureStats) -> MixtureParams:
        weights = self.m_step_weights(stats.counts).astype(params.weights.dtype)
        if stats.components is None:
            return MixtureParams(weights, params.components)
        return MixtureParams(weights, self.components.m_step(params.components, stats.components))

    def m_step_given(
        self, params: MixtureParams, stats: MixtureStats, frozen: MixtureParams
    ) -> MixtureParams:
        """The M-step with the blocks marked in ``frozen`` held: the weights and the components
        are independent blocks of Q, and the components hold theirs as the family can (see
        :func:`jaxem.core.model.conditional_m_step`)."""
        weights = params.weights
        if not frozen.weights:
            weights = self.m_step_weights(stats.counts).astype(params.weights.dtype)
        components = params.components
        if stats.components is not None:
            components = conditional_m_step(
                self.components, params.components, stats.components, frozen.components
            )
        return MixtureParams(weights, components)

    def log_prior(self, params: MixtureParams) -> Array:
        lp = self.components.log_prior(params.components)
        alpha = self.weight_concentration
        if alpha != 1.0:
            lp = lp + (alpha - 1.0) * jnp.sum(jnp.log(params.weights))
        return lp

    def constraints(self) -> MixtureParams:
        """Weights on the simplex; components as the family declares (gradient M-step)."""
        return MixtureParams(Simplex(), self.components.constraints())

    def closed_form_blocks(self) -> MixtureParams:
        """The weights always have a closed form; the components' blocks as the family marks."""
        conjugate = isinstance(self.components, ConjugateComponents)
        return MixtureParams(True, self.components.closed_form_blocks() if conjugate else False)

    def expected_log_joint(
        self, params: MixtureParams, params_old: MixtureParams, x: Any, row_weights: Array | None
    ) -> Array:
        """Q(params | params_old) on one chunk, without the prior.

        Responsibilities come from ``params_old`` under ``stop_gradient``, so the gradient flows
        only
        through ``params``.
        """
        log_resp, _ = self.log_resp(jax.lax.stop_gradient(params_old), x)
        resp = jax.lax.stop_gradient(jnp.exp(log_resp))
        log_joint = self.log_joint(params, x)
        # where, not multiply: an empty component (log w = -inf) with zero responsibility adds 0.
        per_point = jnp.sum(jnp.where(resp > 0, resp * log_joint, 0), axis=-1)
        return weighted_sum(per_point, row_weights)

    def entropy(self, params: MixtureParams, x: Any, row_weights: Array | None) -> Array:
        """Weighted entropy of the responsibilities on one chunk, H(q) = -sum r log r."""
        log_resp, _ = self.log_resp(params, x)
        resp = jnp.exp(log_resp)
        per_point = -jnp.sum(jnp.where(resp > 0, resp * log_resp, 0), axis=-1)
        return weighted_sum(per_point, row_weights)
