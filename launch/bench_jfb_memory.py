"""JFB training memory: XLA temp bytes of a VIAR loss + grad step vs K (no-grad) and m_max (with-grad).

    python -m launch.bench_jfb_memory [--embed_dim 128] [--batch 2] [--full_scales]

Prints one table (viar_jax.bench.jfb_memory); K should cost nothing and every extra differentiated
iteration about one carry (B·L·C floats).
"""
from absl import flags

from viar_jax import cli
from viar_jax.bench import jfb_memory

_EMBED_DIM = flags.DEFINE_integer('embed_dim', 128, 'width of the VIAR-d30 layout')
_BATCH = flags.DEFINE_integer('batch', 2, 'batch size')
_FULL_SCALES = flags.DEFINE_bool('full_scales', False, '256px schedule (L = 680)')


def main(argv):
  del argv
  jfb_memory.run(_EMBED_DIM.value, _BATCH.value, _FULL_SCALES.value)


if __name__ == '__main__':
  cli.run(main)
