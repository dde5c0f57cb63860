"""Checks of the functional API's input, run eagerly before any work.

Every driver converts and checks its data here, so that the same input gets the same treatment
(and the same message) whichever way it is fitted.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxem.core.estep import num_rows
from jaxem.core.program_cache import cached_jit

Array = jax.Array


class PrecisionWarning(UserWarning):
    """Float64 input is fitted in float32 because JAX's 64-bit mode is off."""


class ConvergenceWarning(UserWarning):
    """A fit stopped at ``max_iter`` before the objective changed by less than ``tol``."""


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


@cached_jit
def all_finite_leaf(leaf: Array) -> Array:
    # The largest magnitude is finite iff every value is (max propagates NaN). A max reduction fuses
    # with abs, while XLA's CPU backend builds a boolean copy of the data for all(isfinite) at
    # 10^7 rows (76 MiB for 10^7 x 8).
    return jnp.isfinite(jnp.max(jnp.abs(leaf), initial=0))


@cached_jit
def _weights_ok(row_weights: Array) -> tuple[Array, Array, Array]:
    # One fused pass, no boolean temporaries of length N: finite, non-negative, some positive.
    return (
        jnp.isfinite(jnp.max(jnp.abs(row_weights))),
        jnp.min(row_weights) >= 0,
        jnp.max(row_weights) > 0,
    )


# Arrays of at most this many elements are checked with NumPy on the host (the temporaries, and a
# device array's copy to the host, are small).
HOST_CHECK_ELEMENTS = 1 << 20


def on_host_check(value: Any) -> bool:
    """Whether ``value`` is checked on the host: a small array, held whole by one device if it is
    a JAX array (a sharded or multi-host array is checked where it lives)."""
    if isinstance(value, jax.Array) and (
        not value.is_fully_addressable or len(value.sharding.device_set) > 1
    ):
        return False
    return np.size(value) <= HOST_CHECK_ELEMENTS


def is_finite(leaf: Any) -> bool:
    """Whether every value of ``leaf`` is finite: with NumPy for a small array (a check on the
    device is a compiled program, loaded or compiled once per shape in every process), else on
    the device where it lives."""
    if on_host_check(leaf):
        return bool(np.isfinite(np.asarray(leaf)).all())
    return bool(all_finite_leaf(leaf))


def weights_ok_on_host(row_weights: np.ndarray) -> tuple[bool, bool, bool]:
    """:func:`_weights_ok`'s three answers with NumPy: finite, non-negative, some positive."""
    finite = bool(np.isfinite(row_weights).all())
    return finite, finite and bool((row_weights >= 0).all()), bool((row_weights > 0).any())


def _aliases(placed: Array, host: np.ndarray) -> bool:
    try:
        return placed.unsafe_buffer_pointer() == host.ctypes.data
    except (AttributeError, NotImplementedError, ValueError):  # no single host buffer
        return False


def prepare_data(
    x: Any, row_weights: Any = None, *, allow_missing: bool = False
) -> tuple[Any, Array | None]:
    """Convert data and row weights to JAX arrays of one float dtype and check them.

    Float64 input while JAX's 64-bit mode is off is fitted in float32 and says so with a
    :class:`PrecisionWarning`; integer input becomes the default float type. Raises ``ValueError``
    for non-finite values, empty data or bad row weights. With ``allow_missing`` (for a model whose
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
                # The device array may alias a private copy, which nothing else can change (a
                # copy made on the device would compile a program per shape).
                placed = jax.device_put(a.copy())
            return placed
        return a if jnp.issubdtype(a.dtype, jnp.floating) else a.astype(jnp.result_type(float))

    x = jax.tree.map(to_float, x)
    n = num_rows(x)
    if n == 0:
        raise ValueError("x has 0 rows: pass at least one data point.")
    if allow_missing:
        for leaf in jax.tree.leaves(x):
            check_missing(np.asarray(leaf))
    elif not all(is_finite(leaf) for leaf in jax.tree.leaves(x)):
        raise ValueError(
            "x contains NaN or infinity: remove or impute those values before fitting."
        )
    if row_weights is not None:
        dtype = jax.tree.leaves(x)[0].dtype
        if isinstance(row_weights, jax.Array):
            row_weights = row_weights if row_weights.dtype == dtype else row_weights.astype(dtype)
        else:
            row_weights = np.asarray(row_weights, dtype)
        if row_weights.shape != (n,):
            raise ValueError(
                f"row_weights has shape {row_weights.shape} but x has {n} rows: pass one weight "
                "per row."
            )
        finite, non_negative, positive = (
            weights_ok_on_host(np.asarray(row_weights))
            if on_host_check(row_weights)
            else _weights_ok(row_weights)
        )
        if not isinstance(row_weights, jax.Array):  # a JAX array stays where it is (sharded)
            row_weights = jax.device_put(row_weights)
        if not bool(finite) or not bool(non_negative):
            raise ValueError("row_weights must be finite and non-negative.")
        if not bool(positive):
            raise ValueError(
                "row_weights are all zero: at least one point must have positive weight."
            )
    return x, row_weights


# Fits of at most this many rows run on rows padded to a bucket (see row_bucket); larger ones keep
# their shape, where the padded rows' work would cost more than a compilation.
PAD_FIT_MAX_ROWS = 1 << 16


def row_bucket(num_rows: int) -> int:
    """The rows a batch of ``num_rows`` is padded to, so that nearby sizes share one compiled
    program: four sizes per doubling (at most a quarter more rows), at least 16.

    Example:
        >>> [row_bucket(n) for n in (1, 16, 17, 90, 181, 182, 272, 1000)]
        [16, 16, 20, 96, 192, 192, 320, 1024]
    """
    if num_rows <= 16:
        return 16
    step = 1 << ((num_rows - 1).bit_length() - 3)
    return -(-num_rows // step) * step


def pad_rows(
    array: np.ndarray, row_weights: Any = None, num_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``array`` with copies of its first row appended up to ``num_rows`` (default:
    :func:`row_bucket`), and row weights that give the copies weight 0 (``None`` when nothing was
    appended and no weights were given).

    A row of weight 0 adds nothing to any statistic, and a copy of a real row is valid data for
    every family (no log-density of minus infinity to multiply by 0), so a fit on the padded rows
    is the fit on the rows themselves. The arguments are not modified.

    Example:
        >>> x, w = pad_rows(np.arange(6.0).reshape(3, 2), num_rows=4)
        >>> x.tolist(), w.tolist()
        ([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [0.0, 1.0]], [1.0, 1.0, 1.0, 0.0])
    """
    n = array.shape[0]
    num_rows = row_bucket(n) if num_rows is None else num_rows
    if num_rows == n:
        return array, None if row_weights is None else np.asarray(row_weights)
    copies = np.repeat(array[:1], num_rows - n, axis=0)
    weights = np.ones(n) if row_weights is None else np.asarray(row_weights, dtype=float)
    return (
        np.concatenate([array, copies]),
        np.concatenate([weights, np.zeros(num_rows - n, weights.dtype)]),
    )


def check_iterations(max_iter: int, tol: float) -> None:
    """``ValueError`` unless ``max_iter`` is a non-negative integer and ``tol`` a non-negative
    number.

    Example:
        >>> check_iterations(10, 1e-3)
    """
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative integer, got {max_iter!r}.")
    if not np.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a non-negative number, got {tol!r}.")


def first_row(x: Any) -> Any:
    """The first row of ``x`` converted as :func:`prepare_data` converts the data (its dtypes, and
    the warning when float64 meets 32-bit mode), for drivers that read the rows themselves; a
    missing value (NaN) is set to 0, since the row only stands for the shapes and dtypes.

    Example:
        >>> first_row(np.array([[np.nan, 1.0], [2.0, 3.0]])).tolist()
        [[0.0, 1.0]]
    """
    head = jax.tree.map(lambda a: np.nan_to_num(np.asarray(a[:1]), nan=0.0), x)
    return prepare_data(head, None)[0]


def model_data(model: Any, x: Any, row_weights: Any = None) -> tuple[Any, Array | None]:
    """:func:`prepare_data` for ``model``: NaN marks a missing value where the model handles
    missing values (``model.handles_missing``)."""
    return prepare_data(x, row_weights, allow_missing=getattr(model, "handles_missing", False))


def is_single_key(key: Any) -> bool:
    """Whether ``key`` is one PRNG key (not a batch of them)."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim == 0
    return key.ndim == 1


def restart_keys(init: Any, num_restarts: int | None) -> Any:
    """A batch of keys from one key split ``num_restarts`` times, or the batch ``init`` itself."""
    if not is_single_key(init):
        return init
    if (
        isinstance(num_restarts, bool)
        or not isinstance(num_restarts, (int, np.integer))
        or num_restarts < 1
    ):
        raise ValueError("num_restarts must be a positive integer when init is one key.")
    return jax.random.split(init, int(num_restarts))


@partial(cached_jit, static_argnames=("num_keys",))
def _seeded_keys(seed: Array, num_keys: int | None) -> Array:
    key = jax.random.key(seed)
    return key if num_keys is None else jax.random.split(key, num_keys)


@partial(cached_jit, static_argnames=("num_lanes",))
def _seeded_lanes(seed: Array, num_keys: Array, num_lanes: int) -> Array:
    # With partitionable threefry the first n keys of a split into more are the split into n, so
    # num_keys can be a run-time value: one program serves every num_keys of a bucket.
    data = jax.random.key_data(jax.random.split(jax.random.key(seed), num_lanes))
    data = jnp.where((jnp.arange(num_lanes) < num_keys)[:, None], data, data[:1])
    return jax.random.wrap_key_data(data)


def seeded_keys(seed: int, num_keys: int | None = None, num_lanes: int | None = None) -> Array:
    """``jax.random.key(seed)`` split ``num_keys`` times (one key for ``None``), as one compiled
    program: made eagerly, the key and the split each compile in every new process. With
    ``num_lanes`` (at least ``num_keys``) the batch is filled up to that many with copies of the
    first key: lanes that repeat lane 0 exactly, so that a fit of them picks the same best lane.

    Example:
        >>> import jax
        >>> bool((seeded_keys(7, 3) == jax.random.split(jax.random.key(7), 3)).all())
        True
        >>> seeded_keys(7, 3, num_lanes=4).shape
        (4,)
    """
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed!r}.")
    seed = np.uint32(seed)
    if num_keys is None or num_lanes is None:
        return _seeded_keys(seed, num_keys)
    if jax.config.jax_threefry_partitionable:  # every num_keys of the bucket: one program
        return _seeded_lanes(seed, num_keys, num_lanes)
    # Otherwise a longer split need not begin with the shorter one: copies added on the host.
    data = np.asarray(jax.random.key_data(_seeded_keys(seed, num_keys)))
    copies = np.repeat(data[:1], num_lanes - num_keys, axis=0)
    return jax.random.wrap_key_data(np.concatenate([data, copies]))


def power_of_two_bucket(size: int, minimum: int = 1) -> int:
    """The next power of two of ``size``, at least ``minimum``: the bucket a size is run in so
    that every size of a bucket shares one compiled program (restart lanes, the history of a fit,
    the draws of a sample).

    Example:
        >>> [power_of_two_bucket(n) for n in (1, 2, 3, 5, 8, 9)]
        [1, 2, 4, 8, 8, 16]
        >>> power_of_two_bucket(3, minimum=16)
        16
    """
    return max(minimum, 1 << (max(size, 1) - 1).bit_length())


def num_lanes(init: Any) -> int:
    """The restarts a batch of keys or of parameters (leading axis on every leaf) holds."""
    return int(init.shape[0]) if is_key(init) else int(jax.tree.leaves(init)[0].shape[0])


__all__ = [
    "ConvergenceWarning",
    "PrecisionWarning",
    "all_finite_leaf",
    "check_iterations",
    "check_missing",
    "first_row",
    "is_key",
    "is_single_key",
    "model_data",
    "num_lanes",
    "prepare_data",
    "PAD_FIT_MAX_ROWS",
    "is_finite",
    "pad_rows",
    "power_of_two_bucket",
    "restart_keys",
    "row_bucket",
    "seeded_keys",
    "weights_ok_on_host",
]
