"""Mixture emissions: each hidden state emits from its own mixture of components of one family
(a Gaussian-mixture HMM when the family is :class:`jaxem.Gaussian`).

The inner family holds ``K x M`` components, state-major (component ``k * M + m`` is mixture
component ``m`` of state ``k``). Given a state's responsibility at a step, the responsibilities of
its mixture components follow by one more softmax, so the statistics are the inner family's own,
and the M-step is its closed form plus normalised mixture weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.nn import logsumexp

from jaxem.core.constraints import Simplex
from jaxem.core.model import ConjugateComponents, count_free_parameters

Array = jax.Array


class MixtureEmissionParams(NamedTuple):
    """Mixture weights ``[K, M]`` and the inner family's parameters (``K x M`` components)."""

    weights: Array
    components: Any


class MixtureEmissionStats(NamedTuple):
    """Summed responsibilities of every mixture component ``[K, M]`` and the inner statistics."""

    counts: Array
    components: Any


@dataclass(frozen=True)
class MixtureEmissions(ConjugateComponents):
    """States that each emit from a mixture of ``num_mixture`` components of ``inner``.

    Args:
        inner: a conjugate family with ``num_states x num_mixture`` components, e.g.
            ``jaxem.Gaussian(3 * 2, "diag")`` for 3 states with 2 Gaussians each.
        num_mixture: M, the mixture components per state.

    Example:
        >>> import jax, jaxem
        >>> from jaxem.hmm import HiddenMarkovModel, pad_sequences
        >>> from jaxem.hmm.emissions import MixtureEmissions
        >>> x = jax.random.normal(jax.random.key(0), (200, 2))
        >>> emissions = MixtureEmissions(jaxem.Gaussian(3 * 2, "diag"), num_mixture=2)
        >>> model = HiddenMarkovModel(emissions)
        >>> result = jaxem.fit(jaxem.em(model), jax.random.key(1), pad_sequences(x), max_iter=5)
        >>> result.params.emissions.weights.shape
        (3, 2)
    """

    inner: ConjugateComponents
    num_mixture: int

    def __post_init__(self) -> None:
        if not isinstance(self.inner, ConjugateComponents):
            raise ValueError(
                "inner must be a conjugate component family (e.g. jaxem.Gaussian(K * M)), got "
                f"{type(self.inner).__name__}."
            )
        m = self.num_mixture
        if not isinstance(m, int) or m < 1 or self.inner.num_components % m:
            raise ValueError(
                f"num_mixture must be a positive integer dividing inner.num_components "
                f"({self.inner.num_components}), got {m!r}: give inner K * M components."
            )

    @property
    def num_components(self) -> int:
        """The number of states K."""
        return self.inner.num_components // self.num_mixture

    def init(self, key: Array, x: Any, row_weights: Array | None) -> MixtureEmissionParams:
        components = self.inner.init(key, x, row_weights)
        dtype = jax.tree.leaves(components)[0].dtype
        shape = (self.num_components, self.num_mixture)
        return MixtureEmissionParams(jnp.full(shape, 1.0 / self.num_mixture, dtype), components)

    def _log_joint(self, params: MixtureEmissionParams, x: Any) -> Array:
        """``log w_km + log p_km(x)``, shape ``[C, K, M]``."""
        log_prob = self.inner.log_prob_chunk(params.components, x)
        log_prob = log_prob.reshape(log_prob.shape[0], self.num_components, self.num_mixture)
        return log_prob + jnp.log(params.weights)

    def log_prob_chunk(self, params: MixtureEmissionParams, x: Any) -> Array:
        return logsumexp(self._log_joint(params, x), axis=-1)

    def log_prob(self, params: MixtureEmissionParams, x_one: Any) -> Array:
        return self.log_prob_chunk(params, jax.tree.map(lambda a: a[None], x_one))[0]

    def chunk_stats(
        self, params: MixtureEmissionParams, x: Any, resp: Array
    ) -> MixtureEmissionStats:
        within = jax.nn.softmax(self._log_joint(params, x), axis=-1)
        # where, not multiply: a padding step (resp 0) may have a non-finite density.
        inner_resp = jnp.where(resp[..., None] > 0, resp[..., None] * within, 0)
        flat = inner_resp.reshape(inner_resp.shape[0], -1)
        stats = self.inner.chunk_stats(params.components, x, flat)
        return MixtureEmissionStats(jnp.sum(inner_resp, axis=0), stats)

    def suff_stats(
        self, params: MixtureEmissionParams, x_one: Any, resp: Array
    ) -> MixtureEmissionStats:
        return self.chunk_stats(params, jax.tree.map(lambda a: a[None], x_one), resp[None])

    def m_step(
        self, params: MixtureEmissionParams, stats: MixtureEmissionStats
    ) -> MixtureEmissionParams:
        total = jnp.sum(stats.counts, axis=-1, keepdims=True)
        weights = jnp.where(
            total > 0, stats.counts / jnp.where(total > 0, total, 1), params.weights
        )
        components = self.inner.m_step(params.components, stats.components)
        return MixtureEmissionParams(weights.astype(params.weights.dtype), components)

    def log_prior(self, params: MixtureEmissionParams) -> Array:
        return self.inner.log_prior(params.components)

    def num_free_parameters(self, num_features: int) -> int:
        """``M - 1`` mixture weights per state plus the inner family's ``K x M`` components."""
        weights = self.num_components * (self.num_mixture - 1)
        return weights + count_free_parameters(self.inner, num_features)

    def constraints(self) -> MixtureEmissionParams:
        return MixtureEmissionParams(Simplex(), self.inner.constraints())

    def closed_form_blocks(self) -> MixtureEmissionParams:
        return MixtureEmissionParams(True, self.inner.closed_form_blocks())

    def sample(self, key: Array, params: MixtureEmissionParams, labels: Array) -> Array:
        """One draw per state in ``labels``: a mixture component, then the inner family's draw."""
        key_mix, key_draw = jax.random.split(key)
        mix = jax.random.categorical(key_mix, jnp.log(params.weights[labels]), axis=-1)
        return self.inner.sample(key_draw, params.components, labels * self.num_mixture + mix)
