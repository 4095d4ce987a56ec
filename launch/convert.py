"""Converts a released PyTorch checkpoint (VQ-VAE, VAR, VIAR) into a viar-jax checkpoint.

    pip install -e '.[torch]'
    python -m launch.convert --src vae_ch160v4096z32.pth --dst ckpt/vae
    python -m launch.convert --src var_d16.pth --dst ckpt/var_d16
    python -m launch.convert --src viar.pth --dst ckpt/viar_d30

The model is recognised from the file name (or --model, one of viar_jax.io.released.NAMES). Loading is
safe (`torch.load(weights_only=True)`, memory-mapped) and strict: every unknown key, missing key and
shape mismatch is listed in one error, before anything is written. `.npz` and `.safetensors` state
dicts are accepted too. The output directory holds `config.json` and orbax `params/`.
"""
from absl import flags

from viar_jax import cli
from viar_jax.io import released

_SRC = flags.DEFINE_string('src', None, 'reference checkpoint (.pth, .npz, .safetensors)', required=True)
_DST = flags.DEFINE_string('dst', None, 'output directory (must not hold a checkpoint)', required=True)
_MODEL = flags.DEFINE_enum('model', None, released.NAMES,
                           'released model name; inferred from the file name when omitted')


def main(argv):
  del argv
  released.convert_file(_SRC.value, _DST.value, _MODEL.value)


if __name__ == '__main__':
  cli.run(main)
