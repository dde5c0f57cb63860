"""Eager checks of estimator input, run before any work so that a mistake fails fast and clearly.

Every check raises ``ValueError`` (``TypeError`` where NumPy itself cannot turn a value into a
number) with a message that names the problem and the remedy. The checks only read their
arguments: they return converted copies or views and never write to what the user passed.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxem.core.inputs import check_missing

# scikit-learn's tolerance on the sum of user-given weights.
WEIGHTS_SUM_ATOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-8}


def check_data(x: Any, name: str = "X", *, allow_missing: bool = False) -> np.ndarray:
    """``x`` as a finite, non-empty 2-D float array (float32 and float64 kept, others float64).

    With ``allow_missing`` NaN marks a missing value and is kept, but a row with every value
    missing is refused (see :func:`jaxem.core.inputs.check_missing`).

    Example:
        >>> check_data([[1, 2], [3, 4]]).dtype
        dtype('float64')
    """
    if hasattr(x, "toarray") or hasattr(x, "tocsr"):
        raise TypeError(
            f"{name} is a sparse matrix, and sparse input is not supported: pass a dense array "
            f"({name}.toarray()) if it fits in memory."
        )
    array = np.asarray(x)
    if np.iscomplexobj(array):
        raise ValueError(
            f"Complex data not supported: {name} has dtype {array.dtype}; pass real-valued "
            f"features (for instance {name}.real and {name}.imag as separate columns)."
        )
    if array.dtype.kind in "USV":
        raise ValueError(
            f"{name} must be numeric, got dtype {array.dtype}: encode text or categorical "
            "columns as numbers first."
        )
    if array.dtype not in (np.float32, np.float64):
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise type(err)(
                f"{name} must be numeric, but converting it to float failed ({err}): encode "
                "text or categorical columns as numbers first."
            ) from None
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (n_samples, n_features), got {array.ndim}-D with shape "
            f"{array.shape}. Reshape your data with {name}.reshape(-1, 1) if it has a single "
            f"feature or {name}.reshape(1, -1) if it is a single sample."
        )
    if array.shape[0] == 0:
        raise ValueError(
            f"{name} has 0 sample(s) (shape={array.shape}) while a minimum of 1 is required: "
            "pass at least one row."
        )
    if array.shape[1] == 0:
        raise ValueError(
            f"{name} has 0 feature(s) (shape={array.shape}) while a minimum of 1 is required: "
            "pass at least one column."
        )
    if allow_missing:
        check_missing(array, name, check_columns=False)
    elif not np.all(np.isfinite(array)):
        raise ValueError(
            f"{name} contains NaN or infinity: remove or impute those values before fitting "
            "(for instance with sklearn.impute.SimpleImputer)."
        )
    return array


def check_num_features(array: np.ndarray, expected: int, owner: str) -> None:
    """Data given after fitting must have the features the estimator was fitted on."""
    if array.shape[1] != expected:
        raise ValueError(
            f"X has {array.shape[1]} features, but {owner} is expecting {expected} features as "
            "input: pass data with the columns used in fit."
        )


def check_sample_weight(sample_weight: Any, num_samples: int) -> np.ndarray | None:
    """``None``, or one finite non-negative weight per row with at least one positive."""
    if sample_weight is None:
        return None
    weights = np.asarray(sample_weight)
    if weights.ndim == 0:
        weights = np.full(num_samples, weights, dtype=np.float64)
    try:
        weights = weights.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"sample_weight must be numeric, got dtype {weights.dtype}: pass one number per row."
        ) from None
    if weights.shape != (num_samples,):
        raise ValueError(
            f"sample_weight has shape {weights.shape} but X has {num_samples} samples: pass one "
            "weight per row of X."
        )
    if not np.all(np.isfinite(weights)):
        raise ValueError("sample_weight contains NaN or infinity: pass finite weights.")
    if np.any(weights < 0):
        raise ValueError(
            f"sample_weight has negative values (min {weights.min():g}): weights must be "
            "non-negative; drop those rows or give them weight 0."
        )
    if not np.any(weights > 0):
        raise ValueError(
            "sample_weight is zero for every sample: at least one sample needs a positive weight."
        )
    return weights


def check_int(name: str, value: Any, minimum: int) -> int:
    """An integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_real(name: str, value: Any, minimum: float, *, strict: bool = False) -> float:
    """A finite real number of at least (or, with ``strict``, above) ``minimum``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum):
        bound = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {bound} {minimum}, got {value!r}.")
    return float(value)


def check_optional_int(name: str, value: Any, minimum: int) -> int | None:
    """``None`` or an integer of at least ``minimum``."""
    return None if value is None else check_int(name, value, minimum)


def check_bool(name: str, value: Any) -> bool:
    """A bool (NumPy's included)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}.")
    return bool(value)


def check_choice(name: str, value: Any, options: Sequence[str]) -> str:
    """One of ``options``."""
    if not isinstance(value, str) or value not in options:
        choices = ", ".join(repr(o) for o in options)
        raise ValueError(f"Unknown {name} {value!r}: use one of {choices}.")
    return value


def check_num_components(num_components: Any, num_samples: int) -> int:
    """A component count between 1 and the number of samples."""
    k = check_int("n_components", num_components, 1)
    if k > num_samples:
        raise ValueError(
            f"X has {num_samples} samples but n_components={k}: each component needs at least "
            "one sample; lower n_components or pass more data (n_samples >= n_components)."
        )
    return k


def check_random_state(random_state: Any) -> int:
    """A seed for ``jax.random.key`` from scikit-learn's ``random_state`` conventions.

    An integer is the seed itself (so ``random_state=i`` and ``jax.random.key(i)`` agree); a
    ``RandomState`` or ``Generator`` is drawn from (advancing it), and ``None`` draws from NumPy's
    global generator, as scikit-learn does.
    """
    if random_state is None:
        return int(np.random.randint(np.iinfo(np.int32).max))
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if not 0 <= random_state < 2**32:
            raise ValueError(f"random_state must be in [0, 2**32), got {random_state!r}.")
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(np.iinfo(np.int32).max))
    raise ValueError(
        f"random_state must be None, an integer, a numpy RandomState or Generator, got "
        f"{random_state!r}."
    )


def check_init_array(name: str, value: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A user-given initial parameter array of exactly ``shape``, finite, converted to ``dtype``."""
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a numeric array of shape {shape}.") from None
    if array.shape != shape:
        raise ValueError(
            f"{name} should have the shape {shape}, but got {array.shape}: pass one entry per "
            "component (and per feature) in scikit-learn's layout."
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinity: pass finite values.")
    return array


def check_weights_init(value: Any, num_components: int, dtype: np.dtype) -> np.ndarray:
    """Initial mixture weights: shape ``[K]``, in [0, 1], summing to 1."""
    weights = check_init_array("weights_init", value, (num_components,), dtype)
    if np.any(weights < 0) or np.any(weights > 1):
        raise ValueError(
            f"weights_init must lie in [0, 1], got min {weights.min():.5g} and max "
            f"{weights.max():.5g}: pass proportions."
        )
    total = float(np.sum(weights, dtype=np.float64))
    if abs(total - 1.0) > WEIGHTS_SUM_ATOL[weights.dtype]:
        raise ValueError(
            f"weights_init must sum to 1, got sum {total:.5g}: normalise it "
            "(weights_init / weights_init.sum())."
        )
    return weights


def check_positive_definite(name: str, matrices: np.ndarray) -> None:
    """Each ``[D, D]`` matrix in ``matrices`` (``[D, D]`` or ``[K, D, D]``) is symmetric positive
    definite."""
    batch = matrices.reshape((-1, *matrices.shape[-2:]))
    symmetric = np.allclose(batch, np.swapaxes(batch, -1, -2))
    if not symmetric or not np.all(np.linalg.eigvalsh(batch) > 0):
        raise ValueError(
            f"{name} must be symmetric and positive definite: pass inverse covariance matrices "
            "(for instance np.linalg.inv of covariances plus a small ridge)."
        )


def check_positive(name: str, values: np.ndarray) -> None:
    """Every entry is > 0."""
    if np.any(values <= 0):
        raise ValueError(
            f"{name} must be positive (precisions are inverse variances), got min "
            f"{values.min():.5g}."
        )
