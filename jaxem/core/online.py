"""Online (stepwise) EM as a kernel: one mini-batch per step, statistics averaged by a decaying
step.

Stepwise EM (Cappé & Moulines, 2009) keeps a running average of the statistics of mini-batches,
moving it toward each new batch's by the step ``(t + t0) ** -kappa``, and takes the M-step of the
average. It is not exact EM (its objective is not monotone), but the same pieces serve it: a
mini-batch is a rows object (:mod:`jaxem.core.rows`), so it can be chunked, sharded over devices
or read from a stream, and every feature that travels in the rows (row weights, missing values,
labels) and the M-step's frozen parameters work as in a batch fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxem.core.kernel import EMInfo
from jaxem.core.mixture import Mixture, MixtureParams, MixtureStats
from jaxem.core.model import ConjugateComponents
from jaxem.core.mstep import ClosedForm, frozen_mask, held_m_step
from jaxem.core.rows import Rows

Array = jax.Array


class OnlineState(NamedTuple):
    """State of online EM.

    Attributes:
        params: the current parameters.
        reference: the parameters the statistics are accumulated about (the initial ones), so that
            statistics of different mini-batches can be averaged.
        stats: running average of the per-unit-weight statistics (``None`` before the first step).
        seen: total weight of the data seen.
        count: steps (mini-batches) done.
    """

    params: MixtureParams
    reference: MixtureParams
    stats: MixtureStats | None
    seen: Array
    count: Array


@dataclass(frozen=True)
class OnlineEM:
    """Stepwise EM (Cappé & Moulines, 2009) for a mixture whose components have a closed form.

    After the ``t``-th mini-batch (``t = 0, 1, ...``) the running statistics move toward the batch's
    by the step ``(t + step_offset) ** -step_exponent`` (the first step is 1), and the parameters
    are the M-step of the running statistics. ``0.5 < step_exponent <= 1`` makes the steps' sum
    diverge and their squares' sum converge, as convergence needs.

    Args:
        model: a :class:`jaxem.Mixture` of closed-form components.
        step_exponent, step_offset: the step size's ``kappa`` and ``t0``.
        mstep: a :class:`jaxem.ClosedForm`, whose ``frozen`` parameters stay at their initial
            values (a gradient M-step has no statistics to average: use exact EM for it).

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (512, 2))
        >>> model = jaxem.Mixture(jaxem.Gaussian(2))
        >>> online = jaxem.streaming.OnlineEM(model)
        >>> state = online.init(model.init(jax.random.key(1), x, None))
        >>> for batch in x.reshape(8, 64, 2):
        ...     state, batch_log_likelihood = online.update(state, batch)
        >>> int(state.count)
        8
    """

    model: Mixture
    step_exponent: float = 0.6
    step_offset: float = 1.0
    mstep: ClosedForm = ClosedForm()  # noqa: RUF009  (frozen: one shared instance is safe)

    def __post_init__(self) -> None:
        if not isinstance(self.mstep, ClosedForm):
            raise ValueError(
                f"OnlineEM takes a jaxem.ClosedForm M-step (with frozen parameters if wanted), "
                f"got {type(self.mstep).__name__}: a gradient M-step has no statistics to "
                "average. Fit such a model with exact EM (jaxem.fit or fit_stream)."
            )
        if not isinstance(self.model, Mixture) or not isinstance(
            self.model.components, ConjugateComponents
        ):
            raise ValueError(
                "OnlineEM needs a jaxem.Mixture of components with a closed-form M-step "
                "(ConjugateComponents): online EM averages their statistics."
            )
        if not 0.5 < self.step_exponent <= 1:
            raise ValueError(
                f"step_exponent must be in (0.5, 1] for online EM to converge, got "
                f"{self.step_exponent!r}."
            )
        if not self.step_offset >= 0:
            raise ValueError(f"step_offset must be non-negative, got {self.step_offset!r}.")

    def step_size(self, count: Array) -> Array:
        """The weight of the ``count``-th mini-batch in the running statistics."""
        count = jnp.asarray(count)
        decayed = (count + self.step_offset) ** -self.step_exponent
        return jnp.where(count == 0, 1.0, decayed)

    def init(self, params: MixtureParams) -> OnlineState:
        """The state before any data, from initial parameters."""
        dtype = params.weights.dtype
        return OnlineState(params, params, None, jnp.zeros((), dtype), jnp.zeros((), jnp.int32))

    def step(self, state: OnlineState, rows: Any) -> tuple[OnlineState, EMInfo]:
        """One mini-batch (a rows object): the new state, and the batch's total log-likelihood
        before the update."""

        def chunk(xc: Any, wc: Array | None, _: Array) -> Any:
            return self.model.e_step(state.params, xc, wc, reference=state.reference)

        stats, loglik = rows.reduce(chunk)
        batch = rows.total_weight(loglik.dtype)
        gamma = self.step_size(state.count).astype(loglik.dtype)
        fresh = jax.tree.map(lambda s: s / batch, stats)
        if state.stats is None:
            average = fresh
        else:
            average = jax.tree.map(lambda a, s: a + gamma * (s - a), state.stats, fresh)
        seen = state.seen + batch
        # Scaled to the weight seen, so a weight prior counts as much as in a batch fit of it.
        scaled = jax.tree.map(lambda a: a * seen, average)
        mask = frozen_mask(self.mstep.frozen, self.model, state.reference)
        params, _ = held_m_step(self.model, state.reference, scaled, mask)
        new = OnlineState(params, state.reference, average, seen, state.count + 1)
        return new, EMInfo(loglik, batch, jnp.array(True))

    def update(
        self, state: OnlineState, x: Any, row_weights: Array | None = None
    ) -> tuple[OnlineState, Array]:
        """:meth:`step` on a mini-batch held in memory: the new state and the batch's total
        log-likelihood before the update."""
        state, info = self.step(state, Rows.in_memory(x, row_weights))
        return state, info.log_likelihood


__all__ = ["OnlineEM", "OnlineState"]
