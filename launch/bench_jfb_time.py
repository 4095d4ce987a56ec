"""JFB training time vs m (differentiated iterations), one compiled program per table.

    python -m launch.bench_jfb_time [--embed_dim 256] [--batch 2] [--full_scales] [--repeats 3]

Prints the table of viar_jax.bench.jfb_time: time(m) / time(m=12) of `jit(grad)` of the implicit
layer's JFB (target <= 0.35 at m=1) and of the whole VIAR training step.
"""
from absl import flags

from viar_jax import cli
from viar_jax.bench import jfb_time

_EMBED_DIM = flags.DEFINE_integer('embed_dim', 256, 'width of the VIAR-d30 layout')
_BATCH = flags.DEFINE_integer('batch', 2, 'batch size')
_FULL_SCALES = flags.DEFINE_bool('full_scales', False, '256px schedule (L = 680)')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'timed calls per m (interleaved)')


def main(argv):
  del argv
  jfb_time.run(_EMBED_DIM.value, _BATCH.value, _FULL_SCALES.value, _REPEATS.value)


if __name__ == '__main__':
  cli.run(main)
