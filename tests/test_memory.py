"""Memory in N: checks that scan the data without O(N) temporaries, and initialisation from a
bounded sample of the rows everywhere a fit starts from a key."""

from __future__ import annotations

import numpy as np
import pytest

from jaxem.core.engine import prepare_data

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("position", [(0, 0), (517, 2), (999, 3)])
def test_finiteness_check_finds_one_bad_value_anywhere(value, position):
    x = np.random.default_rng(0).normal(size=(1000, 4)).astype(np.float32)
    prepare_data(x)  # finite: accepted
    x[position] = value
    with pytest.raises(ValueError, match=r"^x contains NaN or infinity"):
        prepare_data(x)


def test_finiteness_check_covers_every_leaf_and_accepts_the_largest_finite_values():
    big = np.full((10, 3), np.finfo(np.float32).max, np.float32)
    prepare_data({"a": big, "b": -big, "empty": np.zeros((10, 0), np.float32)})
    bad = big.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"^x contains NaN or infinity"):
        prepare_data({"a": big, "b": bad})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.nan, "weights must be finite and non-negative."),
        (np.inf, "weights must be finite and non-negative."),
        (-1e-30, "weights must be finite and non-negative."),
    ],
)
def test_weight_check_finds_one_bad_weight(value, message):
    x = np.zeros((100, 2))
    weights = np.ones(100)
    prepare_data(x, weights)
    weights[63] = value
    with pytest.raises(ValueError, match=f"^{message}$"):
        prepare_data(x, weights)
    with pytest.raises(ValueError, match="^weights are all zero"):
        prepare_data(x, np.zeros(100))
