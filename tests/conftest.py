"""Test configuration: float64 available (tests pass float32 data explicitly where they need it)."""

import gc
import os

# Tests are dominated by XLA compile time on CPU; LLVM's optimisation passes are most of it and
# change no result the tests check. A caller's own XLA_FLAGS win.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

# Tests count compilations and compare fits: programs stored by an earlier run would hide both.
# The store itself is tested with folders of its own (tests/test_program_cache.py).
os.environ["JAXEM_CACHE_DIR"] = "off"

import jax
import pytest

from jaxem.core.program_cache import clear_memory

jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program after each test file.

    A test worker runs many files in one process; without this its memory grows with every
    program the suite compiles (a worker held 5.4 GB near the end of the suite, 1.8 GB with this),
    and XLA:CPU has aborted inside a compilation late in such a long-lived worker.
    """
    yield
    jax.clear_caches()
    clear_memory()
    gc.collect()
