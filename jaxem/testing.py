"""Checks every model must pass, for the test suite and for users' own families.

:func:`check_model` runs the contract on a model and data and raises ``AssertionError`` naming the
first property that fails. :func:`gradient_only` hides a family's closed form, so the gradient
M-step can be compared with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxem.core.algorithm import em
from jaxem.core.inputs import prepare_data
from jaxem.core.mixture import Mixture
from jaxem.core.model import Components, ConjugateComponents
from jaxem.core.mstep import ClosedForm, Gradient
from jaxem.core.precision import full_precision
from jaxem.drivers.fit import fit, fit_restarts

Array = jax.Array


@dataclass(frozen=True)
class GradientOnly(Components):
    """A family seen without its closed form: same parameters and densities, no statistics.

    Example:
        >>> import jaxem
        >>> model = jaxem.Mixture(gradient_only(jaxem.Gaussian(2)))
    """

    family: Components

    @property
    def num_components(self) -> int:  # type: ignore[override]
        return self.family.num_components

    def init(self, key: Array, x: Any, weights: Array | None) -> Any:
        return self.family.init(key, x, weights)

    def log_prob(self, params: Any, x_one: Any) -> Array:
        return self.family.log_prob(params, x_one)

    def log_prob_chunk(self, params: Any, x: Any) -> Array:
        return self.family.log_prob_chunk(params, x)

    def log_prior(self, params: Any) -> Array:
        return self.family.log_prior(params)

    def constraints(self) -> Any:
        return self.family.constraints()


def gradient_only(family: Components) -> GradientOnly:
    """``family`` with its closed-form M-step hidden (see :class:`GradientOnly`)."""
    return GradientOnly(family)


# The event JAX records for every program it compiles for a backend.
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextmanager
def count_compilations() -> Iterator[list[str]]:
    """Record the programs JAX compiles inside the block (the list fills as they compile).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> with count_compilations() as compiled:
        ...     _ = jax.jit(lambda a: a + 1)(jnp.ones(3))
        >>> len(compiled) >= 1
        True
    """
    compiled: list[str] = []

    def listener(event: str, duration: float, **kwargs: Any) -> None:
        del duration
        if event == COMPILE_EVENT:
            compiled.append(str(kwargs.get("fun_name", "?")))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiled
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def _monotone(history: np.ndarray, num_iters: int, rtol: float) -> None:
    h = np.asarray(history)[:num_iters]
    drops = np.diff(h)
    scale = rtol * np.maximum(1.0, np.abs(h[1:]))
    worst = int(np.argmin(drops - (-scale))) if drops.size else 0
    assert np.all(drops >= -scale), (
        f"the objective decreased at iteration {worst + 1}: {h[worst]!r} -> {h[worst + 1]!r}"
    )


def _close(a: Any, b: Any, rtol: float, atol: float, what: str) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(
            np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, err_msg=f"{what} differ"
        )


def check_model(
    model: Any,
    x: Any,
    weights: Any = None,
    *,
    mstep: Any = None,
    key: Array | None = None,
    num_restarts: int = 3,
    max_iter: int = 30,
    chunk_size: int = 37,
    fixed_point: bool = True,
    rtol: float = 1e-6,
) -> None:
    """Check the engine's contract on ``model`` and data ``x``; raise ``AssertionError`` if broken.

    Checks: the objective never decreases (over ``num_restarts`` seeds); restart lane ``i`` equals
    the single fit from key ``i``; a fit with chunks of ``chunk_size`` rows equals the whole-data
    fit; jit equals no jit for one EM step; the data's dtype is kept; a second fit with the same
    settings does not compile again; and, for a :class:`Mixture` of :class:`ConjugateComponents`
    with ``fixed_point=True``, the gradient M-step on the family without its closed form reaches
    the closed-form fixed point (log-likelihood within ``rtol``).

    Run it with float64 enabled for tight tolerances.

    Example:
        >>> import jax, jaxem
        >>> from jaxem.testing import check_model
        >>> x = jax.random.normal(jax.random.key(0), (60, 2))
        >>> check_model(jaxem.Mixture(jaxem.Gaussian(2, "diag")), x, fixed_point=False)
    """
    x, weights = prepare_data(x, weights)
    key = jax.random.key(0) if key is None else key
    algo = em(model, mstep)
    dtype = jax.tree.leaves(x)[0].dtype
    tight = 1e-10 if dtype == jnp.float64 else 1e-4

    # Restarts: monotone, and lane i == single fit i.
    keys = jax.random.split(key, num_restarts)
    _, lanes = fit_restarts(algo, keys, x, weights, max_iter=max_iter, tol=0.0)
    for i in range(num_restarts):
        _monotone(lanes.history[i], int(lanes.num_iters[i]), tight)
    single = fit(algo, keys[1 % num_restarts], x, weights, max_iter=max_iter, tol=0.0)
    lane = jax.tree.map(lambda a: a[1 % num_restarts], lanes)
    _close(
        single.params,
        lane.params,
        1e-6 if dtype == jnp.float64 else 1e-3,
        tight,
        "restart lane and single fit parameters",
    )

    # dtype preserved.
    for leaf in jax.tree.leaves(single.params):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == dtype, f"parameters came back as {leaf.dtype}, data is {dtype}"
    assert single.history.dtype == dtype, f"history came back as {single.history.dtype}"

    # Chunked == whole: the single fit above read the data in one chunk.
    chunked_algo = dataclasses.replace(algo, chunk_size=chunk_size)
    key_one = keys[1 % num_restarts]
    chunked = fit(chunked_algo, key_one, x, weights, max_iter=max_iter, tol=0.0)
    _close(
        single.params,
        chunked.params,
        1e-7 if dtype == jnp.float64 else 1e-3,
        tight,
        "chunked and whole-data parameters",
    )

    # jit == no jit for one step.
    start = model.init(keys[0], x, weights)
    step = full_precision(algo.step)
    with jax.disable_jit():
        eager, eager_objective = step(start, x, weights)
    jitted, jitted_objective = jax.jit(step)(start, x, weights)
    _close(eager, jitted, 1e-7 if dtype == jnp.float64 else 1e-3, tight, "jit and no-jit steps")
    _close(
        eager_objective,
        jitted_objective,
        1e-9 if dtype == jnp.float64 else 1e-4,
        tight,
        "jit and no-jit objectives",
    )

    # No recompilation on a second fit with an equal (not identical) configuration.
    with count_compilations() as compiled:
        fit(dataclasses.replace(chunked_algo), key_one, x, weights, max_iter=max_iter, tol=0.0)
    assert not compiled, f"a second fit compiled again: {compiled}"

    # Gradient M-step reaches the closed-form fixed point.
    components = getattr(model, "components", None)
    if fixed_point and isinstance(model, Mixture) and isinstance(components, ConjugateComponents):
        exact = fit(em(model, ClosedForm()), start, x, weights, max_iter=1000, tol=1e-12)
        autodiff = em(dataclasses.replace(model, components=gradient_only(components)), Gradient())
        found = fit(autodiff, start, x, weights, max_iter=1000, tol=1e-12)
        a, b = float(exact.log_likelihood), float(found.log_likelihood)
        assert abs(a - b) <= rtol * abs(a), (
            f"the gradient M-step reached log-likelihood {b!r}, the closed form {a!r}"
        )


__all__ = ["GradientOnly", "check_model", "count_compilations", "gradient_only"]
