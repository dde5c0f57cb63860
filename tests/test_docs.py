"""The README's API overview and comparison table stay true to the code and the test suite."""

import enum
import importlib
import inspect
import re
from pathlib import Path

import pytest

import jaxem
from jaxem import cli

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()

# Public names that are data (parameter and result tuples), warnings, an enum of codes or the
# contracts users subclass: they are documented, but there is nothing to call in an example.
NOT_ENTRY_POINTS = {
    "BoundTrace",
    "Components",
    "ConjugateComponents",
    "ConvergenceWarning",
    "EMInfo",
    "EMState",
    "FitResult",
    "GammaParams",
    "GaussianParams",
    "HMMParams",
    "MixtureParams",
    "MixtureStats",
    "Model",
    "PrecisionWarning",
    "Selection",
    "Sequences",
    "Status",
    "StudentTParams",
    "VonMisesFisherParams",
}


def section(title: str) -> str:
    assert f"\n## {title}\n" in README, f"README has no '## {title}' section"
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def overview_names() -> list[str]:
    return sorted(set(re.findall(r"`(jaxem(?:\.\w+)+)`", section("API overview"))))


def resolve(dotted: str):
    """``jaxem.a.b`` as an object, importing ``jaxem.a`` when it is a module not loaded eagerly."""
    parts = dotted.split(".")
    obj = jaxem
    for i in range(1, len(parts)):
        if hasattr(obj, parts[i]):
            obj = getattr(obj, parts[i])
        else:
            obj = importlib.import_module(".".join(parts[: i + 1]))
    return obj


def test_overview_lists_many_names():
    # Guards the parser: an overview it cannot read would make the next tests vacuous.
    assert len(overview_names()) > 60


@pytest.mark.parametrize("name", overview_names())
def test_every_name_in_the_overview_exists(name):
    resolve(name)


def test_every_public_name_is_in_the_overview():
    listed = {name.split(".")[1] for name in overview_names()}
    missing = sorted(set(jaxem.__all__) - listed - {"__version__"})
    assert not missing, f"add these public names to the README's API overview: {missing}"


def test_every_command_in_the_overview_exists():
    listed = set(re.findall(r"`jaxem (\w+)`", section("API overview")))
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert listed == set(commands)


def test_comparison_table_names_existing_tests_for_every_jaxem_feature():
    rows = [
        line
        for line in section("Compared with other libraries").splitlines()
        if line.startswith("| ") and not line.startswith("| |")
    ]
    assert len(rows) >= 15
    header_cells = 8
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == header_cells, row
        feature, tests = cells[0], cells[-1]
        if feature in ("Built on", "Accelerators"):
            continue
        paths = re.findall(r"`(tests/[\w/.]+)`", tests)
        assert paths, f"the row '{feature}' names no test"
        for path in paths:
            assert (REPO / path).exists(), f"the row '{feature}' names {path}, which is missing"


def _is_entry_point(obj) -> bool:
    if inspect.ismodule(obj) or not callable(obj):
        return False
    if inspect.isclass(obj):
        tuple_like = issubclass(obj, tuple) and hasattr(obj, "_fields")
        return not (tuple_like or issubclass(obj, (BaseException, enum.Enum)))
    return True


def test_every_public_entry_point_has_an_example():
    """tests/test_doctests.py runs the examples; this makes sure there is one to run."""
    entry_points = [
        name
        for name in jaxem.__all__
        if name not in NOT_ENTRY_POINTS and _is_entry_point(getattr(jaxem, name))
    ]
    assert len(entry_points) > 40
    lacking = [name for name in entry_points if ">>>" not in (getattr(jaxem, name).__doc__ or "")]
    assert not lacking, f"public entry points without a docstring example: {lacking}"
