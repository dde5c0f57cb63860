"""The model contract (jaxem.testing.check_model) on the closed-form families and the HMM."""

import jax
import numpy as np
import pytest

import jaxem
from jaxem.hmm import HiddenMarkovModel, pad_sequences
from jaxem.testing import check_model

NUM_ROWS = 240


def bernoulli_data(rng):
    probs = np.where(rng.random(NUM_ROWS)[:, None] < 0.5, 0.2, 0.8)
    return (rng.random((NUM_ROWS, 5)) < probs).astype(float)


def categorical_data(rng):
    # Features with different numbers of levels (padded probabilities), as float codes: the
    # contract compares the parameters' dtype with the data's.
    groups = [
        [[0.7, 0.2, 0.1], [0.8, 0.2], [0.1, 0.2, 0.3, 0.4]],
        [[0.1, 0.3, 0.6], [0.3, 0.7], [0.5, 0.3, 0.1, 0.1]],
    ]
    half = NUM_ROWS // 2
    blocks = [np.stack([rng.choice(len(p), half, p=p) for p in g], axis=1) for g in groups]
    return np.concatenate(blocks).astype(float)


def multinomial_data(rng):
    half = NUM_ROWS // 2
    return np.concatenate(
        [
            rng.multinomial(20, [0.5, 0.3, 0.1, 0.1], half),
            rng.multinomial(20, [0.1, 0.1, 0.3, 0.5], half),
        ]
    ).astype(float)


def poisson_data(rng):
    rates = np.where(rng.random(NUM_ROWS)[:, None] < 0.4, 1.0, 6.0)
    return rng.poisson(rates, (NUM_ROWS, 3)).astype(float)


def exponential_data(rng):
    scales = np.where(rng.random(NUM_ROWS)[:, None] < 0.5, 0.5, 4.0)
    return rng.exponential(scales, (NUM_ROWS, 2))


def regression_data(rng):
    covariates = rng.normal(size=(NUM_ROWS, 2))
    slopes = np.where(rng.random(NUM_ROWS)[:, None] < 0.5, [2.0, -1.0], [-1.5, 0.5])
    target = np.sum(covariates * slopes, axis=1) + 0.5 * rng.normal(size=NUM_ROWS)
    return covariates, target


FAMILIES = {
    "bernoulli": (lambda: jaxem.Bernoulli(2), bernoulli_data),
    "categorical": (lambda: jaxem.Categorical(2, num_levels=(3, 2, 4)), categorical_data),
    "multinomial": (lambda: jaxem.Multinomial(2), multinomial_data),
    "poisson": (lambda: jaxem.Poisson(2), poisson_data),
    "exponential": (lambda: jaxem.Exponential(2), exponential_data),
    "linear_regression": (lambda: jaxem.LinearRegression(2), regression_data),
}


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_closed_form_family_passes_the_contract(name):
    make_family, make_data = FAMILIES[name]
    x = make_data(np.random.default_rng(0))
    check_model(
        jaxem.Mixture(make_family()),
        jax.tree.map(np.asarray, x),
        max_iter=10,
        chunk_size=37,
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_gaussian_hmm_passes_the_contract():
    rng = np.random.default_rng(1)
    lengths = [30, 50, 20, 40]
    centres = rng.normal(size=(len(lengths), 2)) * 3
    x = rng.normal(size=(sum(lengths), 2)) + np.repeat(centres, lengths, axis=0)
    data = jax.tree.map(np.asarray, pad_sequences(x, lengths))
    # The rows of an HMM's data are sequences: chunks of 3 split the 4 sequences unevenly.
    check_model(
        HiddenMarkovModel(jaxem.Gaussian(3, "diag")),
        data,
        max_iter=10,
        chunk_size=3,
    )
