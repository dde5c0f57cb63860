"""The examples in the docstrings of every jaxem module run and print what they claim."""

import doctest
import importlib
import pkgutil

import pytest

import jaxem

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def modules_with_examples() -> list[str]:
    names = [jaxem.__name__]
    names += [
        info.name for info in pkgutil.walk_packages(jaxem.__path__, prefix=f"{jaxem.__name__}.")
    ]
    found = []
    for name in sorted(names):
        module = importlib.import_module(name)
        tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
        if any(test.examples for test in tests):
            found.append(name)
    return found


MODULES = modules_with_examples()


def test_examples_are_found():
    # The kernel, its rows, the drivers, the estimators and persistence all document themselves
    # with examples.
    core = {f"jaxem.core.{name}" for name in ("kernel", "rows", "mstep", "accelerate", "algorithm")}
    drivers = {
        f"jaxem.drivers.{name}" for name in ("fit", "prune", "bound", "sharded", "stream", "online")
    }
    estimators = {"jaxem.estimators.mixture", "jaxem.estimators.hmm"}
    assert core | drivers | estimators | {"jaxem.io"} <= set(MODULES)


# Examples fit models, so each module costs a few compilations.
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    report = []
    for test in finder.find(module, name, globs=dict(vars(module))):
        if test.examples:
            runner.run(test, out=report.append)
    failed, attempted = runner.summarize(verbose=False)
    assert attempted > 0
    assert failed == 0, "".join(report)
