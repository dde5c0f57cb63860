"""Categorical mixtures (latent class analysis): recovery, MAP M-step.
The shared contract (restarts, chunks, constraints, dtypes) is checked in test_contracts.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from family_checks import assert_monotone, best_permutation

import jaxem
from jaxem.models import Categorical, CategoricalParams, CategoricalStats

# Two latent classes, five items with 3, 2, 4, 2 and 3 answers.
NUM_LEVELS = (3, 2, 4, 2, 3)
TRUE_PROBS = [
    np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]),
    np.array([[0.85, 0.15], [0.2, 0.8]]),
    np.array([[0.4, 0.4, 0.1, 0.1], [0.05, 0.15, 0.4, 0.4]]),
    np.array([[0.9, 0.1], [0.3, 0.7]]),
    np.array([[0.1, 0.1, 0.8], [0.6, 0.3, 0.1]]),
]
TRUE_WEIGHTS = np.array([0.6, 0.4])


def padded_truth() -> np.ndarray:
    out = np.zeros((2, len(NUM_LEVELS), max(NUM_LEVELS)))
    for d, p in enumerate(TRUE_PROBS):
        out[:, d, : p.shape[1]] = p
    return out


def simulate(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.choice(2, size=n, p=TRUE_WEIGHTS)
    columns = []
    for p in TRUE_PROBS:
        cumulative = np.cumsum(p[z], axis=1)
        columns.append((rng.random((n, 1)) > cumulative[:, :-1]).sum(axis=1))
    return np.stack(columns, axis=1)


@pytest.mark.timeout(60)
def test_latent_class_analysis_recovers_class_conditional_probabilities():
    x = simulate(5000)
    family = Categorical.from_data(2, x)
    assert family.num_levels == NUM_LEVELS
    model = jaxem.Mixture(family)
    best, _ = jaxem.fit_restarts(
        jaxem.em(model), jax.random.key(0), x, num_restarts=4, max_iter=500, tol=1e-9
    )
    probs = np.asarray(best.params.components.probs)
    truth = padded_truth()
    order = list(best_permutation(probs.reshape(2, -1), truth.reshape(2, -1)))
    # Stated tolerance: 0.05 per probability (about four standard errors at n = 5000).
    np.testing.assert_allclose(probs[order], truth, atol=0.05)
    np.testing.assert_allclose(np.asarray(best.params.weights)[order], TRUE_WEIGHTS, atol=0.04)
    # Padding levels stay exactly 0 and every real level stays above 0.
    mask = family.level_mask()
    assert np.all(probs[:, ~mask] == 0) and np.all(probs[:, mask] > 0)
    assert_monotone(best, slack=1e-10)


def test_map_m_step_is_the_dirichlet_posterior_mode_and_unseen_levels_stay_positive():
    family = Categorical(1, num_levels=(3, 2), dirichlet_concentration=2.0)
    level_counts = jnp.array([[[5.0, 0.0, 1.0], [6.0, 0.0, 0.0]]])
    stats = CategoricalStats(jnp.array([6.0]), level_counts)
    params = family.m_step(family.uniform_params(jnp.float64), stats)
    expected = np.array([[[6 / 9, 1 / 9, 2 / 9], [7 / 8, 1 / 8, 0.0]]])
    np.testing.assert_allclose(params.probs, expected, rtol=1e-12)
    assert np.isfinite(float(family.log_prior(params)))


def test_sample_codes_follow_the_level_probabilities():
    family = Categorical(2, num_levels=(3, 2))
    probs = np.zeros((2, 2, 3))
    probs[0, 0], probs[0, 1, :2] = [0.2, 0.3, 0.5], [0.9, 0.1]
    probs[1, 0], probs[1, 1, :2] = [0.6, 0.4, 0.0], [0.5, 0.5]
    labels = jnp.repeat(jnp.arange(2), 20000)
    codes = np.asarray(
        family.sample(jax.random.key(0), CategoricalParams(jnp.asarray(probs)), labels)
    )
    assert codes.shape == (40000, 2) and codes[:, 1].max() == 1
    np.testing.assert_allclose(
        np.bincount(codes[:20000, 0], minlength=3) / 2e4, probs[0, 0], atol=0.01
    )
    assert np.all(codes[20000:, 0] < 2)


def test_free_parameters_and_errors():
    assert Categorical(3, num_levels=(3, 2, 4)).num_free_parameters(3) == 3 * 6
    assert hash(Categorical(2, num_levels=[3, 2])) == hash(Categorical(2, num_levels=(3, 2)))
    with pytest.raises(ValueError, match=r"num_levels must be a non-empty sequence of positive"):
        Categorical(2, num_levels=(3, 0))
    with pytest.raises(ValueError, match=r"dirichlet_concentration must be a number >= 1"):
        Categorical(2, num_levels=(2,), dirichlet_concentration=0.5)
    with pytest.raises(ValueError, match=r"x has 3 columns but num_levels has 2 entries"):
        Categorical(2, num_levels=(2, 2)).check_data(np.zeros((4, 3)))
    with pytest.raises(
        ValueError, match=r"integer codes 0 \.\. num_levels\[d\] - 1 in each column"
    ):
        Categorical(2, num_levels=(2, 2)).check_data(np.array([[0, 2]]))
    with pytest.raises(ValueError, match=r"need x as non-negative integer codes"):
        Categorical.from_data(2, np.array([[0.5, 1.0]]))
