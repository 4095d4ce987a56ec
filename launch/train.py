"""Trains VAR or VIAR (and, when no tokenizer checkpoint is given, the tokenizer first).

    python -m launch.train --config configs/digits.py
    python -m launch.train --config configs/digits.py --config.optim.steps=3000 --workdir out/run2
    python -m launch.train --config configs/imagenet.py:viar_d30 --config.data.data_dir=<tfds dir>

Single host or multi-host (`jax.distributed.initialize()` runs when JAX_COORDINATOR_ADDRESS or
--multihost is set); params and optimizer state are sharded over a (data, fsdp) mesh, the batch over
both axes. A run resumes from the latest checkpoint in its workdir; SIGTERM saves and exits
(viar_jax.train.loop).
"""
import os

import jax
from absl import flags
from ml_collections import config_flags

from viar_jax import cli
from viar_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/digits.py', 'training config file')
_WORKDIR = flags.DEFINE_string('workdir', None, 'overrides config.workdir')
_MULTIHOST = flags.DEFINE_bool('multihost', False,
                               'call jax.distributed.initialize() (auto under a launcher)')


def main(argv):
  del argv
  if _MULTIHOST.value or os.environ.get('JAX_COORDINATOR_ADDRESS'):
    jax.distributed.initialize()
  c = _CONFIG.value
  loop.train(c, _WORKDIR.value or c.workdir)


if __name__ == '__main__':
  cli.run(main)
