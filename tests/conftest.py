"""Test configuration: float64 available (tests pass float32 data explicitly where they need it)."""

import os

# Tests are dominated by XLA compile time on CPU; LLVM's optimisation passes are most of it and
# change no result the tests check. A caller's own XLA_FLAGS win.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import jax

jax.config.update("jax_enable_x64", True)
