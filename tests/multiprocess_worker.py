"""One process of the 2-process training test (tests/test_multiprocess.py starts two of these).

    python tests/multiprocess_worker.py <process_id> <port> <out.json>
"""
import json
import os
import sys

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=1'  # one CPU device per process
os.environ['JAX_PLATFORMS'] = 'cpu'

import jax  # pylint: disable=wrong-import-position

sys.path.insert(0, os.path.dirname(__file__))
import sharded_setup  # pylint: disable=wrong-import-position


def main():
  process_id, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=2,
                             process_id=process_id)
  assert jax.process_count() == 2 and jax.device_count() == 2
  losses = sharded_setup.run_steps(data=2, fsdp=1, process_slice=(process_id, 2))
  if process_id == 0:
    with open(out, 'w') as f:
      json.dump(losses, f)
  jax.distributed.shutdown()


if __name__ == '__main__':
  main()
