"""M-step strategies: how new parameters are computed from one E-step's statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import jax

Array = jax.Array


class MStep(Protocol):
    """An M-step: new parameters from the old ones and the summed E-step statistics.

    ``x``, ``weights`` and ``chunk_size`` are passed so that a strategy that needs the data (the
    gradient M-step re-evaluates Q chunk by chunk) can have it; the closed form ignores them.
    """

    def update(
        self,
        model: Any,
        params: Any,
        stats: Any,
        x: Any,
        weights: Array | None,
        chunk_size: int | None,
    ) -> Any: ...


@dataclass(frozen=True)
class ClosedForm:
    """The model's own exact M-step (``model.m_step``)."""

    def update(
        self,
        model: Any,
        params: Any,
        stats: Any,
        x: Any,
        weights: Array | None,
        chunk_size: int | None,
    ) -> Any:
        del x, weights, chunk_size
        return model.m_step(params, stats)
