"""Test-wide settings: 8 simulated CPU devices for sharding tests, float32 everywhere.

Compiled programs go to a persistent cache shared by this session's processes (xdist workers and
the multi-process test inherit the variable), so a program that several tests build (a resumed
run's train step, the same sampler in two files) compiles once. The cache is new each session.
"""
import os
import tempfile

import pytest

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='viar_jax_jit_cache_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import jax  # pylint: disable=wrong-import-position  (after the environment is set)


@pytest.fixture(scope='module')
def fast_compiles():
  """XLA:CPU without most optimization passes compiles small programs ~4x faster: for modules that
  test plumbing (CLIs, reports, resumption), not numerics against the reference or speed."""
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', False)
