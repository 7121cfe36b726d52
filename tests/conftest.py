"""Test configuration.

float64 is enabled so references can be compared exactly; tests that need
JAX's default (32-bit) mode run in a subprocess. Under CI, hypothesis runs
derandomized: the same examples every run, so a red CI is reproducible.
"""

import os

import jax
from hypothesis import settings

jax.config.update("jax_enable_x64", True)

settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
