"""M-step strategies: how new parameters are computed from one E-step's statistics.

:class:`ClosedForm` calls the model's exact M-step. :class:`Gradient` is generalized EM: it
maximises Q(theta | theta_old) + log p(theta) by autodiff with an optax optimizer and keeps the new
parameters only if that objective did not decrease, so the log-likelihood (or log-posterior) never
goes down.

How a family plugs into the gradient M-step (all optional, with safe defaults):

* ``Components.constraints()`` returns a pytree of :mod:`jaxem.core.constraints` objects that is a
  prefix of the family's parameters (``None`` or :class:`~jaxem.core.constraints.Real` for
  unconstrained leaves). The optimiser works on ``inverse(params)`` and maps back with ``forward``,
  so a family never writes ``exp`` or ``softplus`` by hand.
* ``Components.closed_form_blocks()`` returns a prefix pytree of Python bools marking the leaves
  that the family's ``m_step`` sets exactly (a :class:`ConjugateComponents` defaults to ``True``,
  every block; a plain :class:`Components` to ``False``). A family with some closed-form blocks
  subclasses ``ConjugateComponents``, returns statistics for those blocks, lets ``m_step`` update
  them and pass the others through, and marks the others ``False``. The gradient M-step first sets
  the mixture weights and the marked blocks exactly (ECM), then improves the unmarked ones.

Any leaf can be held fixed in both strategies with ``frozen``: a tuple of dotted paths such as
``("weights", "components.means")`` (a path names a leaf or a whole subtree), or a prefix pytree of
bools matching the parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxem.core import constraints as cons
from jaxem.core.estep import reduce_chunks, total_weight

Array = jax.Array


class MStep(Protocol):
    """An M-step: new parameters from the old ones and the summed E-step statistics.

    ``x``, ``weights`` and ``chunk_size`` are passed so that a strategy that needs the data (the
    gradient M-step re-evaluates Q chunk by chunk) can have it; the closed form ignores them.

    A strategy that carries state across EM iterations (an optimizer's memory) also implements
    ``init_state(model, params)`` and ``update_with_state(..., state) -> (params, state)``; the
    engine threads that state through its loop (see :func:`init_mstep_state`, :func:`apply_mstep`).
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


def init_mstep_state(mstep: Any, model: Any, params: Any) -> Any:
    """The state an M-step carries across EM iterations (``None`` for a stateless one)."""
    init = getattr(mstep, "init_state", None)
    return None if init is None else init(model, params)


def apply_mstep(
    mstep: Any,
    model: Any,
    params: Any,
    stats: Any,
    x: Any,
    weights: Array | None,
    chunk_size: int | None,
    state: Any,
) -> tuple[Any, Any]:
    """Run ``mstep`` with its carried state if it has one: ``(new_params, new_state)``."""
    update = getattr(mstep, "update_with_state", None)
    if update is None:
        return mstep.update(model, params, stats, x, weights, chunk_size), state
    return update(model, params, stats, x, weights, chunk_size, state)


# ---- masks over parameter leaves -----------------------------------------------------------------


def _leaf_paths(params: Any) -> list[str]:
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return [jax.tree_util.keystr(path, simple=True, separator=".") for path, _ in flat]


def broadcast_prefix(prefix: Any, params: Any, fill: Any) -> list[Any]:
    """One entry per leaf of ``params`` from a prefix pytree (``None`` entries become ``fill``)."""
    if prefix is None:
        return [fill] * len(jax.tree.leaves(params))

    def expand(value: Any, sub: Any) -> Any:
        value = fill if value is None else value
        return jax.tree.map(lambda _: _Box(value), sub)

    expanded = jax.tree.map(
        expand, prefix, params, is_leaf=lambda v: v is None or isinstance(v, cons.Constraint)
    )
    return [box.value for box in jax.tree.leaves(expanded, is_leaf=lambda v: isinstance(v, _Box))]


@dataclass(frozen=True)
class _Box:
    """Holds a value as a pytree leaf (a bool or a constraint would otherwise be one anyway, but a
    ``None`` or a tuple would not)."""

    value: Any


def frozen_leaves(frozen: Any, params: Any) -> list[bool]:
    """Which leaves of ``params`` a ``frozen`` specification holds fixed.

    Raises ``ValueError`` when a path names no parameter.
    """
    if frozen is None or frozen == ():
        return [False] * len(jax.tree.leaves(params))
    if isinstance(frozen, str):
        frozen = (frozen,)
    if isinstance(frozen, (tuple, frozenset)) and all(isinstance(p, str) for p in frozen):
        paths = _leaf_paths(params)
        for f in frozen:
            if not any(p == f or p.startswith(f + ".") for p in paths):
                raise ValueError(
                    f"frozen names {f!r}, which is not a parameter: use one of {', '.join(paths)} "
                    "(or a prefix of one)."
                )
        return [any(p == f or p.startswith(f + ".") for f in frozen) for p in paths]
    return [bool(m) for m in broadcast_prefix(frozen, params, False)]


def _check_frozen(frozen: Any) -> Any:
    if isinstance(frozen, str):
        return (frozen,)
    if isinstance(frozen, list):
        frozen = tuple(frozen)
    try:
        hash(frozen)
    except TypeError:
        raise ValueError(
            "frozen must be hashable: a tuple of parameter paths such as ('weights',) or a "
            "NamedTuple of bools matching the parameters."
        ) from None
    return frozen


# ---- the objective of the M-step ----------------------------------------------------------------


def expected_objective(
    model: Any,
    params: Any,
    params_old: Any,
    x: Any,
    weights: Array | None,
    chunk_size: int | None,
    axis_name: str | None = None,
) -> Array:
    """Mean ``Q(params | params_old) + log p(params)``, reduced chunk by chunk.

    Responsibilities are recomputed from ``params_old`` (under ``stop_gradient``) in every chunk,
    so no N x K array is kept; this is what the gradient M-step differentiates. With ``axis_name``
    (inside ``shard_map``, each device holding a shard of the rows) Q and the total weight are
    summed over that axis, and so is Q's gradient: every device sees the same objective.
    """

    def local_q(p: Any, p_old: Any, x: Any, weights: Array | None) -> Array:
        return reduce_chunks(
            lambda xc, wc, _: model.expected_log_joint(p, p_old, xc, wc), x, weights, chunk_size
        )

    if axis_name is None:
        q = local_q(params, params_old, x, weights)
        total = total_weight(x, weights, q.dtype)
    else:
        q = _summed_over_axis(local_q, axis_name, params, params_old, x, weights)
        total = lax.psum(total_weight(x, weights, q.dtype), axis_name)
    return (q + jnp.asarray(model.log_prior(params), q.dtype)) / total


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _summed_over_axis(
    fn: Callable, axis_name: str, params: Any, params_old: Any, x: Any, weights: Any
) -> Array:
    """``psum(fn(params, params_old, x, weights))`` over ``axis_name``, with the gradient in
    ``params`` summed too.

    ``psum``'s own transpose (with shard_map's replication checks off) leaves each device its local
    gradient; the gradient of the global sum is the sum of the local ones.
    """
    return lax.psum(fn(params, params_old, x, weights), axis_name)


def _summed_forward(
    fn: Callable, axis_name: str, params: Any, params_old: Any, x: Any, weights: Any
) -> tuple[Array, Any]:
    value, pullback = jax.vjp(lambda p: fn(p, params_old, x, weights), params)
    return lax.psum(value, axis_name), pullback


def _summed_backward(fn: Callable, axis_name: str, pullback: Any, cotangent: Array) -> tuple:
    (grad,) = pullback(cotangent)
    # Only params are differentiated: the old parameters sit under stop_gradient, and the data
    # have no gradient.
    return lax.psum(grad, axis_name), None, None, None


_summed_over_axis.defvjp(_summed_forward, _summed_backward)


def _select(keep_new: Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(keep_new, a, b), new, old)


def _merge(mask: list[bool], new: Any, old: Any) -> Any:
    """Leaves of ``new`` where ``mask`` is True, of ``old`` elsewhere."""
    new_leaves, treedef = jax.tree.flatten(new)
    old_leaves = jax.tree.leaves(old)
    return jax.tree.unflatten(
        treedef, [n if m else o for m, n, o in zip(mask, new_leaves, old_leaves, strict=True)]
    )


# ---- closed form ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClosedForm:
    """The model's own exact M-step (``model.m_step``).

    Args:
        frozen: parameters held at their current values (see the module docstring). The other
            blocks take their closed form; where that closed form depends on a frozen block (a
            Gaussian's covariance on a frozen mean) the result is kept only if Q did not decrease,
            so EM stays monotone; use :class:`Gradient` with ``frozen`` for the exact conditional
            maximiser in that case.

    Example:
        >>> import jaxem
        >>> algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2)), jaxem.ClosedForm(frozen=("weights",)))
    """

    frozen: Any = ()
    # Set by jaxem.parallel when each device holds a shard of the rows (Q is summed over it).
    axis_name: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "frozen", _check_frozen(self.frozen))

    def update(
        self,
        model: Any,
        params: Any,
        stats: Any,
        x: Any,
        weights: Array | None,
        chunk_size: int | None,
    ) -> Any:
        new = model.m_step(params, stats)
        frozen = frozen_leaves(self.frozen, params)
        if not any(frozen):
            return new
        new = _merge([not f for f in frozen], new, params)
        if not hasattr(model, "expected_log_joint"):
            return new
        q_new = expected_objective(model, new, params, x, weights, chunk_size, self.axis_name)
        q_old = expected_objective(model, params, params, x, weights, chunk_size, self.axis_name)
        return _select(q_new >= q_old, new, params)


# ---- gradient (generalized EM) -------------------------------------------------------------------


@dataclass(frozen=True, init=False)
class Optimizer:
    """An optax optimizer given by its factory and arguments, compared by value.

    ``Gradient(optimizer=Optimizer(optax.adam, 1e-2))`` and a second such object are equal, so a
    second fit with the same settings reuses the compiled code (an optax ``GradientTransformation``
    instance is compared by identity instead).

    Example:
        >>> import optax
        >>> Optimizer(optax.adam, learning_rate=1e-2) == Optimizer(optax.adam, learning_rate=1e-2)
        True
    """

    factory: Callable[..., Any]
    args: tuple
    kwargs: tuple

    def __init__(self, factory: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        object.__setattr__(self, "factory", factory)
        object.__setattr__(self, "args", tuple(args))
        object.__setattr__(self, "kwargs", tuple(sorted(kwargs.items())))

    def __call__(self) -> Any:
        return self.factory(*self.args, **dict(self.kwargs))


@dataclass(frozen=True)
class Gradient:
    """Generalized EM: maximise Q(theta | theta_old) + log p(theta) by autodiff, accepted only if
    it did not decrease.

    Each M-step (1) sets the mixture weights and every block the family marks closed-form exactly
    (ECM); (2) runs at most ``num_steps`` steps of ``optimizer`` on the remaining, unfrozen blocks,
    in the unconstrained space the family's ``constraints()`` declare, stopping early once the
    objective changes by less than ``tol`` (per data point); (3) accepts the result only if the
    objective did not go down, otherwise halves the step back towards the ECM point up to
    ``num_backoffs`` times, and finally keeps theta_old. The objective is evaluated chunk by chunk
    with responsibilities from theta_old, so memory stays O(chunk x K).

    Args:
        optimizer: ``None`` (``optax.lbfgs()``), an :class:`Optimizer`, a zero-argument callable
            returning an optax transformation, or an optax transformation.
        num_steps: the most optimizer steps per M-step.
        tol: stop the inner loop once the mean objective changes by less than this.
        num_backoffs: halvings towards the ECM point before falling back to it.
        carry_state: keep the optimizer's state (L-BFGS memory, Adam moments) from one EM
            iteration to the next instead of starting afresh.
        frozen: parameters held fixed (see the module docstring).

    Example:
        >>> import jax, optax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (200, 2))
        >>> mstep = jaxem.Gradient(optimizer=jaxem.Optimizer(optax.adam, 0.05), num_steps=5)
        >>> algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2)), mstep)
        >>> result = jaxem.fit(algo, jax.random.key(0), x)
        >>> steps = jax.numpy.diff(result.history[: int(result.num_iters)])
        >>> bool(jax.numpy.all(steps >= -1e-9))
        True
    """

    optimizer: Any = None
    num_steps: int = 20
    tol: float = 1e-10
    num_backoffs: int = 8
    carry_state: bool = False
    frozen: Any = ()
    # Set by jaxem.parallel when each device holds a shard of the rows (Q is summed over it).
    axis_name: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {self.num_steps!r}.")
        if not isinstance(self.num_backoffs, int) or self.num_backoffs < 0:
            raise ValueError(
                f"num_backoffs must be a non-negative integer, got {self.num_backoffs!r}."
            )
        if not self.tol >= 0:
            raise ValueError(f"tol must be non-negative, got {self.tol!r}.")
        opt = self.optimizer
        if not (opt is None or callable(opt) or isinstance(opt, optax.GradientTransformation)):
            raise ValueError(
                "optimizer must be None (L-BFGS), a jaxem.Optimizer, a callable returning an optax "
                f"optimizer, or an optax optimizer; got {opt!r}."
            )
        object.__setattr__(self, "frozen", _check_frozen(self.frozen))

    def make_optimizer(self) -> optax.GradientTransformationExtraArgs:
        opt = self.optimizer
        if opt is None:
            opt = optax.lbfgs()
        elif not isinstance(opt, optax.GradientTransformation):
            opt = opt()
        return optax.with_extra_args_support(opt)

    # The pieces of one M-step: which leaves move, and the map from their unconstrained form.
    def _plan(self, model: Any, params: Any) -> tuple[list[bool], list[bool], list[Any]]:
        closed_form = getattr(model, "closed_form_blocks", lambda: False)()
        closed = [bool(c) for c in broadcast_prefix(closed_form, params, False)]
        frozen = frozen_leaves(self.frozen, params)
        constraint_tree = getattr(model, "constraints", lambda: None)()
        leaf_constraints = broadcast_prefix(constraint_tree, params, cons.Real())
        return closed, frozen, leaf_constraints

    def init_state(self, model: Any, params: Any) -> Any:
        if not self.carry_state:
            return None
        closed, frozen, leaf_cons = self._plan(model, params)
        free = [not c and not f for c, f in zip(closed, frozen, strict=True)]
        leaves = jax.tree.leaves(params)
        u0 = [c.inverse(p) for c, p, m in zip(leaf_cons, leaves, free, strict=True) if m]
        return self.make_optimizer().init(u0)

    def update(
        self,
        model: Any,
        params: Any,
        stats: Any,
        x: Any,
        weights: Array | None,
        chunk_size: int | None,
    ) -> Any:
        return self.update_with_state(model, params, stats, x, weights, chunk_size, None)[0]

    def update_with_state(
        self,
        model: Any,
        params: Any,
        stats: Any,
        x: Any,
        weights: Array | None,
        chunk_size: int | None,
        state: Any,
    ) -> tuple[Any, Any]:
        closed, frozen, leaf_cons = self._plan(model, params)
        # ECM: weights and marked blocks from the model's closed form, frozen leaves stay.
        exact = model.m_step(params, stats)
        start = _merge([c and not f for c, f in zip(closed, frozen, strict=True)], exact, params)
        free = [not c and not f for c, f in zip(closed, frozen, strict=True)]

        def q(p: Any) -> Array:
            return expected_objective(model, p, params, x, weights, chunk_size, self.axis_name)

        q_old = q(params)
        if not any(free):
            q_start = q(start)
            return _select(q_start >= q_old, start, params), state

        start_leaves, treedef = jax.tree.flatten(start)
        free_cons = [c for c, m in zip(leaf_cons, free, strict=True) if m]
        u0 = [c.inverse(p) for c, p, m in zip(leaf_cons, start_leaves, free, strict=True) if m]

        def build(u: list[Array]) -> Any:
            it = iter(c.forward(ui) for c, ui in zip(free_cons, u, strict=True))
            return jax.tree.unflatten(
                treedef, [next(it) if m else p for p, m in zip(start_leaves, free, strict=True)]
            )

        def loss(u: list[Array]) -> Array:
            return -q(build(u))

        opt = self.make_optimizer()
        if self.carry_state and state is not None:
            opt_state = state
            # A value stored by a line search belongs to last iteration's Q: force a fresh one.
            if optax.tree.get_all_with_path(opt_state, "value"):
                opt_state = optax.tree.set(opt_state, value=jnp.asarray(jnp.inf, q_old.dtype))
        else:
            opt_state = opt.init(u0)
        if optax.tree.get_all_with_path(opt_state, "value"):
            value_and_grad = optax.value_and_grad_from_state(loss)
        else:

            def value_and_grad(u: list[Array], state: Any) -> tuple[Array, Any]:
                del state
                return jax.value_and_grad(loss)(u)

        dtype = q_old.dtype
        inf = jnp.asarray(jnp.inf, dtype)
        # Carry: (step, u, optimizer state, previous loss, loss, loss at u0).
        carry = (jnp.array(0), u0, opt_state, inf, -inf, inf)

        def inner_cond(c: tuple) -> Array:
            step, _, _, previous, last, _ = c
            moving = (step < 2) | ~(jnp.abs(previous - last) <= self.tol)
            return (step < self.num_steps) & moving & ((step == 0) | jnp.isfinite(last))

        carry = lax.while_loop(
            inner_cond, lambda c: _inner_step(c, value_and_grad, opt, loss), carry
        )
        _, u_end, opt_state, _, _, loss_start = carry

        # Acceptance: the candidate must not lower Q below the ECM point; halve towards it if not.
        def backoff_cond(c: tuple) -> Array:
            j, _, _, accepted = c
            return (~accepted) & (j <= self.num_backoffs)

        def backoff_body(c: tuple) -> tuple:
            j = c[0]
            scale = jnp.asarray(0.5, dtype) ** j
            cand = jax.tree.map(lambda a, b: b + scale * (a - b), u_end, u0)
            value = loss(cand)
            return j + 1, cand, value, jnp.isfinite(value) & (value <= loss_start)

        _, u_best, loss_best, accepted = lax.while_loop(
            backoff_cond, backoff_body, (jnp.array(0), u0, loss_start, jnp.array(False))
        )
        candidate = _select(accepted, build(u_best), start)
        q_candidate = -jnp.where(accepted, loss_best, loss_start)
        new = _select(q_candidate >= q_old, candidate, params)
        return new, (opt_state if self.carry_state else state)


def _inner_step(carry: tuple, value_and_grad: Callable, opt: Any, loss: Callable) -> tuple:
    """One optimizer step; the carry is (step, u, state, previous value, value, first value)."""
    i, u, opt_state, _, last, first = carry
    value, grad = value_and_grad(u, state=opt_state)
    updates, opt_state = opt.update(grad, opt_state, u, value=value, grad=grad, value_fn=loss)
    u = optax.apply_updates(u, updates)
    first = jnp.where(i == 0, value, first)
    return i + 1, u, opt_state, last, value, first


def default_mstep(model: Any) -> ClosedForm | Gradient:
    """:class:`ClosedForm` when the model's closed form sets every block, else :class:`Gradient`
    (which still takes the closed-form blocks exactly first), so that no block is left unfitted.

    Example:
        >>> import jaxem
        >>> default_mstep(jaxem.Mixture(jaxem.Gaussian(2)))
        ClosedForm(frozen=())
    """
    blocks = getattr(model, "closed_form_blocks", lambda: True)()
    return ClosedForm() if all(jax.tree.leaves(blocks)) else Gradient()


__all__ = [
    "ClosedForm",
    "Gradient",
    "MStep",
    "Optimizer",
    "apply_mstep",
    "broadcast_prefix",
    "default_mstep",
    "expected_objective",
    "frozen_leaves",
    "init_mstep_state",
]
