"""Trains the multi-scale VQ-VAE tokenizer alone (launch.train does this first when
config.tokenizer.ckpt is empty).

    python -m launch.train_tokenizer --config configs/digits.py

Writes a viar-jax checkpoint to `<workdir>/tokenizer` (usable as `--config.tokenizer.ckpt`), logs
codebook usage and writes `reconstructions.png`; see viar_jax.train.tokenizer_loop for the losses.
The perceptual loss needs user-supplied weights (nothing is downloaded) and images of >= 16 px:

    python -m launch.train_tokenizer --config configs/<yours>.py \
        --config.tokenizer.perceptual_weight=1.0 \
        --config.tokenizer.lpips_vgg=vgg16-397923af.pth --config.tokenizer.lpips_lin=vgg.pth
"""
from etils import epath
from ml_collections import config_flags

from viar_jax import cli, runtime
from viar_jax.train import tokenizer_loop

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/digits.py', 'training config file')


def main(argv):
  del argv
  runtime.initialize()  # one process or many, as launch.train
  c = _CONFIG.value
  tokenizer_loop.train(c, epath.Path(c.workdir) / 'tokenizer')


if __name__ == '__main__':
  cli.run(main)
