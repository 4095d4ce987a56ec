"""Images/s of the input pipeline alone, per grain worker count (viar_jax.bench.loader).

    python -m launch.bench_loader [--images 256] [--image_size 256] [--workers 0,1,2] [--batches 12]
"""
from absl import flags

from viar_jax import cli
from viar_jax.bench import loader

_IMAGES = flags.DEFINE_integer('images', 256, 'JPEGs written to the temporary folder')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 256, 'R for the JPEG source')
_WORKERS = flags.DEFINE_list('workers', ['0', '1', '2'], 'grain worker counts to time')
_BATCHES = flags.DEFINE_integer('batches', 12, 'timed batches per row')
_BATCH = flags.DEFINE_integer('batch', 32, 'batch size')


def main(argv):
  del argv
  loader.run(_IMAGES.value, _IMAGE_SIZE.value, [int(w) for w in _WORKERS.value], _BATCHES.value,
             _BATCH.value)


if __name__ == '__main__':
  cli.run(main)
