"""`launch.train` itself on 2 localhost processes x 2 CPU devices against 1 process x 4 devices.

The 2-process run goes through everything a pod run does: the distributed runtime started from
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, data-parallel tokenizer training,
a (data=2, fsdp=2) mesh spanning both processes, per-process data positions in the checkpoints,
a stop (--stop_after in the tokenizer, SIGTERM to both processes in the transformer) saving one
step everywhere, resumes, the in-training sample grid on FSDP-sharded params, and the export
written by both processes. Its logged losses must equal the 1-process run's (same global batches whatever the process count), and
the metrics files hold exactly one line per logged step.
"""
import itertools
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from viar_jax.io import checkpoint
from viar_jax.models import transformer, vqvae
from viar_jax.sample import sampler

ROOT = pathlib.Path(__file__).resolve().parents[1]
# 16 transformer steps: room for a SIGTERM sent after the first logged step to reach both processes
# and be agreed on (JAX's preemption sync point) before the run ends, even on loaded cores.
TOKENIZER_STEPS, STEPS = 6, 16
# The digits config shrunk: a VAR (fewer ops to compile than VIAR; the runtime does not care),
# 16 images a batch, a log line every step, and FSDP over 2 of the 4 devices.
FLAGS = ['--config=configs/digits.py', f'--config.tokenizer.steps={TOKENIZER_STEPS}',
         '--config.tokenizer.batch_size=16', '--config.model.implicit=False',
         '--config.model.depth=2', '--config.optim.batch_size=16', f'--config.optim.steps={STEPS}',
         '--config.log_every=1', '--config.ckpt_every=4', '--config.sample_every=0',
         '--config.mesh.fsdp=2', '--config.tokenizer.eval_digits=False']

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]
_RUNS = itertools.count()


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start(workdir, processes: int, *flags):
  """`python -m launch.train` as `processes` processes with 4 / processes CPU devices each."""
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_') or
         k == 'JAX_COMPILATION_CACHE_DIR'}  # the session's compile cache, shared across runs
  # Unoptimised XLA (as under the `fast_compiles` fixture) in every run: this tests the runtime, not
  # numerics, and the runs compare with each other.
  env.update(XLA_FLAGS=f'--xla_force_host_platform_device_count={4 // processes}',
             JAX_PLATFORMS='cpu', JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  if processes > 1:
    env.update(JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{free_port()}',
               JAX_NUM_PROCESSES=str(processes))
  procs, run = [], next(_RUNS)
  for i in range(processes):
    log = open(f'{workdir}.run{run}.process{i}.log', 'w')  # pylint: disable=consider-using-with
    procs.append(subprocess.Popen(
        [sys.executable, '-m', 'launch.train', *FLAGS, f'--workdir={workdir}', *flags], cwd=ROOT,
        env=dict(env, JAX_PROCESS_ID=str(i)), stdout=log, stderr=subprocess.STDOUT))
    procs[-1].log_path = log.name
  return procs


def finish(procs, timeout=600):
  """Waits for every process; fails with the tails of their logs unless all exited 0."""
  try:
    for p in procs:
      p.wait(timeout=timeout)
  finally:
    for p in procs:
      p.kill()
  logs = [pathlib.Path(p.log_path).read_text(errors='replace') for p in procs]
  assert all(p.returncode == 0 for p in procs), '\n\n'.join(
      f'--- process {i} (exit {p.returncode}):\n' + log[-4000:]
      for i, (p, log) in enumerate(zip(procs, logs)))
  return logs[0]


def metrics(path):
  records = [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]
  return [r['step'] for r in records], [r['loss'] for r in records]


def assert_same_run(workdir, reference):
  """Exactly one metrics line per logged step, the reference's losses within 1e-4, and its
  exported model."""
  for name, steps in (('tokenizer/tokenizer_metrics.jsonl', TOKENIZER_STEPS),
                      ('train_metrics.jsonl', STEPS)):
    logged, losses = metrics(workdir / name)
    assert logged == list(range(1, steps + 1)), (name, logged)
    np.testing.assert_allclose(losses, metrics(reference / name)[1], atol=1e-4, err_msg=name)
  _, exported = checkpoint.load(workdir / 'model')
  _, expected = checkpoint.load(reference / 'model')
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), exported, expected)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """The run on 1 process x 4 devices."""
  workdir = tmp_path_factory.mktemp('one_process') / 'run'
  finish(start(workdir, 1))
  return workdir


def wait_for_first_step(procs, metrics_file):
  deadline = time.time() + 400
  while not (metrics_file.exists() and metrics_file.read_text().count('\n') >= 1):
    assert time.time() < deadline and all(p.poll() is None for p in procs), 'no training step'
    time.sleep(0.05)


def test_stop_sigterm_resume_end_and_export_on_two_processes(reference, tmp_path):
  workdir = tmp_path / 'run'
  # 1. Stopped inside tokenizer training (step 4 of 6): both processes save step 4 and exit 0.
  log = finish(start(workdir, 2, '--stop_after=4'))
  assert 'tokenizer: stopping early (--stop_after=4): saved step 4' in log
  assert sorted(p.name for p in (workdir / 'tokenizer/checkpoints/4/data').iterdir()
                if p.suffix == '.json') == ['process_0-of-2.json', 'process_1-of-2.json']
  # 2. Resumed: the tokenizer from step 4 (each process its own data position), then the
  # transformer until SIGTERM reaches both processes: they agree on one step, save it, exit 0.
  procs = start(workdir, 2)
  wait_for_first_step(procs, workdir / 'train_metrics.jsonl')
  for p in procs:
    p.send_signal(signal.SIGTERM)
  log = finish(procs)
  assert 'tokenizer: resumed from step 4' in log and '2 process(es), 4 cpu devices' in log
  stopped_at = int(log.split('stopping early (preempted (SIGTERM)): saved step ')[1].split()[0])
  assert 1 <= stopped_at < STEPS
  # 3. Resumed to the end, with a sample grid (FSDP-sharded params, batch over both processes)
  # and the export written by both.
  log = finish(start(workdir, 2, '--config.sample_every=8', '--config.sample.per_class=2'))
  assert f'resumed from step {stopped_at}' in log
  assert (workdir / 'samples_000008.png').exists()
  assert_same_run(workdir, reference)

  # The exported model loads in a plain 1-device process and samples.
  vae_cfg, vae_params = checkpoint.load(workdir / 'tokenizer')
  cfg, params = checkpoint.load(workdir / 'model')
  out = sampler.make_sampler(vqvae.VQVAE(vae_cfg), transformer.Transformer(cfg))(
      vae_params, params, jax.random.PRNGKey(0), np.arange(2, dtype=np.int32))
  assert out.images.shape == (2, 8, 8, 3) and np.isfinite(np.asarray(out.images)).all()
