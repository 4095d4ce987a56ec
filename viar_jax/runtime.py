"""The process runtime: one process or many (jax.distributed), who prints, and collective stops.

    runtime.initialize()          # first thing in a launcher; a no-op on one process
    runtime.say('...')            # console lines from process 0 only
    runtime.sync('export')        # a barrier (no-op on one process)
    stop = runtime.Stop(after=None)   # SIGTERM on any process -> all stop at the same step

`initialize` starts JAX's distributed runtime whenever the environment says there is more than one
process: `JAX_COORDINATOR_ADDRESS` + `JAX_NUM_PROCESSES` + `JAX_PROCESS_ID` (e.g. several processes
on one machine), or a cluster JAX detects itself (Cloud TPU VMs and GKE TPU slices, SLURM, Open MPI,
Kubernetes) with more than one process. Anything else is one process, and nothing is started.
"""
import os
import signal
from typing import Optional

import jax
from jax._src.clusters import ClusterEnv  # JAX's own cluster auto-detection (TPU, SLURM, MPI, k8s)
from jax.experimental import multihost_utils

from viar_jax import xla_options

COORDINATOR_ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')


def _detected_cluster() -> Optional[type]:
  return next((env for env in ClusterEnv._cluster_types  # pylint: disable=protected-access
               if not env.opt_in_only_method and env.is_env_present()), None)


def initialize() -> int:
  """Starts the distributed runtime when there is more than one process; -> the process count.

  Raises:
    ValueError: JAX_COORDINATOR_ADDRESS is set without a process count and id (and no cluster
      provides them), or they are not integers in range.
  """
  if jax.distributed.is_initialized():  # already started (e.g. by a caller)
    return jax.process_count()
  address, count, index = (os.environ.get(k) for k in COORDINATOR_ENV)
  cluster = _detected_cluster()
  if address:
    if (count is None or index is None) and cluster is None:
      missing = [k for k, v in zip(COORDINATOR_ENV[1:], (count, index)) if v is None]
      raise ValueError(f'JAX_COORDINATOR_ADDRESS={address} is set but {" and ".join(missing)} '
                       f'{"is" if len(missing) == 1 else "are"} not: set all three (the number of '
                       'processes, and this process\'s id from 0) or none')
    try:
      count = None if count is None else int(count)
      index = None if index is None else int(index)
    except ValueError as e:
      raise ValueError(f'JAX_NUM_PROCESSES / JAX_PROCESS_ID must be integers: {e}') from None
    if count is not None and (count < 1 or not 0 <= (index or 0) < count):
      raise ValueError(f'JAX_PROCESS_ID={index} is not in 0..JAX_NUM_PROCESSES-1 '
                       f'(JAX_NUM_PROCESSES={count})')
    jax.distributed.initialize(address, count, index)
  elif cluster is not None and cluster.get_process_count() > 1:
    jax.distributed.initialize()  # JAX reads the cluster's coordinator, count and id
  return jax.process_count()


def is_primary() -> bool:
  return jax.process_index() == 0


def say(*args, **kwargs):
  """print(), on process 0 only (every process computes; one speaks)."""
  if is_primary():
    print(*args, **kwargs, flush=True)


def sync(name: str):
  """A barrier across processes (no-op on one)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def summary(mesh=None) -> str:
  """The start-up facts: processes, devices (kind, per-device memory), the mesh."""
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  stats = jax.local_devices()[0].memory_stats() or {}
  memory = (f', {stats["bytes_limit"] / 2**30:.1f} GiB per device' if 'bytes_limit' in stats
            else '')
  text = (f'{jax.process_count()} process(es), {len(devices)} {jax.default_backend()} devices '
          f'({jax.local_device_count()} per process; {", ".join(kinds)}{memory})')
  if mesh is not None:
    text += ', mesh ' + ' x '.join(f'{name}={size}' for name, size in mesh.shape.items())
  return f'{text}; {xla_options.summary()}'


class Stop:
  """When to stop early, agreed by every process: a SIGTERM (preemption) or `after` steps.

  One process: SIGTERM sets a flag. Several: JAX's preemption sync manager (started by
  jax.distributed.initialize) catches SIGTERM on any process, and every process reaches the same
  "sync point" step, so they save that step together: saves are collective, and processes that
  stopped at different steps would hang in them. `step_done()` must be called after every
  training step by every process (tokenizer and transformer steps alike: one counter).
  """

  def __init__(self, after: Optional[int] = None):
    if after is not None and after < 1:
      raise ValueError(f'stop_after must be a positive number of steps, got {after}')
    self.after, self.steps, self.preempted = after, 0, False
    self._collective = jax.distributed.is_initialized()
    if not self._collective:
      signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, *_):
    self.preempted = True

  def step_done(self) -> bool:
    """Counts a step; True: save now and exit (every process gets the same answer)."""
    self.steps += 1
    if self._collective and multihost_utils.reached_preemption_sync_point(self.steps):
      self.preempted = True
    return self.preempted or (self.after is not None and self.steps >= self.after)

  def reason(self) -> str:
    return 'preempted (SIGTERM)' if self.preempted else f'--stop_after={self.after}'
