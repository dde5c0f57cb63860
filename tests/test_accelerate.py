"""SQUAREM: same optimum as plain EM in fewer E-steps, monotone, and lane-wise exact under vmap."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxem
from jaxem.core.accelerate import Squarem, SquaremState, from_unconstrained, to_unconstrained

pytestmark = pytest.mark.timeout(120)

COVARIANCE_TYPES = (
    "full",
    pytest.param("tied", marks=pytest.mark.slow),
    "diag",
    pytest.param("spherical", marks=pytest.mark.slow),
)


def overlapping_blobs(n: int = 150, seed: int = 0) -> np.ndarray:
    """Two strongly overlapping clusters: plain EM crawls here."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, 1.0, (n, 2))
    b = rng.normal(1.2, 1.0, (n, 2)) * np.array([1.0, 1.6])
    return np.concatenate([a, b])


def separated_blobs(n: int = 150, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(c, 1.0, (n, 2)) for c in ([0.0, 0.0], [6.0, 0.0])])


# One data size and one max_iter wherever possible, so tests share compiled fits.
MAX_ITER = 5000


def fitted(accelerate, x, covariance_type="full", k=2, tol=1e-10, max_iter=MAX_ITER, **kwargs):
    algo = jaxem.em(
        jaxem.Mixture(jaxem.Gaussian(k, covariance_type)), accelerate=accelerate, **kwargs
    )
    return jaxem.fit(algo, jax.random.key(0), x, tol=tol, max_iter=max_iter)


@functools.cache
def overlapping_fits(covariance_type: str):
    x = overlapping_blobs()
    return fitted(None, x, covariance_type), fitted("squarem", x, covariance_type)


def recorded(result, x) -> np.ndarray:
    """The history of the E-steps run, as means per row of ``x`` (the history holds totals)."""
    return np.asarray(result.history)[: int(result.num_iters)] / len(x)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_reaches_the_plain_em_optimum_in_fewer_e_steps(covariance_type):
    plain, fast = overlapping_fits(covariance_type)
    assert int(plain.status) == int(fast.status) == jaxem.Status.CONVERGED
    assert float(fast.log_likelihood) == pytest.approx(float(plain.log_likelihood), rel=1e-8)
    # Both stop on the same rule (on the mean per row), so SQUAREM is no more than
    # tol * (slow EM steps) short of it.
    n = len(overlapping_blobs())
    assert float(fast.log_likelihood) / n >= float(plain.log_likelihood) / n - 1e-10
    assert int(fast.num_iters) * 2 < int(plain.num_iters)
    # The likelihood is flat here: plain EM stops with the weights still moving by ~1e-7 a step.
    np.testing.assert_allclose(fast.params.weights, plain.params.weights, atol=2e-3)


def test_fewer_e_steps_and_same_answer_on_well_separated_data():
    x = separated_blobs()
    plain = fitted(None, x, tol=1e-12)
    fast = fitted("squarem", x, tol=1e-12)
    assert int(fast.status) == jaxem.Status.CONVERGED
    assert float(fast.log_likelihood) == pytest.approx(float(plain.log_likelihood), rel=1e-8)
    assert int(fast.num_iters) <= int(plain.num_iters)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_recorded_objective_never_decreases(covariance_type):
    _, result = overlapping_fits(covariance_type)
    history = recorded(result, overlapping_blobs())
    assert len(history) > 6
    assert np.all(np.diff(history) >= -1e-13)


def test_rejected_extrapolations_fall_back_to_plain_em():
    # A step length of 1e6 overshoots every time, so every cycle is two plain EM steps and one
    # rejected jump: the accepted iterates, and hence the answer, are plain EM's.
    x = overlapping_blobs()
    always_rejected = Squarem(step_min=1e6, step_max=1e6)
    plain = fitted(None, x, tol=1e-6)
    guarded = fitted(always_rejected, x, tol=1e-6)
    assert int(guarded.status) == jaxem.Status.CONVERGED
    np.testing.assert_allclose(guarded.params.weights, plain.params.weights, rtol=1e-10)
    np.testing.assert_allclose(
        guarded.params.components.means, plain.params.components.means, rtol=1e-10
    )
    assert float(guarded.log_likelihood) == pytest.approx(float(plain.log_likelihood), rel=1e-12)
    history = recorded(guarded, x)
    assert np.all(np.diff(history) >= -1e-13)
    # Passes 0 and 1 of each cycle are EM steps, pass 2 records the fallback (t1's objective).
    np.testing.assert_allclose(history[0::3], recorded(plain, x)[0::2][: len(history[0::3])])


def test_restart_lanes_equal_single_fits():
    x = overlapping_blobs()
    algo = jaxem.em(jaxem.Mixture(jaxem.Gaussian(2)), accelerate="squarem")
    keys = jax.random.split(jax.random.key(3), 3)
    _, lanes = jaxem.fit_restarts(algo, keys, x, tol=1e-8, max_iter=MAX_ITER)
    for i in range(3):
        single = jaxem.fit(algo, keys[i], x, tol=1e-8, max_iter=MAX_ITER)
        assert int(lanes.num_iters[i]) == int(single.num_iters)
        assert int(lanes.status[i]) == int(single.status)
        np.testing.assert_allclose(lanes.log_likelihood[i], single.log_likelihood, rtol=1e-12)
        np.testing.assert_allclose(
            lanes.params.components.means[i], single.params.components.means, rtol=1e-9, atol=1e-12
        )


def test_chunked_equals_whole():
    x = overlapping_blobs()
    whole = fitted("squarem", x, tol=1e-8, chunk_size=len(x))
    chunked = fitted("squarem", x, tol=1e-8, chunk_size=64)
    assert int(whole.num_iters) == int(chunked.num_iters)
    np.testing.assert_allclose(chunked.log_likelihood, whole.log_likelihood, rtol=1e-12)
    np.testing.assert_allclose(
        chunked.params.components.precision_cholesky,
        whole.params.components.precision_cholesky,
        rtol=1e-8,
    )


def test_max_iter_bounds_the_e_steps():
    x = overlapping_blobs()
    result = fitted("squarem", x, tol=0.0, max_iter=7)
    assert int(result.num_iters) == 7
    assert int(result.status) == jaxem.Status.MAX_ITER
    assert np.all(np.isfinite(recorded(result, x)))


def test_float32_fit_stays_float32_and_finite():
    x = overlapping_blobs().astype(np.float32)
    result = fitted("squarem", x, tol=1e-5)
    assert result.params.components.means.dtype == jnp.float32
    assert result.log_likelihood.dtype == jnp.float32
    assert int(result.status) == jaxem.Status.CONVERGED


@pytest.mark.slow
def test_empty_component_keeps_a_zero_weight():
    # A zero weight has log weight -inf in the unconstrained space; the jump must leave it there.
    x = overlapping_blobs()
    model = jaxem.Mixture(jaxem.Gaussian(3))
    start = jax.jit(model.init)(jax.random.key(0), jnp.asarray(x), None)
    start = start._replace(weights=jnp.array([0.5, 0.5, 0.0]))
    plain = jaxem.fit(jaxem.em(model), start, x, tol=1e-10, max_iter=MAX_ITER)
    fast = jaxem.fit(jaxem.em(model, accelerate="squarem"), start, x, tol=1e-10, max_iter=MAX_ITER)
    assert int(plain.status) == int(fast.status) == jaxem.Status.CONVERGED
    assert float(fast.params.weights[2]) == 0.0
    assert float(jnp.sum(fast.params.weights)) == pytest.approx(1.0, rel=1e-12)
    assert np.all(np.diff(recorded(fast, x)) >= -1e-13)
    assert float(fast.log_likelihood) == pytest.approx(float(plain.log_likelihood), rel=1e-8)
    assert int(fast.num_iters) * 2 < int(plain.num_iters)


@functools.partial(jax.jit, static_argnums=0)
def two_steps_and_jumps(model, x):
    """Initial params, their unconstrained round trip, t2, and jumps of length 1 and 8."""
    params = model.init(jax.random.key(0), x, None)
    back = from_unconstrained(model, to_unconstrained(model, params))
    algo = jaxem.em(model, chunk_size=x.shape[0])
    first, _ = algo.step(params, x, None)
    second, _ = algo.step(first, x, None)
    jumps = []
    for squarem in (Squarem(), Squarem(step_min=8.0, step_max=8.0)):
        state: SquaremState = squarem.start(params, x.dtype)._replace(base=params, first=first)
        jumps.append(squarem.extrapolate(model, state, second))
    return params, back, second, jumps


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_unconstrained_round_trip_and_jump_stay_valid(covariance_type):
    model = jaxem.Mixture(jaxem.Gaussian(2, covariance_type))
    params, back, _, (_, (jumped, step)) = two_steps_and_jumps(model, overlapping_blobs())
    for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300)
    assert float(step) == 8.0
    weights = np.asarray(jumped.weights)
    assert np.all(weights > 0) and weights.sum() == pytest.approx(1.0)
    cholesky = np.asarray(jumped.components.precision_cholesky)
    full = covariance_type in ("full", "tied")
    diagonal = np.diagonal(cholesky, axis1=-2, axis2=-1) if full else cholesky
    assert np.all(diagonal > 0)


def test_step_length_one_gives_the_second_em_iterate():
    model = jaxem.Mixture(jaxem.Gaussian(2))
    _, _, second, ((jumped, step), _) = two_steps_and_jumps(model, overlapping_blobs())
    assert float(step) == 1.0
    for got, want in zip(jax.tree.leaves(jumped), jax.tree.leaves(second), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_configuration_is_hashable_by_value():
    model = jaxem.Mixture(jaxem.Gaussian(2))
    assert jaxem.em(model, accelerate="squarem") == jaxem.em(model, accelerate=Squarem())
    assert hash(jaxem.em(model, accelerate="squarem")) == hash(
        jaxem.em(model, accelerate=Squarem())
    )
    assert jaxem.em(model).accelerate is None


def test_unknown_accelerator_is_a_clear_error():
    model = jaxem.Mixture(jaxem.Gaussian(2))
    with pytest.raises(ValueError) as info:
        jaxem.em(model, accelerate="anderson")
    assert str(info.value) == (
        "Unknown accelerate 'anderson': use None (plain EM), 'squarem', or an instance such as "
        "Squarem()."
    )
    with pytest.raises(ValueError, match=r"^Squarem needs 1 <= step_min <= step_max, got "):
        Squarem(step_min=0.5)
    with pytest.raises(ValueError, match=r"^Squarem step_factor must be at least 1, got 0.5\.$"):
        Squarem(step_factor=0.5)


def test_estimator_accelerate_parameter():
    x = overlapping_blobs()
    settings = dict(random_state=0, tol=1e-8, max_iter=MAX_ITER)
    plain = jaxem.GaussianMixture(2, **settings).fit(x)
    fast = jaxem.GaussianMixture(2, accelerate="squarem", **settings).fit(x)
    assert fast.get_params()["accelerate"] == "squarem"
    assert fast.converged_
    assert fast.n_iter_ * 2 < plain.n_iter_
    assert fast.score(x) == pytest.approx(plain.score(x), rel=1e-6)
    with pytest.raises(ValueError, match=r"^Unknown accelerate 'fast': use None \(plain EM\)"):
        jaxem.GaussianMixture(2, accelerate="fast").fit(x)


@pytest.mark.slow
def test_gradient_m_step_is_accelerated_and_stays_monotone():
    from jaxem.testing import gradient_only

    x = overlapping_blobs()
    family = jaxem.Gaussian(2, "diag")
    closed = fitted(None, x, "diag", tol=1e-12)

    def gradient_fit(accelerate):
        model = jaxem.Mixture(gradient_only(family))
        algo = jaxem.em(model, jaxem.Gradient(num_steps=20), accelerate=accelerate)
        return jaxem.fit(algo, jax.random.key(0), x, tol=1e-9, max_iter=MAX_ITER)

    plain, fast = gradient_fit(None), gradient_fit("squarem")
    assert int(fast.status) == jaxem.Status.CONVERGED
    assert np.all(np.diff(recorded(fast, x)) >= -1e-13)
    assert int(fast.num_iters) * 2 < int(plain.num_iters)
    assert float(fast.log_likelihood) == pytest.approx(float(closed.log_likelihood), rel=1e-8)
