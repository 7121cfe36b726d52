"""Test configuration: float64 is enabled so references can be compared exactly.

Tests that need JAX's default (32-bit) mode run in a subprocess.
"""

import jax

jax.config.update("jax_enable_x64", True)
