"""SQUAREM acceleration of any EM kernel, with a safeguard that keeps the fit monotone.

SQUAREM (Varadhan & Roland, 2008, step length S3) takes two EM steps ``t1 = F(t0)``, ``t2 = F(t1)``
and jumps along the quadratic through them,

    t' = t0 + 2 a r + a^2 v,   r = t1 - t0,   v = t2 - 2 t1 + t0,   a = |r| / |v|,

then takes one more EM step from ``t'`` to stabilise. The jump happens in the unconstrained space
the model's ``constraints()`` declare (the same map the gradient M-step optimises in: log weights
for a mixture's simplex, a Cholesky factor with an unconstrained diagonal, ...), so mixture weights
stay on the simplex and covariances positive definite. An extrapolated point whose objective is
below that of ``t1`` (or is not finite) is rejected and the fit continues from ``t2`` instead, so
the objective of the accepted iterates never decreases. The step bound grows by ``step_factor``
each time the maximal step is accepted and shrinks when it is rejected (the SQUAREM package's rule).

:func:`squarem` turns a kernel into a kernel: each of its steps is exactly one E-step and M-step of
the kernel it wraps (a SQUAREM cycle is three steps, at ``t0``, ``t1`` and ``t'``, tracked by a
phase counter), so restarts under ``vmap`` stay in lockstep, ``iteration`` counts E-steps as for
plain EM, the M-step strategy's carried state goes through every step, and convergence is judged
by the same rule: an EM step (``t0 -> t1`` or ``t1 -> t2``) changed the mean objective by less than
``tol``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxem.core import constraints
from jaxem.core.kernel import EMInfo, EMState, advance

Array = jax.Array

PHASE_BASE, PHASE_FIRST, PHASE_EXTRAPOLATED = 0, 1, 2


class SquaremState(NamedTuple):
    """Where a SQUAREM cycle stands.

    Attributes:
        phase: which point the next E-step evaluates: 0 the base ``t0``, 1 its EM image ``t1``,
            2 the extrapolated point ``t'``.
        point: the parameters the next E-step evaluates.
        base: ``t0``.
        first: ``t1 = F(t0)``.
        second: ``t2 = F(t1)``.
        base_objective: mean objective at ``t0``.
        first_objective: mean objective at ``t1``.
        previous: mean objective at the point whose EM image is ``t0`` (``-inf`` at the start).
        step: the step length ``a`` of the extrapolation in flight.
        step_max: the current upper bound on ``a``.
    """

    phase: Array
    point: Any
    base: Any
    first: Any
    second: Any
    base_objective: Array
    first_objective: Array
    previous: Array
    step: Array
    step_max: Array


def to_unconstrained(model: Any, params: Any) -> Any:
    """``params`` in the unconstrained space of ``model.constraints()`` (itself without them)."""
    declared = getattr(model, "constraints", None)
    return params if declared is None else constraints.unconstrain(declared(), params)


def from_unconstrained(model: Any, unconstrained: Any) -> Any:
    """Inverse of :func:`to_unconstrained`."""
    declared = getattr(model, "constraints", None)
    return unconstrained if declared is None else constraints.constrain(declared(), unconstrained)


def _select(condition: Array, on_true: Any, on_false: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), on_true, on_false)


def _all_finite(tree: Any) -> Array:
    flags = [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def _squared_norm(tree: Any) -> Array:
    return sum(jnp.sum(jnp.where(jnp.isfinite(a), a * a, 0)) for a in jax.tree.leaves(tree))


@dataclass(frozen=True)
class Squarem:
    """SQUAREM with the S3 step length, for ``jaxem.em(model, accelerate=Squarem())``.

    ``accelerate="squarem"`` uses the defaults.

    Args:
        step_min: the smallest step length (1 makes ``t'`` equal ``t2``, i.e. plain EM).
        step_max: the initial upper bound on the step length.
        step_factor: the factor by which the bound grows after an accepted maximal step and shrinks
            after a rejected one (never below ``step_max``).

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (200, 2))
        >>> algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2)), accelerate=jaxem.Squarem())
        >>> result = jaxem.fit(algo, jax.random.key(0), x, tol=1e-6, max_iter=300)
        >>> int(result.status) == int(jaxem.Status.CONVERGED)
        True
    """

    step_min: float = 1.0
    step_max: float = 1.0
    step_factor: float = 4.0

    def __post_init__(self) -> None:
        if not 1.0 <= self.step_min <= self.step_max:
            raise ValueError(
                f"Squarem needs 1 <= step_min <= step_max, got step_min={self.step_min!r} and "
                f"step_max={self.step_max!r}."
            )
        if not self.step_factor >= 1.0:
            raise ValueError(f"Squarem step_factor must be at least 1, got {self.step_factor!r}.")

    def __call__(self, kernel: Any) -> SquaremKernel:
        """``kernel`` accelerated by SQUAREM with these settings (see :func:`squarem`)."""
        return SquaremKernel(kernel, self)

    def start(self, params: Any, dtype: Any) -> SquaremState:
        """The cycle before the first E-step, which evaluates ``params``."""
        minus_inf = jnp.array(-jnp.inf, dtype)
        return SquaremState(
            phase=jnp.array(PHASE_BASE),
            point=params,
            base=params,
            first=params,
            second=params,
            base_objective=minus_inf,
            first_objective=minus_inf,
            previous=minus_inf,
            step=jnp.array(self.step_min, dtype),
            step_max=jnp.array(self.step_max, dtype),
        )

    def extrapolate(self, model: Any, state: SquaremState, second: Any) -> tuple[Any, Array]:
        """The S3 point ``t'`` from ``t0``, ``t1``, ``t2`` and the clipped step length."""
        u0 = to_unconstrained(model, state.base)
        u1 = to_unconstrained(model, state.first)
        u2 = to_unconstrained(model, second)
        r = jax.tree.map(jnp.subtract, u1, u0)
        v = jax.tree.map(lambda a, b, c: c - 2 * b + a, u0, u1, u2)
        r2, v2 = _squared_norm(r), _squared_norm(v)
        raw = jnp.sqrt(r2 / jnp.where(v2 > 0, v2, 1))
        step = jnp.clip(jnp.where(v2 > 0, raw, self.step_min), self.step_min, state.step_max)
        step = step.astype(state.step.dtype)

        def jump(a: Array, dr: Array, dv: Array, fallback: Array) -> Array:
            moved = a + 2 * step * dr + step * step * dv
            # A coordinate at +-inf (a log weight of an emptied component) stays where EM put it.
            return jnp.where(jnp.isfinite(moved), moved, fallback)

        u_new = jax.tree.map(jump, u0, r, v, u2)
        return from_unconstrained(model, u_new), step


@dataclass(frozen=True)
class SquaremKernel:
    """A kernel accelerated by SQUAREM: the same ``(init, step)`` pair, the state's
    ``accelerator`` field holding the cycle (a :class:`SquaremState`).

    Example:
        >>> import jax, jaxem
        >>> from jaxem.core.kernel import EMKernel
        >>> kernel = squarem(EMKernel(jaxem.Mixture(jaxem.Gaussian(2))))
        >>> kernel.model == jaxem.Mixture(jaxem.Gaussian(2))
        True
    """

    inner: Any
    settings: Squarem = Squarem()

    @property
    def model(self) -> Any:
        return self.inner.model

    @property
    def mstep(self) -> Any:
        return self.inner.mstep

    def init(self, params: Any, rows: Any, *, tol: Any = 1e-3, max_iter: Any = 100) -> EMState:
        state = self.inner.init(params, rows, tol=tol, max_iter=max_iter)
        return state._replace(accelerator=self.settings.start(params, rows.dtype))

    def log_likelihood(self, params: Any, rows: Any) -> Array:
        return self.inner.log_likelihood(params, rows)

    def step(self, state: EMState, rows: Any) -> tuple[EMState, EMInfo]:
        """One E-step and M-step of the cycle (at ``t0``, ``t1`` or ``t'``).

        The state's ``params`` is the newest accepted iterate and its ``log_likelihood`` the
        objective the stopping rule compares (``-inf`` on the comparison side where no EM step was
        completed).
        """
        cycle, settings = state.accelerator, self.settings
        image, mstep_state, info = self.inner.em_step(cycle.point, state.mstep_state, rows)
        objective = info.log_likelihood
        phase = cycle.phase
        at_base, at_first = phase == PHASE_BASE, phase == PHASE_FIRST
        extrapolated, step = settings.extrapolate(self.model, cycle, image)

        # Phase 2: accept F(t') only if t' did not lower the objective below that of t1.
        accept = jnp.isfinite(objective) & (objective >= cycle.first_objective) & _all_finite(image)
        hit_max = cycle.step >= cycle.step_max
        grown = jnp.where(hit_max, cycle.step_max * settings.step_factor, cycle.step_max)
        shrunk = jnp.where(
            hit_max,
            jnp.maximum(settings.step_max, cycle.step_max / settings.step_factor),
            cycle.step_max,
        )
        cycle_end_params = _select(accept, image, cycle.second)
        cycle_end_objective = jnp.where(accept, objective, cycle.first_objective)

        new_params = _select(at_base | at_first, image, cycle_end_params)
        recorded = jnp.where(at_base | at_first, objective, cycle_end_objective)
        minus_inf = jnp.array(-jnp.inf, objective.dtype)
        previous = jnp.where(
            at_base, cycle.previous, jnp.where(at_first, cycle.base_objective, minus_inf)
        )

        next_cycle = SquaremState(
            phase=(phase + 1) % 3,
            point=_select(at_base, image, _select(at_first, extrapolated, cycle_end_params)),
            base=_select(at_base, cycle.point, cycle.base),
            first=_select(at_base, image, cycle.first),
            second=_select(at_first, image, cycle.second),
            base_objective=jnp.where(at_base, objective, cycle.base_objective),
            first_objective=jnp.where(at_first, objective, cycle.first_objective),
            previous=jnp.where(at_base | at_first, cycle.previous, cycle_end_objective),
            step=jnp.where(at_first, step, cycle.step),
            step_max=jnp.where(
                phase == PHASE_EXTRAPOLATED, jnp.where(accept, grown, shrunk), cycle.step_max
            ),
        )
        next_state = advance(
            state,
            new_params,
            recorded,
            previous,
            info.total_weight,
            mstep_state=mstep_state,
            accelerator=next_cycle,
        )
        accepted = jnp.where(phase == PHASE_EXTRAPOLATED, accept, info.accepted)
        return next_state, info._replace(accepted=accepted)


def squarem(kernel: Any, settings: Squarem | None = None) -> SquaremKernel:
    """``kernel`` accelerated by SQUAREM (default settings unless ``settings`` is given).

    Example:
        >>> import jaxem
        >>> from jaxem.core.kernel import EMKernel
        >>> accelerated = squarem(EMKernel(jaxem.Mixture(jaxem.Gaussian(2))))
        >>> accelerated.settings == Squarem()
        True
    """
    return SquaremKernel(kernel, Squarem() if settings is None else settings)


ACCELERATORS = {"squarem": Squarem}


def make_accelerator(accelerate: Any) -> Squarem | None:
    """An accelerator from ``None``, a name in :data:`ACCELERATORS` or an instance."""
    if accelerate is None or isinstance(accelerate, Squarem):
        return accelerate
    if isinstance(accelerate, str) and accelerate in ACCELERATORS:
        return ACCELERATORS[accelerate]()
    raise ValueError(
        f"Unknown accelerate {accelerate!r}: use None (plain EM), "
        f"{', '.join(repr(name) for name in ACCELERATORS)}, or an instance such as Squarem()."
    )


__all__ = [
    "ACCELERATORS",
    "Squarem",
    "SquaremKernel",
    "SquaremState",
    "from_unconstrained",
    "make_accelerator",
    "squarem",
    "to_unconstrained",
]
