"""Tokenizer round trip on a reference fixture set: image -> multi-scale tokens -> image, against the
official PyTorch outputs stored with it (launch.tokenizer_demo).

    errors = tokenizer_round_trip.run('tests/fixtures/reference_small', 'out/tokenizer')

Converts the fixture's PyTorch VQ-VAE state dict, tokenizes its images, decodes the running f̂ of every
scale, prints the errors, and writes `<out>/scales.png`: one row per image, input then the decoded
image after each scale (coarse to fine).
"""
import functools
import json
import pathlib
import time
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np

from viar_jax.io import convert, png, reference_config
from viar_jax.models import factory, vqvae


def run(fixture_dir, out) -> Dict:
  """-> {'tokens_identical': [per scale], 'fhat_max_abs_err': [per scale], 'image_max_abs_err',
  'png': path}."""
  fixture = pathlib.Path(fixture_dir)
  cfg = reference_config.vqvae_config(json.loads((fixture / 'config.json').read_text()))
  with np.load(fixture / 'vqvae.npz') as z:
    data = {k: z[k] for k in z.files}
  img = jnp.asarray(data['in/img'].transpose(0, 2, 3, 1))  # NCHW -> NHWC
  model = vqvae.VQVAE(cfg)
  params = convert.convert_state_dict({k[3:]: v for k, v in data.items() if k.startswith('sd/')},
                                      factory.abstract_module_params(model, img))
  call = lambda method, *a: jax.jit(functools.partial(model.apply, method=method))(
      {'params': params}, *a)

  t0 = time.perf_counter()
  idx = call(vqvae.VQVAE.img_to_idx, img)
  fhats = call(vqvae.VQVAE.idx_to_fhats, idx)
  decoded = [call(vqvae.VQVAE.fhat_to_img, f) for f in fhats]
  jax.block_until_ready(decoded)
  print(f'tokenized and decoded {img.shape[0]} images of {cfg.image_size}px at {len(idx)} scales '
        f'in {time.perf_counter() - t0:.1f}s (incl. compile)')
  result = {'tokens_identical': [], 'fhat_max_abs_err': []}
  for k, i in enumerate(idx):
    same = int(np.sum(np.asarray(i) == data[f'out/idx_{k}']))
    err = float(np.abs(np.asarray(fhats[k]) - data[f'out/fhat_{k}'].transpose(0, 2, 3, 1)).max())
    result['tokens_identical'].append(same / i.size)
    result['fhat_max_abs_err'].append(err)
    print(f'  scale {k} ({cfg.patch_nums[k]}x{cfg.patch_nums[k]}): tokens identical to PyTorch '
          f'{same}/{i.size}, f̂ max abs err {err:.2e}')
  result['image_max_abs_err'] = float(
      np.abs(np.asarray(decoded[-1]) - data['out/recon'].transpose(0, 2, 3, 1)).max())
  print(f'  decoded image max abs err vs PyTorch: {result["image_max_abs_err"]:.2e}')
  rows = [np.concatenate([np.asarray(img)[b:b + 1]] + [np.asarray(d)[b:b + 1] for d in decoded])
          for b in range(img.shape[0])]
  result['png'] = png.write_png(pathlib.Path(out) / 'scales.png',
                                png.grid(png.to_uint8(np.concatenate(rows)), cols=len(decoded) + 1))
  print(f'wrote {result["png"]}')
  return result
