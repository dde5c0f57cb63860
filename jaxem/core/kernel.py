"""The EM kernel: one iteration of EM as a pure ``(init, step)`` pair, and the state it carries.

Every way of running a fit is a loop over this kernel: :func:`jaxem.fit` runs ``step`` in a
``lax.while_loop``, restarts ``vmap`` it, pruned restarts run it in rounds, sharded fits run it
inside ``shard_map`` on rows reduced with ``psum``, out-of-core fits call it once per pass from the
host on streamed rows, and the bound trace scans it. The kernel knows none of them: it sees the
data only through a rows object (:mod:`jaxem.core.rows`) and the M-step only through its strategy
(:mod:`jaxem.core.mstep`). Acceleration is a transformation of kernels
(:func:`jaxem.core.accelerate.squarem`) that keeps every part of the state.

Vocabulary: ``log_likelihood`` is always a total, the sum over the rows of their weighted
log-likelihoods, plus the log prior under MAP-EM (the log-posterior up to a constant). The stopping
rule, scikit-learn's, compares the *mean* per unit of row weight: it stops once the mean changes by
less than ``tol`` between two iterations.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxem.core.mstep import ClosedForm, MStep, expected_objective

Array = jax.Array


class Status(enum.IntEnum):
    """Why a fit (or one restart lane) stopped."""

    RUNNING = 0
    CONVERGED = 1
    MAX_ITER = 2
    NONFINITE = 3
    PRUNED = 4  # dropped by successive halving (jaxem.fit_restarts_pruned)


class EMState(NamedTuple):
    """What the next EM iteration needs; under ``vmap`` every leaf gains a lane axis.

    Attributes:
        params: the current parameters (the last finite ones once a step went non-finite).
        log_likelihood: total log-likelihood (plus log prior) at the parameters the last step's
            E-step evaluated, i.e. before its M-step; ``-inf`` before the first step.
        iteration: steps taken (E-steps: passes over the data).
        status: a :class:`Status` code; ``RUNNING`` until the stopping rule fires.
        tol: the stopping rule's threshold on the change of the mean log-likelihood (a run-time
            value: changing it never compiles again).
        max_iter: the most steps (a run-time value).
        mstep_state: what the M-step strategy carries between iterations (an optimizer's memory),
            or ``None``.
        accelerator: what an acceleration carries (see :mod:`jaxem.core.accelerate`), or ``None``.
    """

    params: Any
    log_likelihood: Array
    iteration: Array
    status: Array
    tol: Array
    max_iter: Array
    mstep_state: Any = None
    accelerator: Any = None


class EMInfo(NamedTuple):
    """Diagnostics of one step (not needed by the next one).

    Attributes:
        log_likelihood: total log-likelihood (plus log prior) at the parameters the step's E-step
            evaluated.
        total_weight: the total row weight (the number of rows without weights).
        accepted: whether the M-step's (or the extrapolation's) candidate was kept.
        expected_log_joint: ``Q(theta_old | theta_old) + log p(theta_old)``, a total (with
            ``diagnostics=True`` only, else ``None``).
        expected_log_joint_new: ``Q(theta_new | theta_old) + log p(theta_new)``.
        entropy: the total entropy of the responsibilities at ``theta_old``, so that
            ``log_likelihood = expected_log_joint + entropy`` (the EM bound is tight after the
            E-step) and KL(q || posterior at ``theta_new``) is what the new log-likelihood exceeds
            ``expected_log_joint_new + entropy`` by.
    """

    log_likelihood: Array
    total_weight: Array
    accepted: Array
    expected_log_joint: Array | None = None
    expected_log_joint_new: Array | None = None
    entropy: Array | None = None


def all_finite(tree: Any) -> Array:
    """Whether every inexact value of ``tree`` is finite (a scalar bool)."""
    leaves = [
        jnp.all(jnp.isfinite(a))
        for a in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.asarray(a).dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def next_status(
    finite: Array, objective: Array, previous: Array, iteration: Array, max_iter: Array, tol: Array
) -> Array:
    """The stopping rule after ``iteration`` steps (scikit-learn's: the mean log-likelihood
    changed by less than ``tol``); ``objective`` and ``previous`` are means."""
    converged = jnp.abs(objective - previous) < tol
    return jnp.where(
        ~finite,
        Status.NONFINITE,
        jnp.where(
            converged,
            Status.CONVERGED,
            jnp.where(iteration >= max_iter, Status.MAX_ITER, Status.RUNNING),
        ),
    )


def advance(
    state: EMState,
    new_params: Any,
    log_likelihood: Array,
    previous: Array,
    total_weight: Array,
    **carried: Any,
) -> EMState:
    """The state after a step that evaluated ``log_likelihood`` and proposes ``new_params``.

    ``previous`` is the total the stopping rule compares with (``-inf``: not comparable). A
    non-finite step keeps the previous parameters and stops with ``NONFINITE``. ``carried``
    replaces other fields (``mstep_state``, ``accelerator``).
    """
    iteration = state.iteration + 1
    finite = jnp.isfinite(log_likelihood) & all_finite(new_params)
    status = next_status(
        finite,
        log_likelihood / total_weight,
        previous / total_weight,
        iteration,
        state.max_iter,
        state.tol,
    )
    kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_params, state.params)
    return state._replace(
        params=kept,
        log_likelihood=log_likelihood.astype(state.log_likelihood.dtype),
        iteration=iteration,
        status=status.astype(state.status.dtype),
        **carried,
    )


@dataclass(frozen=True)
class EMKernel:
    """EM for ``model`` with an M-step strategy, as an ``(init, step)`` pair of pure functions.

    Frozen and hashable: jit caches a program by its value. ``step`` is jittable and vmappable
    (restarts), and runs on any rows object (in memory, sharded, streamed).

    Args:
        model: e.g. ``jaxem.Mixture(jaxem.Gaussian(3))``.
        mstep: the M-step strategy (:class:`jaxem.ClosedForm` by default, or
            :class:`jaxem.Gradient`).
        diagnostics: also compute Q before and after the M-step and the entropy of the
            responsibilities (two more passes over the data per step; see :class:`EMInfo`).

    Example:
        >>> import jax, jaxem
        >>> from jaxem.core.rows import Rows
        >>> x = jax.random.normal(jax.random.key(0), (200, 2))
        >>> kernel = EMKernel(jaxem.Mixture(jaxem.Gaussian(2)))
        >>> rows = Rows.in_memory(x)
        >>> state = kernel.init(kernel.model.init(jax.random.key(1), x, None), rows, tol=1e-6)
        >>> state, info = jax.jit(kernel.step)(state, rows)
        >>> int(state.iteration), bool(info.accepted)
        (1, True)
    """

    model: Any
    mstep: MStep = ClosedForm()  # noqa: RUF009  (frozen and stateless: one shared instance is safe)
    diagnostics: bool = False

    def init(self, params: Any, rows: Any, *, tol: Any = 1e-3, max_iter: Any = 100) -> EMState:
        """The state before the first step, at ``params``."""
        dtype = rows.dtype
        max_iter = jnp.asarray(max_iter)
        return EMState(
            params,
            jnp.asarray(-jnp.inf, dtype),
            jnp.asarray(0),
            jnp.where(max_iter == 0, Status.MAX_ITER, Status.RUNNING),
            jnp.asarray(tol, dtype),
            max_iter,
            self.mstep.init_state(self.model, params),
        )

    def e_pass(self, params: Any, rows: Any) -> tuple[Any, Array, Array]:
        """One pass over the rows: summed statistics, the total log-likelihood (plus log prior)
        at ``params``, and the total row weight."""
        stats, loglik = rows.reduce(lambda xc, wc, _: self.model.e_step(params, xc, wc))
        # The prior follows the data's dtype: a float64 zero prior must not promote a float32 fit.
        log_prior = jnp.asarray(self.model.log_prior(params), loglik.dtype)
        return stats, loglik + log_prior, rows.total_weight(loglik.dtype)

    def log_likelihood(self, params: Any, rows: Any) -> Array:
        """Total log-likelihood (plus log prior) at ``params``."""
        return self.e_pass(params, rows)[1]

    def em_step(self, params: Any, mstep_state: Any, rows: Any) -> tuple[Any, Any, EMInfo]:
        """One E-step and M-step from ``params``, without the bookkeeping of the state:
        ``(new_params, mstep_state, info)``."""
        rows = rows.prepare(self.model)
        stats, log_likelihood, total = self.e_pass(params, rows)
        new, mstep_state, accepted = self.mstep.update(self.model, params, stats, rows, mstep_state)
        info = EMInfo(log_likelihood, total, accepted)
        if self.diagnostics:
            entropy = rows.reduce(lambda xc, wc, _: self.model.entropy(params, xc, wc))
            info = info._replace(
                expected_log_joint=expected_objective(self.model, params, params, rows) * total,
                expected_log_joint_new=expected_objective(self.model, new, params, rows) * total,
                entropy=entropy,
            )
        return new, mstep_state, info

    def step(self, state: EMState, rows: Any) -> tuple[EMState, EMInfo]:
        """One EM iteration: the next state and this step's diagnostics."""
        new, mstep_state, info = self.em_step(state.params, state.mstep_state, rows)
        next_state = advance(
            state,
            new,
            info.log_likelihood,
            state.log_likelihood,
            info.total_weight,
            mstep_state=mstep_state,
        )
        return next_state, info


__all__ = ["EMInfo", "EMKernel", "EMState", "Status", "advance", "all_finite", "next_status"]
