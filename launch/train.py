"""Trains VAR or VIAR (and, when no tokenizer checkpoint is given, the tokenizer first).

    python -m launch.train --config configs/digits.py
    python -m launch.train --config configs/digits.py --config.optim.steps=3000 --workdir out/run2
    python -m launch.train --config configs/imagenet.py:viar_d30 --config.data.data_dir=<tfds dir>

One process or many: the same command on every host of a TPU slice or SLURM job, or on one
machine with JAX_COORDINATOR_ADDRESS=host:port JAX_NUM_PROCESSES=n JAX_PROCESS_ID=i (viar_jax.runtime
starts the distributed runtime when there is more than one process). Params and optimizer state
are sharded over a (data, fsdp) mesh of every device, the batch over both axes. A run resumes from
the latest checkpoint in its workdir (a local directory or a gs:// URL); SIGTERM to any process
saves one step everywhere and exits; --stop_after=N does the same after N steps
(viar_jax.train.loop).
"""
from absl import flags
from ml_collections import config_flags

from viar_jax import cli, runtime
from viar_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/digits.py', 'training config file')
_WORKDIR = flags.DEFINE_string('workdir', None, 'overrides config.workdir')
_STOP_AFTER = flags.DEFINE_integer(
    'stop_after', None, 'save and exit after this many steps (tokenizer and transformer steps of '
    'this invocation), as a preemption would')


def main(argv):
  del argv
  runtime.initialize()
  c = _CONFIG.value
  loop.train(c, _WORKDIR.value or c.workdir, stop=runtime.Stop(after=_STOP_AFTER.value))


if __name__ == '__main__':
  cli.run(main)
