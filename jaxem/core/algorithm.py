"""The configured algorithm: a model, an M-step strategy, an acceleration and a chunk size.

:func:`em` builds an :class:`EM`, which every driver takes (``jaxem.fit(algo, ...)``). It is frozen
and hashable, so a compiled fit is reused for an equal configuration. Its :attr:`EM.kernel` is the
``(init, step)`` pair the drivers loop over; its chunk size configures the passes over the rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import jax

from jaxem.core.accelerate import Squarem, make_accelerator
from jaxem.core.estep import num_rows
from jaxem.core.kernel import EMKernel
from jaxem.core.model import Model
from jaxem.core.mstep import ClosedForm, MStep
from jaxem.core.rows import Rows, chunk_width, default_chunk_size

Array = jax.Array


@dataclass(frozen=True)
class EM:
    """A configured EM algorithm (frozen and hashable, so jit caches compiled fits by value).

    Build it with :func:`em`.

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (200, 2))
        >>> algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2)))
        >>> algo == jaxem.em(jaxem.Mixture(jaxem.Gaussian(2)))  # equal settings, one compilation
        True
        >>> params = algo.model.init(jax.random.key(0), x, None)
        >>> new_params, log_likelihood = jax.jit(algo.step)(params, x)  # one EM iteration
        >>> bool(algo.log_likelihood(new_params, x) >= log_likelihood)
        True
    """

    model: Model
    mstep: MStep = ClosedForm()  # noqa: RUF009  (frozen and stateless: one shared instance is safe)
    chunk_size: int | None = None
    accelerate: Squarem | None = None

    @property
    def kernel(self) -> Any:
        """The ``(init, step)`` kernel the drivers loop over (accelerated if asked for)."""
        kernel = EMKernel(self.model, self.mstep)
        return kernel if self.accelerate is None else self.accelerate(kernel)

    def for_data(self, x: Any, lanes: int = 1) -> EM:
        """This configuration with a chunk size chosen for ``x`` and ``lanes`` restarts, unless
        one was given."""
        if self.chunk_size is not None:
            return self
        size = default_chunk_size(num_rows(x), chunk_width(self.model, x), lanes)
        return dataclasses.replace(self, chunk_size=size)

    def rows(self, x: Any, row_weights: Array | None = None) -> Rows:
        """``x`` as rows in memory, chunked by this configuration."""
        return Rows.in_memory(x, row_weights, self.chunk_size)

    def e_pass(self, params: Any, x: Any, row_weights: Array | None = None) -> tuple[Any, Array]:
        """One pass over the data: summed statistics and the total log-likelihood (plus log
        prior) at ``params``."""
        stats, log_likelihood, _ = EMKernel(self.model).e_pass(params, self.rows(x, row_weights))
        return stats, log_likelihood

    def log_likelihood(self, params: Any, x: Any, row_weights: Array | None = None) -> Array:
        """Total log-likelihood (plus log prior under MAP-EM) of the data at ``params``."""
        return self.e_pass(params, x, row_weights)[1]

    def step(self, params: Any, x: Any, row_weights: Array | None = None) -> tuple[Any, Array]:
        """One EM iteration (never accelerated): new parameters and the total log-likelihood (plus
        log prior) at the old ones."""
        kernel = EMKernel(self.model, self.mstep)
        rows = self.rows(x, row_weights)
        state = self.mstep.init_state(self.model, params)
        new, _, info = kernel.em_step(params, state, rows)
        return new, info.log_likelihood


def em(
    model: Model,
    mstep: MStep | None = None,
    chunk_size: int | None = None,
    accelerate: Any = None,
) -> EM:
    """Configure EM for ``model``.

    Args:
        model: e.g. ``jaxem.Mixture(jaxem.Gaussian(3))``.
        mstep: :class:`jaxem.ClosedForm` (the default) or a gradient M-step.
        chunk_size: rows per chunk of every pass over the data; ``None`` picks one from the sizes
            at fit time.
        accelerate: ``None`` (plain EM) or ``"squarem"`` (or a :class:`jaxem.Squarem`): SQUAREM
            extrapolation, still monotone; ``FitResult.num_iters`` then counts E-steps.

    Example:
        >>> import jaxem
        >>> algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(3)), chunk_size=1024)
        >>> algo.chunk_size
        1024
    """
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}.")
    return EM(
        model, ClosedForm() if mstep is None else mstep, chunk_size, make_accelerator(accelerate)
    )


__all__ = ["EM", "em"]
