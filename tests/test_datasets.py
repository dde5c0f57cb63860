"""The bundled data sets load from the installed package."""

from importlib import resources

import numpy as np

from jaxem import datasets


def test_old_faithful_shape_values_and_columns():
    x, columns = datasets.load_old_faithful(return_columns=True)
    assert columns == ("eruptions", "waiting") == datasets.OLD_FAITHFUL_COLUMNS
    assert x.shape == (272, 2) and x.dtype == np.float64
    np.testing.assert_array_equal(x[0], [3.6, 79.0])
    np.testing.assert_array_equal(x[-1], [4.467, 74.0])
    # R's summary(faithful): means 3.488 and 70.9
    np.testing.assert_allclose(x.mean(axis=0), [3.487783, 70.897059], atol=1e-6)


def test_each_call_returns_a_fresh_array():
    first = datasets.load_old_faithful()
    first[:] = 0
    assert datasets.load_old_faithful()[0, 1] == 79.0


def test_the_csv_is_package_data():
    csv = resources.files("jaxem.datasets").joinpath("old_faithful.csv")
    assert csv.is_file()
    assert csv.read_text(encoding="utf-8").splitlines()[0] == '"eruptions","waiting"'
