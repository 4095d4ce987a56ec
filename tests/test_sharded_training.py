"""The same training steps on 1 device, on a data=4 x fsdp=2 mesh of 8 CPU devices, and in two
processes on localhost (CPU collectives) agree."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import sharded_setup
from viar_jax.train import sharding


@pytest.fixture(scope='module')
def single_device():
  return sharded_setup.run_steps(1, 1, devices=jax.devices()[:1])


def test_one_device_and_eight_devices_give_the_same_losses(single_device):
  assert jax.device_count() == 8, 'tests/conftest.py sets 8 simulated CPU devices'
  losses_1, params_1 = single_device
  losses_8, params_8 = sharded_setup.run_steps(4, 2, replicate=sharding.IMPLICIT_MODULES)
  np.testing.assert_allclose(losses_8, losses_1, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), params_8, params_1)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_on_localhost_agree(single_device, tmp_path):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  worker = os.path.join(os.path.dirname(__file__), 'multiprocess_worker.py')
  out = tmp_path / 'losses.json'
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  procs = [subprocess.Popen([sys.executable, worker, str(i), str(port), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
  try:
    logs = [p.communicate(timeout=400)[0].decode(errors='replace') for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert all(p.returncode == 0 for p in procs), '\n'.join(l[-3000:] for l in logs)
  np.testing.assert_allclose(json.loads(out.read_text()), single_device[0], atol=1e-5)
