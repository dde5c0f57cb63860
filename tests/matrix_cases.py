"""The features of the feature x driver matrix (tests/test_matrix.py), as small fit problems.

Imported by the tests and by the worker process that runs the sharded cells on 4 host devices, so
both build exactly the same problems. Every problem is float64, 157 rows (not a multiple of 4, so
shards are padded), fitted for a fixed number of iterations (``tol=0``) from fixed parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxem
from jaxem.models.gaussian_prior import default_prior
from jaxem.testing import gradient_only

NUM_ROWS = 157
NUM_ITERS = 8
START_KEY = 3


class Case(NamedTuple):
    """One feature as a fit problem.

    Attributes:
        algo: the configured algorithm (model, M-step, chunk size, acceleration).
        x: the data (an array, or a pytree sharing the row axis such as ``(x, labels)``).
        row_weights: per-row weights or ``None``.
        estimator: a function returning the scikit-learn-style estimator with this feature, and
            the keyword arguments of its ``fit`` (``None``: the estimators do not offer it).
    """

    algo: jaxem.EM
    x: Any
    row_weights: Any
    estimator: Any


def blobs(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[3.0, 0.0], [-3.0, 1.0]])
    labels = rng.integers(0, 2, NUM_ROWS)
    return centres[labels] + rng.normal(size=(NUM_ROWS, 2)) * np.array([1.0, 0.7])


def _plain(**settings: Any) -> Case:
    x = blobs()
    model = jaxem.Mixture(jaxem.Gaussian(2))
    return Case(
        jaxem.em(model, **settings),
        x,
        None,
        lambda: (jaxem.MixtureModel(jaxem.Gaussian(2), **_estimator_settings(settings)), {}),
    )


def _estimator_settings(settings: dict) -> dict:
    out = {}
    if "chunk_size" in settings:
        out["chunk_size"] = settings["chunk_size"]
    if "accelerate" in settings:
        out["accelerate"] = settings["accelerate"]
    if "mstep" in settings:
        out["mstep"] = settings["mstep"]
    return out


def row_weights() -> Case:
    case = _plain()
    w = np.random.default_rng(1).uniform(0.2, 3.0, NUM_ROWS)
    return case._replace(
        row_weights=w,
        estimator=lambda: (jaxem.MixtureModel(jaxem.Gaussian(2)), {"sample_weight": w}),
    )


def missing_values() -> Case:
    x = blobs()
    x[::5, 1] = np.nan
    x[3::7, 0] = np.nan
    x[np.isnan(x).all(axis=1), 1] = 0.5  # every row keeps an observed value
    x[0] = [np.nan, 1.0]
    model = jaxem.Mixture(jaxem.MissingValues(jaxem.Gaussian(2)))
    return Case(
        jaxem.em(model),
        x,
        None,
        lambda: (jaxem.MixtureModel(jaxem.Gaussian(2), missing="marginalize"), {}),
    )


def partial_labels() -> Case:
    x = blobs()
    labels = np.full(NUM_ROWS, -1)
    labels[:40:3] = (x[:40:3, 0] > 0).astype(int)
    model = jaxem.Mixture(jaxem.Labelled(jaxem.Gaussian(2)))
    return Case(
        jaxem.em(model),
        (x, labels.astype(np.float64)),
        None,
        lambda: (jaxem.SemiSupervisedMixture(jaxem.Gaussian(2)), {"y": labels}),
    )


def map_prior() -> Case:
    x = blobs()
    family = jaxem.Gaussian(2, prior=default_prior(x, 2))
    model = jaxem.Mixture(family, weight_concentration=2.0)
    return Case(
        jaxem.em(model),
        x,
        None,
        lambda: (jaxem.MixtureModel(family, weight_concentration=2.0), {}),
    )


def frozen_parameters() -> Case:
    return _plain(mstep=jaxem.ClosedForm(frozen=("components.means",)))


def gradient_mstep() -> Case:
    # Adam with a fixed number of steps: a smooth map, so rounding differences between drivers
    # stay at rounding level (a line search could take another branch on them). Its moments are
    # carried from one EM iteration to the next.
    mstep = jaxem.Gradient(
        optimizer=jaxem.Optimizer(optax.adam, 0.05), num_steps=4, tol=0.0, carry_state=True
    )
    family = gradient_only(jaxem.Gaussian(2, "diag"))
    return Case(
        jaxem.em(jaxem.Mixture(family), mstep),
        blobs(),
        None,
        lambda: (jaxem.MixtureModel(family, mstep=mstep), {}),
    )


def squarem() -> Case:
    return _plain(accelerate="squarem")


def chunking() -> Case:
    return _plain(chunk_size=17)


FEATURES = {
    "row weights": row_weights,
    "missing values": missing_values,
    "partial labels": partial_labels,
    "MAP prior": map_prior,
    "frozen parameters": frozen_parameters,
    "gradient M-step (carried state)": gradient_mstep,
    "SQUAREM": squarem,
    "chunking": chunking,
}


def case(feature: str) -> Case:
    return FEATURES[feature]()


def start(case: Case) -> Any:
    """The starting parameters of a case (a key's start on all rows)."""
    x, w = jaxem.core.inputs.model_data(case.algo.model, case.x, case.row_weights)
    return case.algo.model.init(jax.random.key(START_KEY), x, w)


def second_start(case: Case) -> Any:
    """Another start, for the restart drivers' second lane."""
    x, w = jaxem.core.inputs.model_data(case.algo.model, case.x, case.row_weights)
    return case.algo.model.init(jax.random.key(START_KEY + 1), x, w)


def lanes(*starts: Any) -> Any:
    return jax.tree.map(lambda *a: jnp.stack(a), *starts)


def chunked_source(case: Case, size: int = 40) -> Any:
    """The case's rows as a function returning chunks of ``size`` rows, ``(x, weights)`` pairs."""

    def chunks() -> Any:
        for begin in range(0, NUM_ROWS, size):
            rows = slice(begin, begin + size)
            x = jax.tree.map(lambda a, rows=rows: np.asarray(a)[rows], case.x)
            yield x, None if case.row_weights is None else case.row_weights[rows]

    return chunks


def replace_chunk(case: Case, chunk_size: int | None) -> Case:
    return case._replace(algo=dataclasses.replace(case.algo, chunk_size=chunk_size))
