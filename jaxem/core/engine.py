"""The EM loop: one jitted ``lax.while_loop`` per fit, and restarts as one vmapped computation."""

from __future__ import annotations

import dataclasses
import enum
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxem.core.accelerate import make_accelerator
from jaxem.core.estep import chunk_width, default_chunk_size, num_rows, reduce_chunks, total_weight
from jaxem.core.model import Model
from jaxem.core.mstep import ClosedForm, MStep, apply_mstep, init_mstep_state
from jaxem.core.precision import jit
from jaxem.core.subsample import initial_params, sample_size

Array = jax.Array


class PrecisionWarning(UserWarning):
    """Float64 input is fitted in float32 because JAX's 64-bit mode is off."""


class ConvergenceWarning(UserWarning):
    """A fit stopped at ``max_iter`` before the objective changed by less than ``tol``."""


class Status(enum.IntEnum):
    """Why a fit (or one restart lane) stopped."""

    RUNNING = 0
    CONVERGED = 1
    MAX_ITER = 2
    NONFINITE = 3
    PRUNED = 4  # dropped by successive halving (jaxem.fit_restarts_pruned)


class FitResult(NamedTuple):
    """The outcome of a fit; under :func:`fit_restarts` every leaf gains a leading restart axis.

    Attributes:
        params: the fitted parameters (the last finite ones if the fit went non-finite).
        log_likelihood: mean per-point log-likelihood (plus log prior / total weight: the
            log-posterior under MAP-EM) at ``params``; ``-inf`` for a non-finite fit.
        num_iters: EM iterations run (E-steps, i.e. passes over the data, under SQUAREM).
        status: a :class:`Status` code.
        history: the objective before each iteration's M-step, shape ``[max_iter]``, NaN after
            ``num_iters``. ``history[i]`` is what scikit-learn records as the lower bound. Under
            SQUAREM, one entry per E-step; a rejected extrapolation records the objective that the
            plain EM step taken instead is known to exceed, so the history never decreases.
    """

    params: Any
    log_likelihood: Array
    num_iters: Array
    status: Array
    history: Array


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
        >>> new_params, objective = jax.jit(algo.step)(params, x, None)  # one EM iteration
        >>> bool(algo.objective(new_params, x, None) >= objective)
        True
    """

    model: Model
    mstep: MStep = ClosedForm()  # noqa: RUF009  (frozen and stateless: one shared instance is safe)
    chunk_size: int | None = None
    accelerate: Any = None
    # Set by jaxem.parallel when each device holds a shard of the rows: statistics add across it.
    axis_name: str | None = None

    def e_pass(self, params: Any, x: Any, weights: Array | None) -> tuple[Any, Array]:
        """One pass over the data: summed statistics and the mean objective at ``params``."""
        stats, loglik = reduce_chunks(
            lambda xc, wc, _: self.model.e_step(params, xc, wc), x, weights, self.chunk_size
        )
        # The prior follows the data's dtype: a float64 zero prior must not promote a float32 fit.
        log_prior = jnp.asarray(self.model.log_prior(params), loglik.dtype)
        total = total_weight(x, weights, loglik.dtype)
        if self.axis_name is not None:
            stats, loglik, total = lax.psum((stats, loglik, total), self.axis_name)
        objective = (loglik + log_prior) / total
        return stats, objective

    def objective(self, params: Any, x: Any, weights: Array | None) -> Array:
        """Mean log-likelihood (plus log prior over the total weight) at ``params``."""
        return self.e_pass(params, x, weights)[1]

    def step(self, params: Any, x: Any, weights: Array | None) -> tuple[Any, Array]:
        """One EM iteration: new parameters and the objective at the old ones."""
        state = init_mstep_state(self.mstep, self.model, params)
        return self.step_with_state(params, state, x, weights)[:2]

    def step_with_state(
        self, params: Any, mstep_state: Any, x: Any, weights: Array | None
    ) -> tuple[Any, Array, Any]:
        """:meth:`step` for an M-step that carries state (an optimizer's memory) across
        iterations."""
        stats, objective = self.e_pass(params, x, weights)
        new, mstep_state = apply_mstep(
            self.mstep, self.model, params, stats, x, weights, self.chunk_size, mstep_state
        )
        return new, objective, mstep_state


def em(
    model: Model,
    mstep: MStep | None = None,
    chunk_size: int | None = None,
    accelerate: Any = None,
) -> EM:
    """Configure EM for ``model``.

    Args:
        model: e.g. ``jaxem.Mixture(jaxem.Gaussian(3))``.
        mstep: :class:`ClosedForm` (the default) or a gradient M-step.
        chunk_size: points per chunk of the E-step; ``None`` picks one from the sizes at fit time.
        accelerate: ``None`` (plain EM) or ``"squarem"`` (or a :class:`jaxem.Squarem`): SQUAREM
            extrapolation, still monotone; ``FitResult.num_iters`` then counts E-steps.

    Example:
        >>> import jaxem
        >>> algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(3)), chunk_size=1024)
        >>> algo.chunk_size
        1024
    """
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}.")
    accelerator = make_accelerator(accelerate)
    return EM(model, ClosedForm() if mstep is None else mstep, chunk_size, accelerator)


class _LoopState(NamedTuple):
    params: Any
    iteration: Array
    objective: Array
    status: Array
    history: Array
    accelerator: Any = None
    mstep_state: Any = None


def _all_finite(tree: Any) -> Array:
    leaves = [
        jnp.all(jnp.isfinite(a))
        for a in jax.tree.leaves(tree)
        if jnp.issubdtype(a.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def next_status(
    finite: Array, objective: Array, previous: Array, iteration: Array, max_iter: int, tol: Array
) -> Array:
    """The stopping rule after ``iteration`` iterations (scikit-learn's: change below ``tol``)."""
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


def _print_progress(iteration: Array, objective: Array) -> None:
    print(f"jaxem: iteration {int(iteration)}, mean log-likelihood {float(objective):.6f}")


def _run(
    algo: EM,
    params: Any,
    x: Any,
    weights: Array | None,
    tol: Array,
    max_iter: int,
    verbose: int,
    resume: FitResult | None = None,
    pause_at: Array | None = None,
) -> FitResult:
    """The fit loop; ``pause_at`` stops it early with status RUNNING, and ``resume`` (such a paused
    result, with ``params`` its parameters) goes on from it as if it had never stopped (the state of
    an accelerator or a stateful M-step starts afresh)."""
    dtype = jax.tree.leaves(x)[0].dtype
    prepare = getattr(algo.model, "prepare_rows", None)
    if prepare is not None:  # data-only work, once per fit (see jaxem.core.model)
        x = prepare(x)
    history = jnp.full((max(max_iter, 1),), jnp.nan, dtype)
    init = _LoopState(
        params, jnp.array(0), jnp.array(-jnp.inf, dtype), jnp.array(Status.RUNNING), history
    )
    if max_iter == 0:
        init = init._replace(status=jnp.array(Status.MAX_ITER))
    if algo.accelerate is not None:
        init = init._replace(accelerator=algo.accelerate.init(params, dtype))
    init = init._replace(mstep_state=init_mstep_state(algo.mstep, algo.model, params))
    if resume is not None:
        last = resume.history[jnp.maximum(resume.num_iters - 1, 0)]
        init = init._replace(
            iteration=resume.num_iters,
            objective=jnp.where(resume.num_iters > 0, last, -jnp.inf),
            status=resume.status,
            history=resume.history,
        )

    def cond(state: _LoopState) -> Array:
        running = state.status == Status.RUNNING
        return running if pause_at is None else running & (state.iteration < pause_at)

    def body(state: _LoopState) -> _LoopState:
        if algo.accelerate is None:
            new_params, objective, mstep_state = algo.step_with_state(
                state.params, state.mstep_state, x, weights
            )
            previous, accelerator = state.objective, None
        else:
            new_params, accelerator, objective, previous = algo.accelerate.step_fn(
                algo, state.accelerator, x, weights
            )
            mstep_state = state.mstep_state
        iteration = state.iteration + 1
        finite = jnp.isfinite(objective) & _all_finite(new_params)
        status = next_status(finite, objective, previous, iteration, max_iter, tol)
        if verbose:
            lax.cond(
                (iteration % verbose == 0) | (status != Status.RUNNING),
                lambda: jax.debug.callback(_print_progress, iteration, objective),
                lambda: None,
            )
        kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_params, state.params)
        return _LoopState(
            kept,
            iteration,
            objective,
            status,
            state.history.at[state.iteration].set(objective),
            accelerator,
            mstep_state,
        )

    final = lax.while_loop(cond, body, init)
    objective = algo.objective(final.params, x, weights)
    objective = jnp.where(
        (final.status == Status.NONFINITE) | ~jnp.isfinite(objective), -jnp.inf, objective
    )
    return FitResult(
        final.params, objective, final.iteration, final.status, final.history[:max_iter]
    )


@partial(jit, static_argnames=("algo", "max_iter", "verbose"))
def _fit_from_params(algo, params, x, weights, tol, max_iter, verbose):
    return _run(algo, params, x, weights, tol, max_iter, verbose)


# Starts from keys compile as programs of their own, not inside the fit's: XLA's compile-time
# memory is returned to the heap between compilations, so two programs peak at the larger one's
# (measured at (10^6, 8, 8): 175 MiB against 252 MiB for one program holding both). The sample
# size is a static argument, so a compiled start is reused only for the same sample size.
@partial(jit, static_argnames=("model", "size"))
def _start_from_key(model, key, x, weights, size):
    return initial_params(model, key, x, weights, size)


# Restart lanes whose starts are computed together (see _starts_from_keys).
INIT_BATCH_LANES = 4


@partial(jit, static_argnames=("model", "size"))
def _starts_from_keys(model, keys, x, weights, size):
    # Starts in batches of lanes: each batch shares its passes over the data (half the time of one
    # lane at a time for 32 restarts at (2 10^4, 8, 8)), while the sample ranking's temporaries grow
    # with the batch, not with every lane.
    return lax.map(
        lambda key: initial_params(model, key, x, weights, size), keys, batch_size=INIT_BATCH_LANES
    )


@partial(jit, static_argnames=("algo", "max_iter", "verbose"))
def _fit_restarts_from_params(algo, params, x, weights, tol, max_iter, verbose):
    return jax.vmap(lambda p: _run(algo, p, x, weights, tol, max_iter, verbose))(params)


def is_key(value: Any) -> bool:
    """Whether ``value`` is a JAX PRNG key (typed, or a raw ``uint32[2]`` key)."""
    if not isinstance(value, (jax.Array, np.ndarray)):
        return False
    if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        return True
    return value.dtype == np.uint32 and value.shape[-1:] == (2,)


def check_missing(array: np.ndarray, name: str = "x", *, check_columns: bool = True) -> None:
    """Where NaN marks a missing value: raise ``ValueError`` for infinite values, rows with every
    value missing and (with ``check_columns``) columns with every value missing.

    Example:
        >>> check_missing(np.array([[1.0, np.nan], [np.nan, 2.0]]))
    """
    if np.any(np.isinf(array)):
        raise ValueError(
            f"{name} contains infinity: only NaN marks a missing value; replace infinite values "
            "with NaN or finite numbers."
        )
    missing = np.isnan(array).reshape(array.shape[0], -1)
    empty_rows = np.flatnonzero(np.all(missing, axis=1))
    if empty_rows.size:
        raise ValueError(
            f"{name} has {empty_rows.size} row(s) with every value missing (the first is row "
            f"{empty_rows[0]}): such a row carries no information; drop it."
        )
    empty_columns = np.flatnonzero(np.all(missing, axis=0)) if check_columns else []
    if len(empty_columns):
        raise ValueError(
            f"{name} has {len(empty_columns)} column(s) with every value missing (the first is "
            f"column {empty_columns[0]}): nothing can be learnt about it; drop it before fitting."
        )


@jit
def _all_finite_leaf(leaf: Array) -> Array:
    # The largest magnitude is finite iff every value is (max propagates NaN). A max reduction fuses
    # with abs, while XLA's CPU backend builds a boolean copy of the data for all(isfinite) at
    # 10^7 rows (76 MiB for 10^7 x 8).
    return jnp.isfinite(jnp.max(jnp.abs(leaf), initial=0))


@jit
def _weights_ok(weights: Array) -> tuple[Array, Array, Array]:
    # One fused pass, no boolean temporaries of length N: finite, non-negative, some positive.
    return jnp.isfinite(jnp.max(jnp.abs(weights))), jnp.min(weights) >= 0, jnp.max(weights) > 0


def _aliases(placed: Array, host: np.ndarray) -> bool:
    try:
        return placed.unsafe_buffer_pointer() == host.ctypes.data
    except (AttributeError, NotImplementedError, ValueError):  # no single host buffer
        return False


def prepare_data(
    x: Any, weights: Any = None, *, allow_missing: bool = False
) -> tuple[Any, Array | None]:
    """Convert data and weights to JAX arrays of one float dtype and check them.

    Float64 input while JAX's 64-bit mode is off is fitted in float32 and says so with a
    :class:`PrecisionWarning`; integer input becomes the default float type. Raises ``ValueError``
    for non-finite values, empty data or bad weights. With ``allow_missing`` (for a model whose
    ``handles_missing`` is true) NaN marks a missing value and is kept, but see
    :func:`check_missing`.
    """
    leaves = jax.tree.leaves(x)
    if not leaves:
        raise ValueError("x holds no arrays: pass an array with one row per data point.")
    host_float64 = any(
        np.asarray(leaf).dtype == np.float64 for leaf in leaves if not isinstance(leaf, jax.Array)
    )
    if host_float64 and not jax.config.jax_enable_x64:
        warnings.warn(
            "x is float64 but JAX's 64-bit mode is off, so the fit runs in float32. To fit in "
            "float64, enable it before any JAX work (JAX_ENABLE_X64=1 or "
            "jax.config.update('jax_enable_x64', True)); pass float32 data to silence this.",
            PrecisionWarning,
            stacklevel=3,
        )

    def to_float(a: Any) -> Array:
        if not isinstance(a, jax.Array):
            # One copy to the device: jnp.asarray of a NumPy array keeps two (2x the data at
            # 10^7 x 8). The CPU runtime uses 64-byte-aligned host memory in place (whatever
            # may_alias says); that is copied too, so changing the array never reaches a fit.
            a = np.asarray(a)
            if not np.issubdtype(a.dtype, np.floating):
                a = a.astype(jnp.result_type(float))
            placed = jax.device_put(a)
            if a.size and _aliases(placed, a):
                placed = jnp.copy(placed).block_until_ready()
            return placed
        return a if jnp.issubdtype(a.dtype, jnp.floating) else a.astype(jnp.result_type(float))

    x = jax.tree.map(to_float, x)
    n = num_rows(x)
    if n == 0:
        raise ValueError("x has 0 rows: pass at least one data point.")
    if allow_missing:
        for leaf in jax.tree.leaves(x):
            check_missing(np.asarray(leaf))
    elif not all(bool(_all_finite_leaf(leaf)) for leaf in jax.tree.leaves(x)):
        raise ValueError(
            "x contains NaN or infinity: remove or impute those values before fitting."
        )
    if weights is not None:
        dtype = jax.tree.leaves(x)[0].dtype
        weights = jnp.asarray(weights, dtype)
        if weights.shape != (n,):
            raise ValueError(
                f"weights has shape {weights.shape} but x has {n} rows: pass one weight per row."
            )
        finite, non_negative, positive = _weights_ok(weights)
        if not bool(finite) or not bool(non_negative):
            raise ValueError("weights must be finite and non-negative.")
        if not bool(positive):
            raise ValueError("weights are all zero: at least one point must have positive weight.")
    return x, weights


def _resolve(algo: EM, x: Any, num_restarts: int = 1) -> EM:
    if algo.chunk_size is not None:
        return algo
    size = default_chunk_size(num_rows(x), chunk_width(algo.model, x), num_restarts)
    return dataclasses.replace(algo, chunk_size=size)


def fit(
    algo: EM,
    init: Any,
    x: Any,
    weights: Any = None,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    verbose: int = 0,
) -> FitResult:
    """Fit by EM until the mean log-likelihood changes by less than ``tol`` (scikit-learn's rule).

    Args:
        algo: from :func:`em`.
        init: a PRNG key (parameters are drawn by ``algo.model.init``, from a sample of 65536 rows
            when there are more: see :mod:`jaxem.core.subsample`) or initial parameters.
        x: data, one row per point (an array, or a pytree of arrays sharing the row axis).
        weights: optional non-negative weight per row.
        max_iter: the most EM iterations.
        tol: convergence threshold on the change of the mean per-point objective.
        verbose: print progress every ``verbose`` iterations from inside the loop (0: silent).

    Returns:
        A :class:`FitResult`; check ``status`` for convergence.

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (200, 2))
        >>> algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2, covariance_type="diag")))
        >>> result = jaxem.fit(algo, jax.random.key(0), x, max_iter=50)
        >>> int(result.status) in (1, 2)
        True
    """
    missing = getattr(algo.model, "handles_missing", False)
    x, weights = prepare_data(x, weights, allow_missing=missing)
    _check_iterations(max_iter, tol)
    tol = float(tol)  # an int tol would trace as another dtype and compile the fit again
    algo = _resolve(algo, x)
    if is_key(init):
        init = _start_from_key(algo.model, init, x, weights, sample_size(x))
    return _fit_from_params(algo, init, x, weights, tol, max_iter, verbose)


def _check_iterations(max_iter: int, tol: float) -> None:
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative integer, got {max_iter!r}.")
    if not np.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a non-negative number, got {tol!r}.")


def best_restart(results: FitResult) -> Array:
    """Index of the lane with the highest objective; non-finite lanes never win."""
    score = jnp.where(results.status == Status.NONFINITE, -jnp.inf, results.log_likelihood)
    return jnp.argmax(score)


def fit_restarts(
    algo: EM,
    init: Any,
    x: Any,
    weights: Any = None,
    *,
    num_restarts: int | None = None,
    max_iter: int = 100,
    tol: float = 1e-3,
    verbose: int = 0,
) -> tuple[FitResult, FitResult]:
    """Run many EM fits as one vmapped computation and return the best and all of them.

    Each lane stops on its own criterion and then stays frozen while the others run. Lane ``i``
    started from ``jax.random.split(key, num_restarts)[i]`` equals ``fit(algo, that key, x)``.

    Args:
        algo: from :func:`em`.
        init: a PRNG key (split into ``num_restarts`` keys), a batch of keys, or initial parameters
            with a leading restart axis on every leaf.
        num_restarts: required when ``init`` is a single key.

    Returns:
        ``(best, all)``: the best lane's :class:`FitResult`, and every lane's with a leading axis.

    Example:
        >>> import jax, jaxem
        >>> x = jax.random.normal(jax.random.key(0), (200, 2))
        >>> algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2)))
        >>> best, lanes = jaxem.fit_restarts(algo, jax.random.key(0), x, num_restarts=8)
        >>> lanes.log_likelihood.shape
        (8,)
    """
    missing = getattr(algo.model, "handles_missing", False)
    x, weights = prepare_data(x, weights, allow_missing=missing)
    _check_iterations(max_iter, tol)
    tol = float(tol)  # an int tol would trace as another dtype and compile the fit again
    if is_key(init):
        keys = init
        single = (
            init.ndim == 0
            if jax.dtypes.issubdtype(init.dtype, jax.dtypes.prng_key)
            else init.ndim == 1
        )
        if single:
            if num_restarts is None or num_restarts < 1:
                raise ValueError("num_restarts must be a positive integer when init is one key.")
            keys = jax.random.split(init, num_restarts)
        lanes = keys.shape[0]
        algo = _resolve(algo, x, lanes)
        init = _starts_from_keys(algo.model, keys, x, weights, sample_size(x))
    else:
        lanes = jax.tree.leaves(init)[0].shape[0]
        algo = _resolve(algo, x, lanes)
    results = _fit_restarts_from_params(algo, init, x, weights, tol, max_iter, verbose)
    best = best_restart(results)
    return jax.tree.map(lambda a: a[best], results), results
