"""Matrix products at the precision of their dtype, on every backend.

On GPUs and TPUs, JAX's default precision for float32 matrix products is a reduced one
(TensorFloat-32 on NVIDIA GPUs since Ampere, bfloat16 passes on TPUs): about three decimal digits.
EM's guarantees do not survive that: on an H100 a float32 Gaussian mixture's log-likelihood
decreased at its first iteration, and float32 fits left the float64 fit by far more than float32's
own rounding. Every program jaxem compiles therefore traces its products at the highest precision,
unless the user chose a precision (``jax.default_matmul_precision`` or the
``jax_default_matmul_precision`` option): that choice is kept. On CPUs, and in float64, the
products are the same either way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import jax

F = TypeVar("F", bound=Callable[..., Any])


def full_precision(fn: F) -> F:
    """``fn`` with its matrix products traced at full precision (unless the user set one).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> product = jax.jit(full_precision(lambda a, b: a @ b))
        >>> product(jnp.ones((2, 3)), jnp.ones((3, 2))).tolist()
        [[3.0, 3.0], [3.0, 3.0]]
    """

    @functools.wraps(fn)
    def traced_at_full_precision(*args: Any, **kwargs: Any) -> Any:
        # Read when traced: a precision the user set (the option or the context manager) wins.
        if jax.config.jax_default_matmul_precision is not None:
            return fn(*args, **kwargs)
        with jax.default_matmul_precision("highest"):
            return fn(*args, **kwargs)

    return traced_at_full_precision  # type: ignore[return-value]


def jit(fn: Callable[..., Any] | None = None, **jit_kwargs: Any) -> Any:
    """``jax.jit`` of ``full_precision(fn)``; usable as ``@jit``, ``@partial(jit, ...)`` or a call.

    Each call makes a new program with its own cache: jit a function once (at module level) where
    it runs more than once.

    Example:
        >>> import jax.numpy as jnp
        >>> from functools import partial
        >>> @partial(jit, static_argnames=("power",))
        ... def gram(a, power):
        ...     return (a.T @ a) ** power
        >>> gram(jnp.eye(2), power=2).tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    if fn is None:
        return functools.partial(jit, **jit_kwargs)
    return jax.jit(full_precision(fn), **jit_kwargs)
