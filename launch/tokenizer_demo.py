"""Tokenizer round trip on the shipped reference fixture: image -> multi-scale tokens -> image.

    python -m launch.tokenizer_demo [--fixture_dir tests/fixtures/reference_small] [--out out/tokenizer]

Prints the per-scale token agreement and f̂ / image errors against the official PyTorch outputs and
writes `<out>/scales.png` (viar_jax.eval.tokenizer_round_trip).
"""
from absl import flags

from viar_jax import cli
from viar_jax.eval import tokenizer_round_trip

_FIXTURE_DIR = flags.DEFINE_string('fixture_dir', 'tests/fixtures/reference_small',
                                   'a reference fixture set (config.json + vqvae.npz)')
_OUT = flags.DEFINE_string('out', 'out/tokenizer', 'output directory')


def main(argv):
  del argv
  tokenizer_round_trip.run(_FIXTURE_DIR.value, _OUT.value)


if __name__ == '__main__':
  cli.run(main)
