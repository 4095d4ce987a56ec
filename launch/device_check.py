"""One short accelerator check: VAR / VIAR sampling images/s and memory (XLA vs cuDNN attention) and
the VIAR train step's time and MFU at the largest batch that fits (viar_jax.bench.device_check).

    python -m launch.device_check --out out/device_check            # on a GPU / TPU machine
    python -m launch.device_check --tiny --out /tmp/dc              # tiny shapes, any machine
"""
from absl import flags

from viar_jax import cli
from viar_jax.bench import device_check

_OUT = flags.DEFINE_string('out', 'out/device_check', 'where device_check.json goes')
_SIZES = flags.DEFINE_list('sizes', ['30', '16'], 'model depths; the first gets the most rows')
_TINY = flags.DEFINE_bool('tiny', False, 'depth-4 width-64 models on 4 scales (CPU check)')


def main(argv):
  del argv
  device_check.run(_OUT.value, [int(s) for s in _SIZES.value], _TINY.value)


if __name__ == '__main__':
  cli.run(main)
