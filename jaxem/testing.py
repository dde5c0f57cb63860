"""Checks every model must pass, for the test suite and for users' own families.

:func:`check_model` runs the contract on a model and data and raises ``AssertionError`` naming the
first property that fails. :func:`gradient_only` hides a family's closed form, so the gradient
M-step can be compared with it.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxem.core.accelerate import from_unconstrained, to_unconstrained
from jaxem.core.algorithm import em
from jaxem.core.inputs import model_data
from jaxem.core.kernel import Status
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

    def init(self, key: Array, x: Any, row_weights: Array | None) -> Any:
        return self.family.init(key, x, row_weights)

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


def _fit_until_converged(
    algo: Any, params: Any, x: Any, row_weights: Any, max_iter: int, total: int
) -> Any:
    """Fits of ``max_iter`` iterations (one compiled program), each from the last one's
    parameters, until one converges at ``tol=1e-12`` or ``total`` iterations have run."""
    done = 0
    while True:
        result = fit(algo, params, x, row_weights, max_iter=max_iter, tol=1e-12)
        done += int(result.num_iters)
        if int(result.status) != int(Status.MAX_ITER) or done >= total:
            return result
        params = result.params


def check_model(
    model: Any,
    x: Any,
    row_weights: Any = None,
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
    the single fit from key ``i``; the data's dtype is kept; the fitted parameters come back from
    the unconstrained space of ``model.constraints()`` unchanged; a fit with chunks of
    ``chunk_size`` rows equals the whole-data fit from the same parameters; second fits with equal
    configurations (copies of the model), from another key or other parameters, do not compile
    again; jit equals no jit for one EM step; and, for a :class:`Mixture` of
    :class:`ConjugateComponents` with ``fixed_point=True``, the gradient M-step on the family
    without its closed form reaches the closed-form fixed point (log-likelihood within ``rtol``)
    from the same start. The later checks start from ``model.init`` with the first key.

    NaN marks a missing value where the model handles missing values (``model.handles_missing``).
    Run it with float64 enabled for tight tolerances.

    Example:
        >>> import jax, jaxem
        >>> from jaxem.testing import check_model
        >>> x = jax.random.normal(jax.random.key(0), (60, 2))
        >>> check_model(jaxem.Mixture(jaxem.Gaussian(2, "diag")), x, fixed_point=False)
    """
    x, row_weights = model_data(model, x, row_weights)
    key = jax.random.key(0) if key is None else key
    algo = em(model, mstep)
    dtype = jax.tree.leaves(x)[0].dtype
    tight = 1e-10 if dtype == jnp.float64 else 1e-4

    # Restarts: monotone, and lane i == single fit i.
    keys = jax.random.split(key, num_restarts)
    _, lanes = fit_restarts(algo, keys, x, row_weights, max_iter=max_iter, tol=0.0)
    for i in range(num_restarts):
        _monotone(lanes.history[i], int(lanes.num_iters[i]), tight)
    single = fit(algo, keys[1 % num_restarts], x, row_weights, max_iter=max_iter, tol=0.0)
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

    # The unconstrained map of the declared constraints round-trips the fitted parameters.
    back = jax.jit(lambda p: from_unconstrained(model, to_unconstrained(model, p)))(single.params)
    _close(
        single.params,
        back,
        1e-9 if dtype == jnp.float64 else 1e-4,
        tight,
        "parameters and their unconstrained round trip",
    )

    # Chunked == whole, from the parameters drawn with key 0 (the whole-data fit reads the data in
    # one chunk and runs the single fit's program).
    start = jax.jit(model.init)(keys[0], x, row_weights)  # traceable, as in every driver
    chunked_algo = dataclasses.replace(algo, chunk_size=chunk_size)
    whole = fit(algo, start, x, row_weights, max_iter=max_iter, tol=0.0)
    chunked = fit(chunked_algo, start, x, row_weights, max_iter=max_iter, tol=0.0)
    _close(
        whole.params,
        chunked.params,
        1e-7 if dtype == jnp.float64 else 1e-3,
        tight,
        "chunked and whole-data parameters",
    )

    # No recompilation on second fits with equal (not identical) configurations: copies of the
    # model and its parts, from another key and from the fitted parameters.
    copy_whole = dataclasses.replace(algo, model=copy.deepcopy(model))
    copy_chunked = dataclasses.replace(chunked_algo, model=copy.deepcopy(model))
    with count_compilations() as compiled:
        fit(copy_whole, keys[0], x, row_weights, max_iter=max_iter, tol=0.0)
        fit(copy_chunked, whole.params, x, row_weights, max_iter=max_iter, tol=0.0)
    assert not compiled, f"a second fit compiled again: {compiled}"

    # jit == no jit for one step.
    step = full_precision(algo.step)
    with jax.disable_jit():
        eager, eager_objective = step(start, x, row_weights)
    jitted, jitted_objective = jax.jit(step)(start, x, row_weights)
    _close(eager, jitted, 1e-7 if dtype == jnp.float64 else 1e-3, tight, "jit and no-jit steps")
    _close(
        eager_objective,
        jitted_objective,
        1e-9 if dtype == jnp.float64 else 1e-4,
        tight,
        "jit and no-jit objectives",
    )

    # Gradient M-step reaches the closed-form fixed point.
    components = getattr(model, "components", None)
    if fixed_point and isinstance(model, Mixture) and isinstance(components, ConjugateComponents):
        exact = _fit_until_converged(em(model, ClosedForm()), start, x, row_weights, max_iter, 1000)
        autodiff = em(dataclasses.replace(model, components=gradient_only(components)), Gradient())
        found = fit(autodiff, start, x, row_weights, max_iter=1000, tol=1e-12)
        a, b = float(exact.log_likelihood), float(found.log_likelihood)
        assert abs(a - b) <= rtol * abs(a), (
            f"the gradient M-step reached log-likelihood {b!r}, the closed form {a!r}"
        )


__all__ = ["GradientOnly", "check_model", "count_compilations", "gradient_only"]
