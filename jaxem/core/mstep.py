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
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxem.core import constraints as cons
from jaxem.core.model import NoConditionalMStep, conditional_m_step

Array = jax.Array


class MStep(Protocol):
    """An M-step strategy: new parameters from the old ones and one E-step's summed statistics.

    ``init_state(model, params)`` gives the state the strategy carries from one EM iteration to the
    next (``None`` for none: an optimizer's memory otherwise); ``update`` returns the new
    parameters, the new carried state and whether its candidate was accepted. ``rows`` (a pass
    over the data, see :mod:`jaxem.core.rows`) is there for strategies that need the data again:
    the gradient M-step evaluates Q and its gradient on it.
    """

    def init_state(self, model: Any, params: Any) -> Any: ...

    def update(
        self, model: Any, params: Any, stats: Any, rows: Any, state: Any
    ) -> tuple[Any, Any, Array]: ...


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


def expected_objective(model: Any, params: Any, params_old: Any, rows: Any) -> Array:
    """Mean ``Q(params | params_old) + log p(params)`` per unit of row weight, over ``rows``.

    Responsibilities are recomputed from ``params_old`` in every chunk, so no N x K array is kept.
    Differentiable in ``params``: the gradient is reduced chunk by chunk alongside the value (never
    by differentiating through the pass over the rows), so it costs one pass, needs O(chunk x K)
    memory, and is the same for rows in memory, sharded over devices or streamed from the host.

    Example:
        >>> import jax, jaxem
        >>> from jaxem.core.rows import Rows
        >>> x = jax.random.normal(jax.random.key(0), (50, 2))
        >>> model = jaxem.Mixture(jaxem.Gaussian(2, "diag"))
        >>> params = model.init(jax.random.key(1), x, None)
        >>> rows = Rows.in_memory(x, chunk_size=16)
        >>> q = expected_objective(model, params, params, rows)
        >>> jax.grad(expected_objective, argnums=1)(model, params, params, rows).weights.shape
        (2,)
    """
    return _expected_objective(model, params, params_old, rows)


def _with_prior(model: Any, params: Any, q: Array, rows: Any) -> Array:
    # The prior follows the data's dtype: a float64 zero prior must not promote a float32 fit.
    total = rows.total_weight(q.dtype)
    return (q + jnp.asarray(model.log_prior(params), q.dtype)) / total


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _expected_objective(model: Any, params: Any, params_old: Any, rows: Any) -> Array:
    q = rows.reduce(lambda xc, wc, _: model.expected_log_joint(params, params_old, xc, wc))
    return _with_prior(model, params, q, rows)


def _expected_objective_forward(
    model: Any, params: Any, params_old: Any, rows: Any
) -> tuple[Array, Any]:
    def chunk(xc: Any, wc: Array | None, _: Array) -> tuple[Array, Any]:
        return jax.value_and_grad(lambda p: model.expected_log_joint(p, params_old, xc, wc))(params)

    q, grad = rows.reduce(chunk)
    value, prior_grad = jax.value_and_grad(lambda p: _with_prior(model, p, q, rows))(params)
    total = rows.total_weight(q.dtype)
    return value, jax.tree.map(lambda g, h: g / total + h, grad, prior_grad)


def _expected_objective_backward(model: Any, grad: Any, cotangent: Array) -> tuple:
    del model
    # Only params are differentiated: the old parameters sit under stop_gradient, the rows have
    # no gradient.
    return jax.tree.map(lambda g: cotangent * g, grad), None, None


_expected_objective.defvjp(_expected_objective_forward, _expected_objective_backward)


def _select(keep_new: Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(keep_new, a, b), new, old)


def _merge(mask: list[bool], new: Any, old: Any) -> Any:
    """Leaves of ``new`` where ``mask`` is True, of ``old`` elsewhere."""
    new_leaves, treedef = jax.tree.flatten(new)
    old_leaves = jax.tree.leaves(old)
    return jax.tree.unflatten(
        treedef, [n if m else o for m, n, o in zip(mask, new_leaves, old_leaves, strict=True)]
    )


# ---- frozen leaves -------------------------------------------------------------------------------


def frozen_mask(frozen: Any, model: Any, params: Any) -> list[bool]:
    """Per leaf of ``params``: held fixed by the M-step's ``frozen`` or by the model itself.

    A model declares parameters it never re-estimates with a ``frozen_parameters`` attribute in the
    same form (a hidden Markov model's ``update`` letters become one), so there is one mechanism.
    """
    own = frozen_leaves(frozen, params)
    declared = frozen_leaves(getattr(model, "frozen_parameters", ()), params)
    return [a or b for a, b in zip(own, declared, strict=True)]


def held_m_step(model: Any, params: Any, stats: Any, mask: list[bool]) -> tuple[Any, bool]:
    """The closed-form M-step with the leaves in ``mask`` held: ``(params, exact)``.

    ``exact``: the result maximises Q over the free leaves given the held ones (the model's
    :func:`~jaxem.core.model.conditional_m_step`); otherwise it is the unconditional M-step with
    the held leaves put back, which the caller must check against Q.
    """
    if not any(mask):
        return model.m_step(params, stats), True
    tree = jax.tree.unflatten(jax.tree.structure(params), mask)
    try:
        return conditional_m_step(model, params, stats, tree), True
    except NoConditionalMStep:
        return _merge([not f for f in mask], model.m_step(params, stats), params), False


# ---- closed form ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClosedForm:
    """The model's own exact M-step (``model.m_step``).

    Args:
        frozen: parameters held at their current values (see the module docstring). The other
            blocks take their exact conditional maximiser where the model provides it (a Gaussian
            re-estimates its covariances about frozen means); otherwise their unconditional closed
            form is kept only if Q did not decrease, so EM stays monotone.

    Example:
        >>> import jaxem
        >>> algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2)), jaxem.ClosedForm(frozen=("weights",)))
    """

    frozen: Any = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "frozen", _check_frozen(self.frozen))

    def init_state(self, model: Any, params: Any) -> None:
        del model, params

    def update(
        self, model: Any, params: Any, stats: Any, rows: Any, state: Any
    ) -> tuple[Any, Any, Array]:
        new, exact = held_m_step(model, params, stats, frozen_mask(self.frozen, model, params))
        if exact or not hasattr(model, "expected_log_joint"):
            return new, state, jnp.array(True)
        improved = expected_objective(model, new, params, rows) >= expected_objective(
            model, params, params, rows
        )
        return _select(improved, new, params), state, improved


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
        frozen = frozen_mask(self.frozen, model, params)
        constraint_tree = getattr(model, "constraints", lambda: None)()
        leaf_constraints = broadcast_prefix(constraint_tree, params, cons.Real())
        return closed, frozen, leaf_constraints

    def init_state(self, model: Any, params: Any) -> Any:
        if not self.carry_state:
            return None
        closed, frozen, leaf_cons = self._plan(model, params)
        free = [not c and not f for c, f in zip(closed, frozen, strict=True)]
        if not any(free):  # every block has a closed form or is frozen: nothing to optimise
            return None
        leaves = jax.tree.leaves(params)
        u0 = [c.inverse(p) for c, p, m in zip(leaf_cons, leaves, free, strict=True) if m]
        return self.make_optimizer().init(u0)

    def update(
        self, model: Any, params: Any, stats: Any, rows: Any, state: Any
    ) -> tuple[Any, Any, Array]:
        closed, frozen, leaf_cons = self._plan(model, params)
        # ECM: weights and marked blocks from the model's closed form, frozen leaves stay.
        held = [f or not c for c, f in zip(closed, frozen, strict=True)]
        start, _ = held_m_step(model, params, stats, held)
        free = [not c and not f for c, f in zip(closed, frozen, strict=True)]

        def q(p: Any) -> Array:
            return expected_objective(model, p, params, rows)

        q_old = q(params)
        if not any(free):
            improved = q(start) >= q_old
            return _select(improved, start, params), state, improved

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
        improved = q_candidate >= q_old
        new = _select(improved, candidate, params)
        return new, (opt_state if self.carry_state else state), improved


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
    "broadcast_prefix",
    "default_mstep",
    "expected_objective",
    "frozen_leaves",
    "frozen_mask",
    "held_m_step",
]
