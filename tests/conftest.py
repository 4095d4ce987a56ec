"""Test-wide settings: 8 simulated CPU devices for sharding tests, float32 everywhere, markers.

The default backend is the CPU (8 simulated devices), so results do not depend on the machine. Where
a CUDA GPU and jax's CUDA plugin are present, the GPU backend is initialised too: tests marked
`gpu` run on `jax.devices('gpu')`, and are skipped, with the reason, where jax has no GPU.

Compiled programs go to a persistent cache shared by this session's processes (xdist workers and
the multi-process test inherit the variable), so a program that several tests build (a resumed
run's train step, the same sampler in two files) compiles once. The cache is new each session.

Markers (registered in setup.cfg): `slow` (multi-minute end-to-end runs), `multiprocess` (starts
several JAX processes), `gpu`. A fast subset: python -m pytest -m "not slow" tests
"""
import glob
import importlib.metadata
import os
import pkgutil
import tempfile

import pytest


def _cuda_plugin_installed() -> bool:
  """Whether jax would find a CUDA PjRt plugin (namespace package or entry point), without importing
  jax, which must see the environment below first."""
  try:
    import jax_plugins  # pylint: disable=import-outside-toplevel
    if any('cuda' in m.name for m in pkgutil.iter_modules(jax_plugins.__path__)):
      return True
  except ImportError:
    pass
  return any('cuda' in ep.name for ep in importlib.metadata.entry_points(group='jax_plugins'))


# Listing 'cuda' when it cannot start would be an error, so only with a plugin and a visible device.
HAS_GPU = _cuda_plugin_installed() and bool(glob.glob('/dev/nvidia[0-9]*'))

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
# The first platform listed is the default backend: the CPU in either case.
os.environ.setdefault('JAX_PLATFORMS', 'cpu,cuda' if HAS_GPU else 'cpu')
if HAS_GPU:  # xdist workers share the GPU: no process may preallocate most of its memory
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='viar_jax_jit_cache_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import jax  # pylint: disable=wrong-import-position  (after the environment is set)


def gpu_devices():
  """jax's GPU devices; empty where there is none (or JAX_PLATFORMS leaves it out)."""
  try:
    return jax.devices('gpu')
  except RuntimeError:
    return []


def pytest_runtest_setup(item):
  if item.get_closest_marker('gpu') and not gpu_devices():
    pytest.skip(f'needs a GPU; jax has none (backends: JAX_PLATFORMS='
                f'{os.environ.get("JAX_PLATFORMS", "")!r}, default {jax.default_backend()})')


@pytest.fixture
def gpu():
  """The first GPU device, for tests marked `gpu` (skipped before they start where there is none)."""
  return gpu_devices()[0]


@pytest.fixture(scope='module')
def fast_compiles():
  """XLA:CPU without most optimization passes compiles small programs ~4x faster: for modules that
  test plumbing (CLIs, reports, resumption), not numerics against the reference or speed."""
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', False)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """A TFDS directory for the digits, prepared on first use (per test module)."""
  return tmp_path_factory.mktemp('tfds')


@pytest.fixture(scope='module')
def digits_evaluator(request, tmp_path_factory, data_dir):
  """The seed-0 digits classifier from pytest's cache (test_digits_eval stores it), trained if
  missing."""
  from viar_jax.eval import digits_eval  # pylint: disable=import-outside-toplevel
  cache = getattr(request.config, 'cache', None)
  cache_dir = cache.mkdir('viar_jax_digits_classifier') if cache else tmp_path_factory.mktemp('clf')
  return digits_eval.DigitsEvaluator(digits_eval.load_classifier(0, cache_dir, data_dir), data_dir, 0)
