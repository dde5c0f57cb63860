"""Small data sets bundled with jaxem, read from the installed package (no download).

Example:
    >>> from jaxem import datasets
    >>> x = datasets.load_old_faithful()
    >>> x.shape, datasets.OLD_FAITHFUL_COLUMNS
    ((272, 2), ('eruptions', 'waiting'))
"""

from __future__ import annotations

import csv
import io
from importlib import resources

import numpy as np

OLD_FAITHFUL_COLUMNS = ("eruptions", "waiting")


def load_old_faithful(*, return_columns: bool = False) -> np.ndarray | tuple[np.ndarray, tuple]:
    """Old Faithful geyser eruptions: 272 rows of [eruption length (min), waiting time (min)].

    The classic two-cluster data set (Azzalini & Bowman, 1990; R's ``datasets::faithful``).

    Args:
        return_columns: also return the column names.

    Returns:
        A new float64 array of shape ``(272, 2)`` (the caller may modify it), and the column names
        ``("eruptions", "waiting")`` when ``return_columns`` is true.

    Example:
        >>> from jaxem.datasets import load_old_faithful
        >>> x, columns = load_old_faithful(return_columns=True)
        >>> columns[1], float(x[:, 1].max())
        ('waiting', 96.0)
    """
    text = resources.files(__name__).joinpath("old_faithful.csv").read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    header, body = tuple(rows[0]), rows[1:]
    if header != OLD_FAITHFUL_COLUMNS:
        raise ValueError(f"The bundled old_faithful.csv has columns {header}; reinstall jaxem.")
    x = np.array(body, dtype=np.float64)
    return (x, OLD_FAITHFUL_COLUMNS) if return_columns else x


__all__ = ["OLD_FAITHFUL_COLUMNS", "load_old_faithful"]
