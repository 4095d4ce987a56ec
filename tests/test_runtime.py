"""The process runtime (viar_jax.runtime) and paths that may be bucket URLs (etils.epath).

The multi-process behaviour itself (2 localhost processes, collective stops) is proven by
test_multiprocess_train.py; these are its one-process rules and its errors.
"""
import ast
import os
import pathlib
import signal

import jax
import pytest

from viar_jax import runtime
from viar_jax.io import writable

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('env,match', [
    ({'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1234'}, 'JAX_NUM_PROCESSES and JAX_PROCESS_ID are not'),
    ({'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1234', 'JAX_NUM_PROCESSES': '2'},
     'JAX_PROCESS_ID is not'),
    ({'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1234', 'JAX_NUM_PROCESSES': 'two',
      'JAX_PROCESS_ID': '0'}, 'must be integers'),
    ({'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1234', 'JAX_NUM_PROCESSES': '2',
      'JAX_PROCESS_ID': '2'}, r'JAX_PROCESS_ID=2 is not in 0..JAX_NUM_PROCESSES-1'),
])
def test_bad_coordinator_environment_is_named_before_starting(monkeypatch, env, match):
  for key in runtime.COORDINATOR_ENV:
    monkeypatch.delenv(key, raising=False)
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  with pytest.raises(ValueError, match=match):
    runtime.initialize()


def test_one_process_without_a_cluster(monkeypatch):
  for key in runtime.COORDINATOR_ENV:
    monkeypatch.delenv(key, raising=False)
  assert runtime.initialize() == 1 and runtime.is_primary()
  runtime.sync('no-op on one process')
  summary = runtime.summary(jax.make_mesh((4, 2), ('data', 'fsdp')))
  assert summary.startswith('1 process(es), 8 cpu devices (8 per process') and \
      summary.endswith(f"mesh data=4 x fsdp=2; XLA_FLAGS='{os.environ['XLA_FLAGS']}', "
                       f"GLIBC_TUNABLES='{os.environ.get('GLIBC_TUNABLES', '')}'")


def test_stop_after_steps_and_on_sigterm():
  with pytest.raises(ValueError, match='stop_after must be a positive'):
    runtime.Stop(after=0)
  stop = runtime.Stop(after=3)
  assert [stop.step_done() for _ in range(3)] == [False, False, True]
  assert stop.reason() == '--stop_after=3'
  previous = signal.getsignal(signal.SIGTERM)
  try:
    stop = runtime.Stop()
    assert not stop.step_done()
    os.kill(os.getpid(), signal.SIGTERM)  # handled: sets the flag, the process goes on
    assert stop.step_done() and stop.reason() == 'preempted (SIGTERM)'
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_bucket_urls_stay_urls_and_local_paths_become_absolute():
  assert str(writable.absolute('gs://bucket/runs/a')) == 'gs://bucket/runs/a'
  assert str(writable.absolute('gs://bucket/runs/a') / 'checkpoints') == \
      'gs://bucket/runs/a/checkpoints'
  assert writable.absolute('rel/dir') == pathlib.Path.cwd() / 'rel/dir'
  assert str(writable.absolute('~/x')) == os.path.expanduser('~/x')


RUN_MODULES = ['viar_jax/train/loop.py', 'viar_jax/train/run_io.py',
               'viar_jax/train/tokenizer_loop.py', 'viar_jax/io/checkpoint.py',
               'viar_jax/io/manifest.py', 'viar_jax/io/integrity.py', 'viar_jax/io/png.py',
               'viar_jax/io/writable.py']


@pytest.mark.parametrize('module', RUN_MODULES)
def test_run_io_goes_through_epath(module):
  """Workdirs, checkpoints and exports may be bucket URLs: the modules that touch them use
  etils.epath (pathlib turns 'gs://b' into 'gs:/b', shutil and open() only see local files)."""
  tree = ast.parse((ROOT / module).read_text())
  imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
              for alias in node.names} | {node.module for node in ast.walk(tree)
                                          if isinstance(node, ast.ImportFrom)}
  assert not imported & {'pathlib', 'shutil'}, f'{module} imports {imported & {"pathlib", "shutil"}}'
  calls = [node.func.id for node in ast.walk(tree)
           if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)]
  assert 'open' not in calls, f'{module} calls open() on a path'
