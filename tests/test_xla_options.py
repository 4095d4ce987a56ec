"""XLA flags: the launchers' CPU flags reach the compiler, the user's own flags win, and setting them
too late is an error rather than a silent no-op."""
import os
import subprocess
import sys

import pytest

from viar_jax import xla_options

# Compiles one dot in a fresh process (XLA reads XLA_FLAGS once) and prints its optimized HLO.
COMPILED_DOT = """
import jax, jax.numpy as jnp
from viar_jax import xla_options
xla_options.use_tuned_flags()
x = jnp.ones((64, 64))
print(jax.jit(lambda a: a @ a).lower(x).compile().as_text())
"""


def compiled_dot(**env) -> str:
  clean = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', xla_options.KEEP_DEFAULTS_ENV)}
  result = subprocess.run([sys.executable, '-c', COMPILED_DOT], env=dict(clean, JAX_PLATFORMS='cpu', **env),
                          capture_output=True, text=True, timeout=300, check=True)
  return result.stdout


def test_tuned_flags_take_the_dot_off_ynnpack():
  assert 'ynn_fusion' in compiled_dot(**{xla_options.KEEP_DEFAULTS_ENV: '1'})  # XLA's default
  assert 'ynn_fusion' not in compiled_dot()


def test_the_users_flag_wins():
  assert 'ynn_fusion' in compiled_dot(XLA_FLAGS='--xla_cpu_experimental_ynn_fusion_type=dot')


def test_too_late_is_an_error(monkeypatch):
  import jax  # pylint: disable=import-outside-toplevel
  jax.devices()  # backends started
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  monkeypatch.delenv(xla_options.KEEP_DEFAULTS_ENV, raising=False)
  with pytest.raises(RuntimeError, match='before JAX starts its backends'):
    xla_options.use_tuned_flags()
  assert 'XLA_FLAGS' not in os.environ
