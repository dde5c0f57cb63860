"""The gradient M-step: closed-form fixed point, monotone by construction, frozen leaves, state."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxem
from jaxem.core.rows import Rows
from jaxem.testing import count_compilations, gradient_only

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def blobs():
    k1, k2 = jax.random.split(jax.random.key(0))
    return jnp.concatenate(
        [
            jax.random.normal(k1, (60, 2)),
            jnp.array([4.0, 1.0]) + 0.5 * jax.random.normal(k2, (60, 2)),
        ]
    )


def _assert_monotone(history, num_iters, rtol=1e-10):
    h = np.asarray(history)[: int(num_iters)]
    assert h.size >= 2
    assert np.all(np.diff(h) >= -rtol * np.abs(h[1:])), np.diff(h).min()


@pytest.mark.slow
@pytest.mark.parametrize("covariance_type", ["full"])  # the others: test_check_model.py
def test_gradient_reaches_closed_form_fixed_point(blobs, covariance_type):
    family = jaxem.Gaussian(2, covariance_type=covariance_type)
    model = jaxem.Mixture(family)
    start = model.init(jax.random.key(3), blobs, None)
    exact = jaxem.fit(jaxem.em(model), start, blobs, max_iter=1000, tol=1e-12)
    autodiff = jaxem.em(jaxem.Mixture(gradient_only(family)), jaxem.Gradient())
    found = jaxem.fit(autodiff, start, blobs, max_iter=1000, tol=1e-12)
    assert int(found.status) == jaxem.Status.CONVERGED
    a, b = float(exact.log_likelihood), float(found.log_likelihood)
    assert abs(a - b) <= 1e-6 * abs(a)
    np.testing.assert_allclose(found.params.weights, exact.params.weights, atol=1e-4)
    np.testing.assert_allclose(
        found.params.components.means, exact.params.components.means, atol=1e-3
    )
    _assert_monotone(found.history, found.num_iters)


@pytest.mark.parametrize(
    "mstep",
    [
        jaxem.Gradient(num_steps=5),
        # A deliberately bad optimizer: the acceptance rule alone keeps the fit monotone.
        jaxem.Gradient(optimizer=jaxem.Optimizer(optax.sgd, 1e4), num_steps=3),
    ],
    ids=["lbfgs", "huge-lr-sgd"],
)
def test_monotone_over_twenty_seeds(blobs, mstep):
    model = jaxem.Mixture(gradient_only(jaxem.Gaussian(3, covariance_type="diag")))
    _, lanes = jaxem.fit_restarts(
        jaxem.em(model, mstep), jax.random.key(1), blobs, num_restarts=20, max_iter=15, tol=0.0
    )
    for i in range(20):
        _assert_monotone(lanes.history[i], lanes.num_iters[i])
    assert bool(jnp.all(lanes.status != jaxem.Status.NONFINITE))


def test_huge_learning_rate_is_rejected_but_weights_still_move(blobs):
    # Every gradient proposal is rejected, so only the closed-form weights change.
    model = jaxem.Mixture(gradient_only(jaxem.Gaussian(2, covariance_type="diag")))
    start = model.init(jax.random.key(2), blobs, None)
    start = start._replace(weights=jnp.array([0.9, 0.1]))
    mstep = jaxem.Gradient(optimizer=jaxem.Optimizer(optax.sgd, 1e12), num_steps=1, num_backoffs=0)
    new, _ = jaxem.em(model, mstep).step(start, blobs, None)
    np.testing.assert_array_equal(new.components.means, start.components.means)
    assert not np.allclose(new.weights, start.weights)


def test_frozen_leaves_stay_fixed_in_both_msteps(blobs):
    model = jaxem.Mixture(jaxem.Gaussian(2, covariance_type="diag"))
    start = model.init(jax.random.key(4), blobs, None)
    grad = jaxem.fit(
        jaxem.em(
            jaxem.Mixture(gradient_only(model.components)),
            jaxem.Gradient(num_steps=5, frozen=("components.means",)),
        ),
        start,
        blobs,
        max_iter=10,
        tol=0.0,
    )
    np.testing.assert_array_equal(grad.params.components.means, start.components.means)
    assert not np.allclose(
        grad.params.components.precision_cholesky, start.components.precision_cholesky
    )
    _assert_monotone(grad.history, grad.num_iters)

    closed = jaxem.fit(
        jaxem.em(model, jaxem.ClosedForm(frozen=("weights", "components.precision_cholesky"))),
        start,
        blobs,
        max_iter=10,
        tol=0.0,
    )
    np.testing.assert_array_equal(closed.params.weights, start.weights)
    np.testing.assert_array_equal(
        closed.params.components.precision_cholesky, start.components.precision_cholesky
    )
    assert not np.allclose(closed.params.components.means, start.components.means)
    _assert_monotone(closed.history, closed.num_iters)

    # A frozen mean makes the closed-form covariance inexact: the guard keeps the fit monotone.
    guarded = jaxem.fit(
        jaxem.em(model, jaxem.ClosedForm(frozen=("components.means",))),
        start,
        blobs,
        max_iter=10,
        tol=0.0,
    )
    np.testing.assert_array_equal(guarded.params.components.means, start.components.means)
    _assert_monotone(guarded.history, guarded.num_iters)


def test_frozen_mask_pytree_equals_paths(blobs):
    from jaxem.core.mstep import frozen_leaves

    params = jaxem.Mixture(jaxem.Gaussian(2)).init(jax.random.key(0), blobs, None)
    mask = jaxem.MixtureParams(True, jaxem.GaussianParams(False, True))
    assert frozen_leaves(mask, params) == frozen_leaves(
        ("weights", "components.precision_cholesky"), params
    )
    assert frozen_leaves(("components",), params) == [False, True, True]


def test_carried_optimizer_state_reaches_the_same_optimum(blobs):
    family = jaxem.Gaussian(2, covariance_type="spherical")
    start = jaxem.Mixture(family).init(jax.random.key(3), blobs, None)
    model = jaxem.Mixture(gradient_only(family))
    fresh = jaxem.fit(
        jaxem.em(model, jaxem.Gradient(num_steps=5)), start, blobs, max_iter=300, tol=1e-11
    )
    carried = jaxem.fit(
        jaxem.em(model, jaxem.Gradient(num_steps=5, carry_state=True)),
        start,
        blobs,
        max_iter=300,
        tol=1e-11,
    )
    _assert_monotone(carried.history, carried.num_iters)
    np.testing.assert_allclose(carried.log_likelihood, fresh.log_likelihood, rtol=1e-7)


def test_equal_settings_do_not_recompile(blobs):
    model = jaxem.Mixture(gradient_only(jaxem.Gaussian(2, covariance_type="spherical")))
    start = model.init(jax.random.key(0), blobs, None)

    def run():
        mstep = jaxem.Gradient(
            optimizer=jaxem.Optimizer(optax.adam, learning_rate=0.1), num_steps=2
        )
        return jaxem.fit(jaxem.em(model, mstep, chunk_size=40), start, blobs, max_iter=2)

    run()
    with count_compilations() as compiled:
        run()
    assert compiled == []


def test_gradient_is_chunk_invariant(blobs):
    model = jaxem.Mixture(gradient_only(jaxem.Gaussian(2, covariance_type="spherical")))
    start = model.init(jax.random.key(0), blobs, None)
    algo = jaxem.em(model, jaxem.Gradient(num_steps=4))
    whole = jaxem.fit(algo, start, blobs, max_iter=3, tol=0.0)
    chunked = jaxem.fit(dataclasses.replace(algo, chunk_size=25), start, blobs, max_iter=3, tol=0.0)
    np.testing.assert_allclose(chunked.history, whole.history, rtol=1e-9)


def test_closed_form_blocks_are_used_by_the_gradient_step(blobs):
    # On a conjugate family every block is closed form: Gradient equals ClosedForm.
    model = jaxem.Mixture(jaxem.Gaussian(2))
    start = model.init(jax.random.key(0), blobs, None)
    closed, _ = jaxem.em(model).step(start, blobs, None)
    grad, _ = jaxem.em(model, jaxem.Gradient()).step(start, blobs, None)
    for a, b in zip(jax.tree.leaves(closed), jax.tree.leaves(grad), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_steps": 0}, "num_steps must be a positive integer, got 0."),
        ({"num_backoffs": -1}, "num_backoffs must be a non-negative integer, got -1."),
        ({"tol": -1.0}, "tol must be non-negative, got -1.0."),
        ({"optimizer": 3}, "optimizer must be None (L-BFGS), a jaxem.Optimizer"),
        ({"frozen": [["weights"]]}, "frozen must be hashable"),
    ],
)
def test_bad_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        jaxem.Gradient(**kwargs)


def test_unknown_frozen_path_names_the_parameters(blobs):
    model = jaxem.Mixture(jaxem.Gaussian(2))
    algo = jaxem.em(model, jaxem.ClosedForm(frozen=("components.mean",)))
    with pytest.raises(
        ValueError, match=r"frozen names 'components\.mean', which is not a parameter"
    ):
        jaxem.fit(algo, jax.random.key(0), blobs, max_iter=2)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_gradient_m_step_working_memory_does_not_grow_with_the_rows(optimizer):
    """Q and its gradient are reduced chunk by chunk inside the optimizer's loop: the compiled EM
    step needs the same scratch memory for 4x the rows (an N x K array of responsibilities kept
    across the optimizer's steps would add 3 x 16384 x 8 values here)."""
    family = jaxem.Gaussian(8, "full")
    opt = None if optimizer == "lbfgs" else jaxem.Optimizer(optax.adam, 0.05)
    algo = jaxem.em(jaxem.Mixture(gradient_only(family)), jaxem.Gradient(opt, num_steps=5))

    def scratch_bytes(num_rows: int) -> int:
        x = jax.random.normal(jax.random.key(0), (num_rows, 3), jnp.float32)
        rows = Rows.in_memory(x, chunk_size=1024)
        state = algo.kernel.init(algo.model.init(jax.random.key(1), x[:512], None), rows)
        compiled = jax.jit(algo.kernel.step).lower(state, rows).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    small, large = scratch_bytes(16384), scratch_bytes(4 * 16384)
    assert large <= small + 64 * 1024, (small, large)
