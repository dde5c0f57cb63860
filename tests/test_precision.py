"""Compiled programs take float32 matrix products at full precision, unless the user chose one.

On CPUs every precision gives the same float32 products, so these tests read the precision in the
lowered programs; on a GPU the float32 tests of the families (monotone log-likelihood, float32
against float64) are what a reduced precision breaks.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem
from jaxem import sklearn as jaxem_sklearn
from jaxem.core import engine
from jaxem.core.precision import full_precision, jit
from jaxem.streaming import _online_update


def data(dtype=np.float32) -> jax.Array:
    x = np.random.default_rng(0).normal(size=(300, 3))
    x[:150] += 4.0
    return jnp.asarray(x, dtype)


def dot_precisions(lowered: jax.stages.Lowered) -> list[str]:
    """The precision of every matrix product in a lowered program (its StableHLO text)."""
    text = lowered.as_text()
    dots = re.findall(r"stablehlo\.dot_general.*", text)
    assert dots, "the program has no matrix product to check"
    found = [re.search(r"precision = \[(\w+),", dot) for dot in dots]
    return [match.group(1) if match else "DEFAULT" for match in found]


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_fit_programs_take_products_at_the_highest_precision(covariance_type):
    x = data()
    algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2, covariance_type)))
    params = algo.model.init(jax.random.key(0), x, None)
    tol = jnp.float32(1e-3)
    single = engine._fit_from_params.lower(algo, params, x, None, tol, max_iter=3, verbose=0)
    lanes = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), params)
    restarts = engine._fit_restarts_from_params.lower(
        algo, lanes, x, None, tol, max_iter=3, verbose=0
    )
    start = engine._start_from_key.lower(algo.model, jax.random.key(0), x, None, size=300)
    for program in (single, restarts, start):
        assert set(dot_precisions(program)) == {"HIGHEST"}


def test_estimator_programs_take_products_at_the_highest_precision():
    x = data()
    model = jaxem.Mixture(jaxem.Gaussian(2))
    params = model.init(jax.random.key(0), x, None)
    per_row = jaxem_sklearn._per_row.lower(model, params, x, output="log_prob", batch_size=100)
    attributes = jaxem_sklearn._gaussian_attributes.lower(
        model.components, params.components, jnp.ones(2, x.dtype)
    )
    for program in (per_row, attributes):
        assert set(dot_precisions(program)) == {"HIGHEST"}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("tensorfloat32", "HIGH"), ("bfloat16", "DEFAULT"), ("float32", "HIGHEST")],
)
def test_a_precision_the_user_chose_is_kept(choice, expected):
    x = data()
    algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2)))
    params = algo.model.init(jax.random.key(0), x, None)
    with jax.default_matmul_precision(choice):
        program = engine._fit_from_params.lower(
            algo, params, x, None, jnp.float32(1e-3), max_iter=3, verbose=0
        )
    assert set(dot_precisions(program)) == {expected}


def test_partial_fit_compiles_its_update_once():
    x = np.asarray(data(np.float64))
    estimator = jaxem.GaussianMixture(2, random_state=0)
    # The first update (no running statistics yet) is a program of its own.
    estimator.partial_fit(x[:75]).partial_fit(x[75:150])
    compiled = _online_update._cache_size()
    for rows in (slice(150, 225), slice(225, 300)):
        estimator.partial_fit(x[rows])
    assert _online_update._cache_size() == compiled


def test_wrapped_functions_keep_their_names_and_static_arguments():
    def power(a, exponent):
        """Raise ``a`` to ``exponent``."""
        return a**exponent

    wrapped = full_precision(power)
    assert wrapped.__name__ == "power" and wrapped.__doc__ == power.__doc__
    squared = jit(power, static_argnames=("exponent",))(jnp.arange(3.0), exponent=2)
    np.testing.assert_array_equal(np.asarray(squared), [0.0, 1.0, 4.0])
