"""Compiled programs take float32 matrix products at full precision, unless the user chose one.

On CPUs every precision gives the same float32 products, so these tests read the precision in the
lowered programs; on a GPU the float32 tests of the families (monotone log-likelihood, float32
against float64) are what a reduced precision breaks.
"""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem
from jaxem.core.precision import full_precision, jit
from jaxem.core.program_cache import clear_memory
from jaxem.testing import count_compilations


def data(dtype=np.float32) -> jax.Array:
    x = np.random.default_rng(0).normal(size=(300, 3))
    x[:150] += 4.0
    return jnp.asarray(x, dtype)


def dot_precisions(text: str) -> list[str]:
    """The precision of every matrix product in a program's StableHLO text."""
    dots = re.findall(r"stablehlo\.dot_general.*", text)
    found = [re.search(r"precision = \[(\w+),", dot) for dot in dots]
    return [match.group(1) if match else "DEFAULT" for match in found]


@contextmanager
def lowered_programs(directory: Path) -> Iterator[list[str]]:
    """The StableHLO text of every program lowered inside the block (JAX's IR dump), filled in
    when the block ends. The compiled-program caches are emptied first, so that every program the
    block runs is lowered (and seen) again."""
    programs: list[str] = []
    jax.clear_caches()
    clear_memory()
    previous = jax.config.values["jax_dump_ir_to"]
    jax.config.update("jax_dump_ir_to", str(directory))
    try:
        yield programs
    finally:
        jax.config.update("jax_dump_ir_to", previous)
    programs.extend(path.read_text() for path in sorted(directory.glob("*.mlir")))


def products(programs: list[str]) -> list[list[str]]:
    """The precisions of the products of each program that has any."""
    found = [dot_precisions(text) for text in programs]
    return [precisions for precisions in found if precisions]


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_fit_programs_take_products_at_the_highest_precision(covariance_type, tmp_path):
    x = data()
    algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2, covariance_type)))
    params = algo.model.init(jax.random.key(0), x, None)
    lanes = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), params)
    with lowered_programs(tmp_path) as programs:
        jaxem.fit(algo, jax.random.key(0), x, max_iter=3)  # the start from a key, and the fit
        jaxem.fit_restarts(algo, lanes, x, max_iter=3)
    found = products(programs)
    assert len(found) >= 3, "the start, the fit and the restarts have matrix products"
    for precisions in found:
        assert set(precisions) == {"HIGHEST"}


def test_estimator_programs_take_products_at_the_highest_precision(tmp_path):
    x = np.asarray(data())
    with lowered_programs(tmp_path) as programs:
        estimator = jaxem.GaussianMixture(2, max_iter=3, random_state=0).fit(x)
        estimator.score_samples(x)
        estimator.predict_proba(x)
    found = products(programs)
    assert len(found) >= 3
    for precisions in found:
        assert set(precisions) == {"HIGHEST"}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("tensorfloat32", "HIGH"), ("bfloat16", "DEFAULT"), ("float32", "HIGHEST")],
)
def test_a_precision_the_user_chose_is_kept(choice, expected, tmp_path):
    x = data()
    algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2)))
    params = algo.model.init(jax.random.key(0), x, None)
    with lowered_programs(tmp_path) as programs, jax.default_matmul_precision(choice):
        jaxem.fit(algo, params, x, max_iter=3)
    found = products(programs)
    assert found, "the fit has matrix products"
    for precisions in found:
        assert set(precisions) == {expected}


def test_partial_fit_compiles_its_update_once():
    x = np.asarray(data(np.float64))
    estimator = jaxem.GaussianMixture(2, random_state=0)
    # The first update (no running statistics yet) is a program of its own.
    estimator.partial_fit(x[:75]).partial_fit(x[75:150])
    with count_compilations() as compiled:
        for rows in (slice(150, 225), slice(225, 300)):
            estimator.partial_fit(x[rows])
    assert compiled == []


def test_wrapped_functions_keep_their_names_and_static_arguments():
    def power(a, exponent):
        """Raise ``a`` to ``exponent``."""
        return a**exponent

    wrapped = full_precision(power)
    assert wrapped.__name__ == "power" and wrapped.__doc__ == power.__doc__
    squared = jit(power, static_argnames=("exponent",))(jnp.arange(3.0), exponent=2)
    np.testing.assert_array_equal(np.asarray(squared), [0.0, 1.0, 4.0])
