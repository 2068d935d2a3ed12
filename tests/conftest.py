"""Test configuration: strict JAX promotion, compilation cache, hypothesis profiles, `getkey`."""

import itertools
import os
import pathlib


# Fake 8 CPU devices so sharding tests run in-process (must precede the first jax import).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import hypothesis
import jax
import jax.random as jr
import pytest


_ROOT = pathlib.Path(__file__).resolve().parents[1]

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update(
    "jax_compilation_cache_dir", os.environ.get("JAX_COMPILATION_CACHE_DIR", str(_ROOT / ".cache" / "jax"))
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# CI: few examples; dev (default locally): a few more; thorough: for long local runs.
hypothesis.settings.register_profile("ci", max_examples=8, deadline=None, derandomize=True, print_blob=True)
hypothesis.settings.register_profile("dev", max_examples=20, deadline=None, print_blob=True)
hypothesis.settings.register_profile("thorough", max_examples=300, deadline=None, print_blob=True)
_default = "ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "dev"
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", _default))


@pytest.fixture
def getkey():
    """A fresh PRNG key per call: a counter folded into a fixed seed, so failures reproduce."""
    counter = itertools.count()
    base = jr.key(5678)

    def _getkey():
        return jr.fold_in(base, next(counter))

    return _getkey
