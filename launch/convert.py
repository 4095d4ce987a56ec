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
import argparse
import time

import jax
import numpy as np

from viar_jax.io import checkpoint, convert, released


def convert_file(src: str, dst: str, model: str = None) -> dict:
  name = model or released.name_from_file(src)
  config = released.config(name)
  t0 = time.perf_counter()
  state_dict = convert.load_reference_state_dict(src)
  print(f'read {len(state_dict)} tensors from {src} in {time.perf_counter() - t0:.1f}s; model {name}')
  params = convert.convert_state_dict(state_dict, checkpoint.abstract_params(config))
  del state_dict
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  out = checkpoint.save(dst, params, config)
  print(f'wrote {out} ({count:,} parameters) in {time.perf_counter() - t0:.1f}s')
  return {'model': name, 'parameters': count, 'dst': str(out)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--src', required=True, help='reference checkpoint (.pth, .npz, .safetensors)')
  parser.add_argument('--dst', required=True, help='output directory (must not hold a checkpoint)')
  parser.add_argument('--model', choices=released.NAMES, default=None,
                      help='released model name; inferred from the file name when omitted')
  args = parser.parse_args()
  convert_file(args.src, args.dst, args.model)


if __name__ == '__main__':
  main()
