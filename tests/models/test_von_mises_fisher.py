"""Von Mises-Fisher mixture: log I_v against scipy, density, sampler, ECM recovery (directions
closed form, concentrations by gradient) and monotone over twenty seeds, restart lanes under
L-BFGS, errors. The shared contract (restarts, chunks, a bad optimizer, constraints, dtypes) is
checked in test_contracts.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from family_checks import assert_monotone
from scipy import special, stats

import jaxem
from jaxem.models.von_mises_fisher import (
    VonMisesFisher,
    VonMisesFisherParams,
    log_bessel_iv,
    log_normalizer,
)

pytestmark = pytest.mark.timeout(240)

TRUE = VonMisesFisherParams(
    directions=jnp.array([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.0, -1.0, 0.0]]),
    concentrations=jnp.array([5.0, 20.0, 60.0]),
)
COUNTS = (300, 180, 120)
ALGO = jaxem.em(jaxem.Mixture(VonMisesFisher(3)), jaxem.Gradient())
NUM_SEEDS = 20


@pytest.fixture(scope="module")
def sample():
    labels = jnp.repeat(jnp.arange(3), jnp.array(COUNTS), total_repeat_length=sum(COUNTS))
    return jax.jit(VonMisesFisher(3).sample)(jax.random.key(0), TRUE, labels)


@pytest.fixture(scope="module")
def lanes(sample):
    keys = jax.random.split(jax.random.key(1), NUM_SEEDS)
    best, lanes = jaxem.fit_restarts(ALGO, keys, sample, max_iter=100, tol=1e-9)
    return keys, best, lanes


@pytest.mark.parametrize("order", [0.0, 0.5, 1.0, 1.5, 4.0, 9.5, 49.0, 150.0])
def test_log_bessel_matches_scipy(order):
    x = np.array([1e-3, 0.1, 1.0, 7.5, 30.0, 99.0, 100.0, 101.0, 700.0, 1e4, 1e6])
    got = np.asarray(log_bessel_iv(order, jnp.asarray(x)))
    scaled = special.ive(order, x)
    with np.errstate(divide="ignore"):
        ref = np.log(scaled) + x
    # Where ive is subnormal or underflows (large orders at small x), the defining series, whose
    # terms fall off fast there, is the reference.
    m = np.arange(60)[:, None]
    terms = (
        (2 * m + order) * np.log(x / 2) - special.gammaln(m + 1) - special.gammaln(m + order + 1)
    )
    ref = np.where(scaled > 1e-300, ref, special.logsumexp(terms, axis=0))
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("order", [0.0, 0.5, 2.0, 24.0])
def test_log_bessel_derivative_is_the_bessel_ratio(order):
    # d/dx log I_v(x) = I_{v+1}(x) / I_v(x) + v / x.
    x = np.array([0.05, 2.0, 50.0, 99.9, 100.1, 400.0])
    got = np.asarray(jax.vmap(jax.grad(lambda t: log_bessel_iv(order, t)))(jnp.asarray(x)))
    ref = special.ive(order + 1, x) / special.ive(order, x) + order / x
    np.testing.assert_allclose(got, ref, rtol=1e-8)


def test_log_bessel_in_float32_stays_finite():
    x = jnp.array([1e-3, 1.0, 150.0, 1e5], jnp.float32)
    got = log_bessel_iv(1.5, x)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np.log(special.ive(1.5, np.asarray(x, float))) + x, rtol=1e-5)


def test_density_matches_scipy_and_integrates_to_one():
    x = np.array([[0.0, 0.6, 0.8], [1.0, 0.0, 0.0], [0.6, -0.8, 0.0]])
    got = np.asarray(VonMisesFisher(3).log_prob_chunk(TRUE, jnp.asarray(x)))
    for k in range(3):
        ref = stats.vonmises_fisher(
            np.asarray(TRUE.directions[k]), float(TRUE.concentrations[k])
        ).logpdf(x)
        np.testing.assert_allclose(got[:, k], ref, rtol=1e-10)
    # On the circle (D = 2) the density is the von Mises: check the normaliser by quadrature.
    theta = np.linspace(0, 2 * np.pi, 20001)[:-1]
    density = np.exp(float(log_normalizer(2, jnp.asarray(3.0))) + 3.0 * np.cos(theta))
    np.testing.assert_allclose(density.mean() * 2 * np.pi, 1.0, rtol=1e-10)


def test_sampler_has_the_right_mean_resultant(sample):
    start = 0
    for k, count in enumerate(COUNTS):
        rows = np.asarray(sample[start : start + count])
        start += count
        np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-12)
        kappa = float(TRUE.concentrations[k])
        expected = special.ive(1.5, kappa) / special.ive(0.5, kappa)  # A_3(kappa) = E[mu . x]
        mean = rows.mean(axis=0)
        np.testing.assert_allclose(mean @ np.asarray(TRUE.directions[k]), expected, atol=0.03)


def test_ecm_recovers_parameters_and_is_monotone_over_twenty_seeds(lanes):
    _, best, lanes = lanes
    assert_monotone(lanes.history)
    assert int(best.status) == jaxem.Status.CONVERGED
    comp = best.params.components
    # Match each true direction with the closest fitted one.
    order = np.argmax(np.asarray(TRUE.directions) @ np.asarray(comp.directions).T, axis=1)
    assert sorted(order.tolist()) == [0, 1, 2]
    np.testing.assert_allclose(np.asarray(best.params.weights)[order], [0.5, 0.3, 0.2], atol=0.03)
    cosines = np.sum(np.asarray(comp.directions)[order] * np.asarray(TRUE.directions), axis=1)
    assert np.all(cosines > 0.995)
    np.testing.assert_allclose(
        np.asarray(comp.concentrations)[order], TRUE.concentrations, rtol=0.2
    )


def test_concentrations_are_at_the_stationary_point(lanes, sample):
    _, best, _ = lanes
    model = ALGO.model

    def objective(kappa):
        comp = best.params.components._replace(concentrations=kappa)
        params = best.params._replace(components=comp)
        return jnp.mean(jax.nn.logsumexp(model.log_joint(params, sample), axis=-1))

    grad = jax.jit(jax.grad(objective))(best.params.components.concentrations)
    assert float(jnp.max(jnp.abs(grad))) < 1e-6


def test_line_search_restart_lane_equals_single_fit(lanes, sample):
    """L-BFGS (the default gradient M-step) on the recovery fits: restart lane 4 is the single fit
    from key 4. (The contract checks restarts with every family, under Adam.)"""
    keys, _, lanes = lanes
    single = jaxem.fit(ALGO, keys[4], sample, max_iter=100, tol=1e-9)
    assert int(single.num_iters) == int(lanes.num_iters[4])
    np.testing.assert_allclose(single.history, lanes.history[4], rtol=1e-9)
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(lanes.params), strict=True):
        np.testing.assert_allclose(a, b[4], rtol=1e-7, atol=1e-12)


def test_bad_input_raises():
    with pytest.raises(ValueError, match=r"min_concentration must be positive, got -1\.0\."):
        VonMisesFisher(2, min_concentration=-1.0)
    with pytest.raises(ValueError, match=r"order must be non-negative, got -0\.5\."):
        log_bessel_iv(-0.5, jnp.asarray(1.0))
    with pytest.raises(
        ValueError,
        match=r"need unit-norm rows, but row 1 has norm 2: divide each row by its norm",
    ):
        VonMisesFisher(2).check_data(np.array([[1.0, 0.0], [0.0, 2.0]]))
    with pytest.raises(ValueError, match=r"need rows of at least 2 coordinates"):
        VonMisesFisher(2).check_data(np.ones((3, 1)))
