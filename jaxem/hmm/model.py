"""Hidden Markov models as a jaxem model: the data axis is sequences.

The data are :class:`Sequences`: observations padded to ``[B, T, ...]`` and the true ``lengths``
``[B]``. The E-step runs forward-backward on each sequence of a chunk (vmapped) and returns
statistics that add over sequences, so the engine's chunking, restarts (vmap) and sharding work
unchanged; per-sequence weights weight whole sequences.

The parameters have three parts, each with its own statistics and M-step: the initial-state
distribution, the transition matrix (both closed form, MAP under optional Dirichlet priors and a
sticky diagonal) and the emissions, which are any jaxem component family: state ``k`` emits from
component ``k``. The emission densities come from ``log_prob_chunk`` and a conjugate family's
statistics from ``chunk_stats`` with the smoothed posteriors as responsibilities (padding has weight
0); a non-conjugate family is updated by a gradient M-step on
:meth:`HiddenMarkovModel.expected_log_joint`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxem.core.constraints import Simplex
from jaxem.core.estep import weighted_sum
from jaxem.core.model import (
    Components,
    ConjugateComponents,
    conditional_m_step,
    count_free_parameters,
)
from jaxem.hmm.inference import INFERENCE_METHODS, Smoothed, forward_backward, viterbi

Array = jax.Array

PARTS = "ste"


class Sequences(NamedTuple):
    """A batch of sequences padded to a common length.

    Attributes:
        observations: ``[B, T, ...]`` (or a pytree of such arrays); steps past a sequence's length
            are padding and may hold any finite value.
        lengths: number of real steps of each sequence, shape ``[B]``.
    """

    observations: Any
    lengths: Array


def pad_sequences(x: Any, lengths: Any = None) -> Sequences:
    """Split concatenated sequences (hmmlearn's ``X, lengths``) into a padded :class:`Sequences`.

    Padding repeats each sequence's last observation, so it is always a valid value of the family.

    Example:
        >>> import numpy as np
        >>> data = pad_sequences(np.arange(5.0)[:, None], [2, 3])
        >>> data.observations.shape, data.lengths.tolist()
        ((2, 3, 1), [2, 3])
    """
    x = np.asarray(x)
    if x.ndim == 0:
        raise ValueError("X must have one row per time step; got a scalar.")
    lengths = np.array([x.shape[0]] if lengths is None else lengths)
    if lengths.ndim != 1 or lengths.size == 0:
        raise ValueError("lengths must be a non-empty 1-d sequence of sequence lengths.")
    if not np.issubdtype(lengths.dtype, np.integer) and not np.all(lengths == np.round(lengths)):
        raise ValueError(f"lengths must be integers, got {lengths!r}.")
    lengths = lengths.astype(np.int64)
    if np.any(lengths < 1):
        raise ValueError("lengths must all be positive: drop empty sequences.")
    if lengths.sum() != x.shape[0]:
        raise ValueError(
            f"lengths sum to {int(lengths.sum())} but X has {x.shape[0]} rows: the lengths of the "
            "sequences must add up to the number of rows of X."
        )
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    steps = np.arange(lengths.max())
    rows = starts[:, None] + np.minimum(steps[None, :], lengths[:, None] - 1)
    return Sequences(x[rows], lengths)


def sequences_from_mask(observations: Any, mask: Any) -> Sequences:
    """:class:`Sequences` from padded observations and a ``[B, T]`` mask of real steps.

    Each row of the mask must be a run of ones followed by zeros (real steps, then padding).
    """
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape [sequences, steps], got shape {mask.shape}.")
    lengths = mask.sum(axis=1)
    if not np.array_equal(mask, np.arange(mask.shape[1])[None, :] < lengths[:, None]):
        raise ValueError(
            "Each row of mask must be ones (real steps) followed by zeros (padding); move the "
            "padding of every sequence to its end."
        )
    return Sequences(observations, lengths)


def unpad(values: Any, lengths: Any) -> np.ndarray:
    """Concatenate the real steps of values ``[B, T, ...]`` into ``[sum(lengths), ...]``."""
    values = np.asarray(values)
    lengths = np.asarray(lengths).astype(np.int64)
    keep = np.arange(values.shape[1])[None, :] < lengths[:, None]
    return values[keep]


class HMMParams(NamedTuple):
    """Parameters of a hidden Markov model.

    Attributes:
        initial: initial-state probabilities, shape ``[K]``.
        transition: transition matrix ``[K, K]``; row ``i`` is ``p(z_t | z_{t-1} = i)``.
        emissions: the emission family's parameters (component ``k`` is state ``k``).
    """

    initial: Array
    transition: Array
    emissions: Any


class HMMStats(NamedTuple):
    """Additive statistics of the HMM E-step.

    Attributes:
        initial: expected counts of the first state, ``[K]``.
        transition: expected transition counts, ``[K, K]``.
        emissions: the family's summed statistics, or ``None`` when it has no closed form.
    """

    initial: Array
    transition: Array
    emissions: Any


def _flatten_steps(observations: Any) -> Any:
    return jax.tree.map(lambda a: a.reshape((-1, *a.shape[2:])), observations)


def _steps_shape(observations: Any) -> tuple[int, int]:
    leaf = jax.tree.leaves(observations)[0]
    return leaf.shape[0], leaf.shape[1]


def _dirichlet_map(counts: Array, concentration_minus_one: Array | float, old: Array) -> Array:
    """Normalised ``max(counts + alpha - 1, 0)`` along the last axis; a row with nothing to go on
    (no counts, no prior mass) keeps its old value instead of becoming 0/0."""
    raw = jnp.maximum(counts + concentration_minus_one, 0)
    total = jnp.sum(raw, axis=-1, keepdims=True)
    return jnp.where(total > 0, raw / jnp.where(total > 0, total, 1), old).astype(old.dtype)


def _dirichlet_log_density(probs: Array, concentration_minus_one: Array | float) -> Array:
    coef = jnp.broadcast_to(jnp.asarray(concentration_minus_one, probs.dtype), probs.shape)
    # where, not multiply: a zero probability with a flat prior contributes 0, not 0 x -inf.
    return jnp.sum(jnp.where(coef != 0, coef * jnp.log(probs), 0))


@dataclass(frozen=True)
class HiddenMarkovModel:
    """A hidden Markov model with ``emissions.num_components`` states, for :func:`jaxem.em`.

    Args:
        emissions: the emission family (any :class:`jaxem.Components`); its component ``k`` is
            state ``k``'s emission density.
        initial_concentration: symmetric Dirichlet prior on the initial probabilities (1: flat).
        transition_concentration: symmetric Dirichlet prior on each row of the transition matrix
            (1: flat).
        stickiness: ``kappa`` added to the Dirichlet concentration of the self-transition of each
            row (a sticky HMM; 0: none).
        update: the parts the M-step re-estimates: ``"s"`` initial, ``"t"`` transition,
            ``"e"`` emissions; leave a letter out to keep that part as initialised (the same as
            naming it in the M-step's ``frozen``, see :attr:`frozen_parameters`).
        inference: ``"sequential"`` (``lax.scan`` in log space), ``"parallel"``
            (``lax.associative_scan``, O(log T) depth: for long sequences on accelerators) or
            ``"scaled"`` (``lax.scan`` of probability products rescaled at every step, like
            hmmlearn's "scaling": faster on CPUs for batches of sequences; a state whose share of a
            step's message falls below the dtype's smallest number, about e^-745 in float64 and
            e^-103 in float32, counts as impossible there).

    The defaults fit plain maximum likelihood.

    Example:
        >>> import jax, jaxem
        >>> from jaxem.hmm import HiddenMarkovModel, pad_sequences
        >>> x = jax.random.normal(jax.random.key(0), (300, 2))
        >>> data = pad_sequences(x, [100, 200])
        >>> model = HiddenMarkovModel(jaxem.Gaussian(2, covariance_type="diag"))
        >>> result = jaxem.fit(jaxem.em(model), jax.random.key(1), data, max_iter=20)
        >>> result.params.transition.shape
        (2, 2)
    """

    emissions: Components
    initial_concentration: float = 1.0
    transition_concentration: float = 1.0
    stickiness: float = 0.0
    update: str = PARTS
    inference: str = "sequential"

    def __post_init__(self) -> None:
        if not isinstance(self.emissions, Components):
            raise ValueError(
                f"emissions must be a jaxem.Components family (e.g. jaxem.Gaussian(3)), got "
                f"{type(self.emissions).__name__}."
            )
        for name in ("initial_concentration", "transition_concentration"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}.")
        if not self.stickiness >= 0:
            raise ValueError(f"stickiness must be non-negative, got {self.stickiness!r}.")
        unknown = set(self.update) - set(PARTS)
        if unknown:
            raise ValueError(
                f"update has unknown letters {''.join(sorted(unknown))!r}: use a subset of "
                f"{PARTS!r} (s: initial, t: transition, e: emissions)."
            )
        if self.inference not in INFERENCE_METHODS:
            raise ValueError(
                f"Unknown inference {self.inference!r}: use one of {', '.join(INFERENCE_METHODS)}."
            )

    @property
    def num_components(self) -> int:
        """The number of hidden states."""
        return self.emissions.num_components

    # ---- densities and inference ---------------------------------------------------------------

    def log_emissions(self, params: HMMParams, observations: Any) -> Array:
        """``log p(x_bt | z = k)`` for padded observations, shape ``[B, T, K]``."""
        b, t = _steps_shape(observations)
        flat = self.emissions.log_prob_chunk(params.emissions, _flatten_steps(observations))
        return flat.reshape(b, t, self.num_components)

    def smooth(self, params: HMMParams, data: Sequences) -> Smoothed:
        """Forward-backward on every sequence; each field of the result gains a leading ``B``
        axis."""
        log_em = self.log_emissions(params, data.observations)
        run = jax.vmap(forward_backward, in_axes=(None, None, 0, 0, None))
        return run(
            jnp.log(params.initial),
            jnp.log(params.transition),
            log_em,
            data.lengths,
            self.inference,
        )

    def most_likely_states(self, params: HMMParams, data: Sequences) -> tuple[Array, Array]:
        """Viterbi paths ``[B, T]`` and their joint log-probabilities ``[B]``."""
        log_em = self.log_emissions(params, data.observations)
        run = jax.vmap(viterbi, in_axes=(None, None, 0, 0))
        return run(jnp.log(params.initial), jnp.log(params.transition), log_em, data.lengths)

    # ---- the Model contract ----------------------------------------------------------------------

    def _step_weights(self, data: Sequences, row_weights: Array | None, dtype: Any) -> Array:
        """Per time step weight ``[B, T]``: the sequence's weight on real steps, 0 on padding."""
        b, t = _steps_shape(data.observations)
        valid = jnp.arange(t)[None, :] < data.lengths[:, None]
        w = jnp.ones((b,), dtype) if row_weights is None else row_weights.astype(dtype)
        return jnp.where(valid, w[:, None], 0)

    def init(self, key: Array, x: Sequences, row_weights: Array | None) -> HMMParams:
        """Uniform initial and transition probabilities; emissions from the family's ``init`` on
        the real steps of all sequences."""
        observations = x.observations
        dtype = jax.tree.leaves(observations)[0].dtype
        step_weights = self._step_weights(x, row_weights, dtype).reshape(-1)
        emissions = self.emissions.init(key, _flatten_steps(observations), step_weights)
        k = self.num_components
        return HMMParams(
            jnp.full((k,), 1.0 / k, dtype), jnp.full((k, k), 1.0 / k, dtype), emissions
        )

    def e_step(
        self, params: HMMParams, x: Sequences, row_weights: Array | None
    ) -> tuple[HMMStats, Array]:
        smoothed = self.smooth(params, x)
        dtype = smoothed.posteriors.dtype
        emission_stats = None
        if isinstance(self.emissions, ConjugateComponents):
            step_weights = self._step_weights(x, row_weights, dtype)
            resp = jnp.where(
                step_weights[..., None] > 0, smoothed.posteriors * step_weights[..., None], 0
            )
            emission_stats = self.emissions.chunk_stats(
                params.emissions,
                _flatten_steps(x.observations),
                resp.reshape(-1, self.num_components),
            )
        stats = HMMStats(
            weighted_sum(smoothed.posteriors[:, 0], row_weights),
            weighted_sum(smoothed.transition_counts, row_weights),
            emission_stats,
        )
        return stats, weighted_sum(smoothed.log_likelihood, row_weights)

    def _transition_prior(self, dtype: Any) -> Array:
        k = self.num_components
        return self.transition_concentration - 1.0 + self.stickiness * jnp.eye(k, dtype=dtype)

    @property
    def frozen_parameters(self) -> tuple[str, ...]:
        """The parts left out of ``update``, held by the M-step like its own ``frozen``."""
        names = {"s": "initial", "t": "transition", "e": "emissions"}
        return tuple(name for letter, name in names.items() if letter not in self.update)

    def m_step(self, params: HMMParams, stats: HMMStats) -> HMMParams:
        frozen = HMMParams(False, False, jax.tree.map(lambda _: False, params.emissions))
        return self.m_step_given(params, stats, frozen)

    def m_step_given(self, params: HMMParams, stats: HMMStats, frozen: HMMParams) -> HMMParams:
        """The M-step with the parts marked in ``frozen`` held (they are independent blocks of
        Q; the emissions hold theirs as the family can)."""
        initial, transition, emissions = params
        if not frozen.initial:
            initial = _dirichlet_map(stats.initial, self.initial_concentration - 1.0, initial)
        if not frozen.transition:
            prior = self._transition_prior(transition.dtype)
            transition = _dirichlet_map(stats.transition, prior, transition)
        if stats.emissions is not None:
            emissions = conditional_m_step(
                self.emissions, emissions, stats.emissions, frozen.emissions
            )
        return HMMParams(initial, transition, emissions)

    def log_prior(self, params: HMMParams) -> Array:
        lp = self.emissions.log_prior(params.emissions)
        if self.initial_concentration != 1.0:
            lp = lp + _dirichlet_log_density(params.initial, self.initial_concentration - 1.0)
        if self.transition_concentration != 1.0 or self.stickiness != 0.0:
            prior = self._transition_prior(params.transition.dtype)
            lp = lp + _dirichlet_log_density(params.transition, prior)
        return lp

    def constraints(self) -> HMMParams:
        """Probabilities on the simplex (rows for the transition matrix); the emissions as the
        family declares (used by the gradient M-step)."""
        return HMMParams(Simplex(), Simplex(), self.emissions.constraints())

    def closed_form_blocks(self) -> HMMParams:
        """Initial and transition probabilities always have a closed form; the emissions' blocks
        as the family marks them (none for a non-conjugate family)."""
        conjugate = isinstance(self.emissions, ConjugateComponents)
        return HMMParams(True, True, self.emissions.closed_form_blocks() if conjugate else False)

    def _expected_complete_log_likelihood(
        self, params: HMMParams, smoothed: Smoothed, observations: Any
    ) -> Array:
        """``E_q[log p(x, z)]`` per sequence ``[B]`` under the smoothed posteriors ``q``."""
        log_em = self.log_emissions(params, observations)

        def expect(counts: Array, log_values: Array) -> Array:
            # where, not multiply: a state with zero posterior may have log-probability -inf.
            terms = jnp.where(counts > 0, counts * log_values, 0)
            return jnp.sum(terms.reshape(terms.shape[0], -1), axis=-1)

        return (
            expect(smoothed.posteriors[:, 0], jnp.log(params.initial))
            + expect(smoothed.transition_counts, jnp.log(params.transition))
            + expect(smoothed.posteriors, log_em)
        )

    def expected_log_joint(
        self, params: HMMParams, params_old: HMMParams, x: Sequences, row_weights: Array | None
    ) -> Array:
        """Q(params | params_old) on one chunk of sequences, without the prior.

        Posteriors come from ``params_old`` under ``stop_gradient``, so a gradient M-step
        differentiates only through ``params``.
        """
        smoothed = jax.lax.stop_gradient(self.smooth(jax.lax.stop_gradient(params_old), x))
        per_sequence = self._expected_complete_log_likelihood(params, smoothed, x.observations)
        return weighted_sum(per_sequence, row_weights)

    def entropy(self, params: HMMParams, x: Sequences, row_weights: Array | None) -> Array:
        """Weighted entropy of the posterior over state paths on one chunk of sequences.

        ``H(z | x) = log p(x) - E_q[log p(x, z)]``: the expectation needs only the smoothed
        marginals and the summed pairwise marginals, so no path is ever enumerated. Used by
        :func:`jaxem.icl`.
        """
        smoothed = self.smooth(params, x)
        expected = self._expected_complete_log_likelihood(params, smoothed, x.observations)
        # An entropy is non-negative; the difference can round to just below 0 when q is certain.
        return weighted_sum(jnp.maximum(smoothed.log_likelihood - expected, 0), row_weights)

    def num_free_parameters(self, num_features: int) -> int:
        """``K - 1`` initial and ``K (K - 1)`` transition probabilities plus the emission family's
        parameters on ``num_features`` features (hmmlearn's count; parts left out of ``update``
        still count, as frozen parameters of a mixture do).

        Example:
            >>> import jaxem
            >>> HiddenMarkovModel(jaxem.Gaussian(3, "diag")).num_free_parameters(2)
            20
        """
        k = self.num_components
        return (k - 1) + k * (k - 1) + count_free_parameters(self.emissions, num_features)

    def num_observations(self, x: Sequences, row_weights: Array | None) -> Array:
        """The (weighted) number of real time steps, the sample size of BIC for an HMM."""
        dtype = jax.tree.leaves(x.observations)[0].dtype
        return jnp.sum(self._step_weights(x, row_weights, dtype))
