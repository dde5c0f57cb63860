"""The EM bound made visible.

For any distribution q over the latent variables,
``log p(X | theta) = L(q, theta) + KL(q || p(Z | X, theta))`` with
``L(q, theta) = E_q[log p(X, Z | theta)] + H(q)``. The E-step sets q to the posterior at theta_old,
so KL = 0 and ``log p(X | theta_old) = Q(theta_old | theta_old) + H(q)``; the M-step raises Q, and
since KL >= 0 afterwards, ``log p(X | theta_new) - log p(X | theta_old) >= Q(theta_new | theta_old)
- Q(theta_old | theta_old)``: the log-likelihood rises by at least the gain in Q.

:func:`trace_bound` runs EM for a fixed number of iterations and records these quantities; it is a
separate entry point so that :func:`jaxem.fit` pays nothing for them. Under MAP-EM the log prior is
part of both the objective and Q.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxem.core.engine import EM, _resolve, _start_from_key, is_key, prepare_data
from jaxem.core.estep import reduce_chunks, total_weight
from jaxem.core.mstep import expected_objective, init_mstep_state
from jaxem.core.precision import jit
from jaxem.core.subsample import sample_size

Array = jax.Array


class BoundTrace(NamedTuple):
    """Per-iteration terms of the EM bound, all as means per data point (weight).

    Attributes:
        params: the parameters after the last iteration.
        log_likelihood: the objective (log-likelihood, plus log prior under MAP-EM) at the
            parameters before iteration ``i``, and after the last one: shape ``[num_iters + 1]``.
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


def _entropy(algo: EM, params: Any, x: Any, weights: Array | None) -> Array:
    h = reduce_chunks(
        lambda xc, wc, _: algo.model.entropy(params, xc, wc), x, weights, algo.chunk_size
    )
    return h / total_weight(x, weights, h.dtype)


@partial(jit, static_argnames=("algo", "num_iters"))
def _trace(algo: EM, params: Any, x: Any, weights: Array | None, num_iters: int) -> BoundTrace:
    def body(carry: tuple, _: None) -> tuple[tuple, tuple]:
        params, state = carry
        new, objective, state = algo.step_with_state(params, state, x, weights)
        q_old = expected_objective(algo.model, params, params, x, weights, algo.chunk_size)
        q_new = expected_objective(algo.model, new, params, x, weights, algo.chunk_size)
        entropy = _entropy(algo, params, x, weights)
        return (new, state), (objective, q_old, entropy, q_new)

    state = init_mstep_state(algo.mstep, algo.model, params)
    (final, _), (objective, q_old, entropy, q_new) = lax.scan(
        body, (params, state), None, length=num_iters
    )
    last = algo.objective(final, x, weights)
    log_likelihood = jnp.concatenate([objective, last[None]])
    return BoundTrace(final, log_likelihood, q_old, entropy, q_new, q_new - q_old)


def trace_bound(
    algo: EM, init: Any, x: Any, weights: Any = None, *, num_iters: int = 20
) -> BoundTrace:
    """Run ``num_iters`` EM iterations and record the log-likelihood, Q, H(q) and the gain in Q.

    The model must provide ``expected_log_joint`` and ``entropy`` (every :class:`Mixture` does).

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (100, 1))
        >>> algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2)))
        >>> trace = jaxem.trace_bound(algo, jax.random.key(0), x, num_iters=5)
        >>> gap = trace.log_likelihood[:-1] - (trace.expected_log_joint + trace.entropy)
        >>> bool(jax.numpy.all(jax.numpy.abs(gap) < 1e-4))
        True
    """
    if not isinstance(num_iters, int) or num_iters < 1:
        raise ValueError(f"num_iters must be a positive integer, got {num_iters!r}.")
    for method in ("expected_log_joint", "entropy"):
        if not hasattr(algo.model, method):
            raise ValueError(
                f"{type(algo.model).__name__} has no {method}(): the bound needs a model that "
                "defines Q and the entropy of its posterior, such as jaxem.Mixture."
            )
    x, weights = prepare_data(x, weights)
    algo = _resolve(algo, x)
    # From a key, the parameters jaxem.fit starts from (a sample of the rows when there are many).
    if is_key(init):
        init = _start_from_key(algo.model, init, x, weights, sample_size(x))
    return _trace(algo, init, x, weights, num_iters)


__all__ = ["BoundTrace", "trace_bound"]
