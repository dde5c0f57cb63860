"""The EM bound made visible.

For any distribution q over the latent variables,
``log p(X | theta) = L(q, theta) + KL(q || p(Z | X, theta))`` with
``L(q, theta) = E_q[log p(X, Z | theta)] + H(q)``. The E-step sets q to the posterior at theta_old,
so KL = 0 and ``log p(X | theta_old) = Q(theta_old | theta_old) + H(q)``; the M-step raises Q, and
since KL >= 0 afterwards, ``log p(X | theta_new) - log p(X | theta_old) >= Q(theta_new | theta_old)
- Q(theta_old | theta_old)``: the log-likelihood rises by at least the gain in Q.

:func:`trace_bound` scans the kernel for a fixed number of steps with its diagnostics on and
records these quantities; it is a separate entry point so that :func:`jaxem.fit` pays nothing for
them. Under MAP-EM the log prior is part of both the objective and Q.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxem.core.algorithm import EM
from jaxem.core.inputs import is_key, model_data
from jaxem.core.precision import jit
from jaxem.drivers.fit import start_params, take_lane

Array = jax.Array


class BoundTrace(NamedTuple):
    """Per-iteration terms of the EM bound, all totals over the (weighted) rows.

    Attributes:
        params: the parameters after the last iteration.
        log_likelihood: the log-likelihood (plus log prior under MAP-EM) at the parameters each
            iteration's E-step evaluated, and after the last one: shape ``[num_iters + 1]``.
        expected_log_joint: Q(theta_i | theta_i), the bound's energy term after the E-step.
        entropy: H(q_i) of the responsibilities from theta_i.
        expected_log_joint_new: Q(theta_{i+1} | theta_i), the same q after the M-step.
        gain: ``expected_log_joint_new - expected_log_joint`` (never negative for a valid M-step).
    """

    params: Any
    log_likelihood: Array
    expected_log_joint: Array
    entropy: Array
    expected_log_joint_new: Array
    gain: Array


@partial(jit, static_argnames=("kernel", "num_iters"))
def _trace(kernel: Any, params: Any, rows: Any, num_iters: int) -> BoundTrace:
    rows = rows.prepare(kernel.model)
    # No stopping rule: every one of the num_iters steps runs.
    state = kernel.init(params, rows, tol=-1.0, max_iter=num_iters + 1)

    def body(state: Any, _: None) -> tuple[Any, tuple]:
        state, info = kernel.step(state, rows)
        return state, (
            info.log_likelihood,
            info.expected_log_joint,
            info.entropy,
            info.expected_log_joint_new,
        )

    state, (log_likelihood, q_old, entropy, q_new) = lax.scan(body, state, None, length=num_iters)
    last = kernel.log_likelihood(state.params, rows)
    log_likelihood = jnp.concatenate([log_likelihood, last[None]])
    return BoundTrace(state.params, log_likelihood, q_old, entropy, q_new, q_new - q_old)


def _with_diagnostics(kernel: Any) -> Any:
    inner = getattr(kernel, "inner", None)
    if inner is not None:  # an accelerated kernel: the diagnostics are its inner EM steps'
        return dataclasses.replace(kernel, inner=_with_diagnostics(inner))
    return dataclasses.replace(kernel, diagnostics=True)


def trace_bound(
    algo: EM, init: Any, x: Any, row_weights: Any = None, *, num_iters: int = 20
) -> BoundTrace:
    """Run ``num_iters`` EM iterations and record the log-likelihood, Q, H(q) and the gain in Q.

    The model must provide ``expected_log_joint`` and ``entropy`` (every :class:`Mixture` and
    hidden Markov model does). Under SQUAREM each entry is one E-step at the point it evaluated.

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (100, 1))
        >>> algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2)))
        >>> trace = jaxem.trace_bound(algo, jax.random.key(0), x, num_iters=5)
        >>> gap = trace.log_likelihood[:-1] - (trace.expected_log_joint + trace.entropy)
        >>> bool(jax.numpy.all(jax.numpy.abs(gap) < 1e-2))
        True
    """
    if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 1:
        raise ValueError(f"num_iters must be a positive integer, got {num_iters!r}.")
    for method in ("expected_log_joint", "entropy"):
        if not hasattr(algo.model, method):
            raise ValueError(
                f"{type(algo.model).__name__} has no {method}(): the bound needs a model that "
                "defines Q and the entropy of its posterior, such as jaxem.Mixture."
            )
    x, row_weights = model_data(algo.model, x, row_weights)
    algo = algo.for_data(x)
    rows = algo.rows(x, row_weights)
    # From a key, the parameters jaxem.fit starts from (a sample of the rows when there are many).
    if is_key(init):
        init = take_lane(start_params(algo.model, init[None], rows), 0)
    return _trace(_with_diagnostics(algo.kernel), init, rows, num_iters)


__all__ = ["BoundTrace", "trace_bound"]
