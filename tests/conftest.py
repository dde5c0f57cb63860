"""Test configuration: float64 available (tests pass float32 data explicitly where they need it)."""

import jax

jax.config.update("jax_enable_x64", True)
