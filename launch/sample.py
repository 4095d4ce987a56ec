"""Class-conditional sampling (and editing) from converted VAR / VIAR checkpoints.

    python -m launch.sample --vae_ckpt ckpt/vae --model_ckpt ckpt/viar_d30 --classes 207,360,387 \
        --per_class 8 --cfg 1.5 --top_k 900 --top_p 0.96 --iters 10,2 --out out/samples

Writes `<out>/grid.png` (one row per class), `<out>/images/<class>_<i>.png` and `<out>/samples.npz`
(`arr_0`: uint8 N x H x W x 3 as the ADM evaluator expects, `arr_1`: labels), plus per-scale VIAR
iteration stats in `<out>/stats.json`.

VIAR compute: `--iters L,R` ramps linearly from L iterations at the first scale to R at the last,
`--iters a,b,c,...` (one entry per scale) is explicit; `--cache final_iterate` with `--tol` /
`--solver anderson` exits early per sample. Editing: `--edit image.npy --edit_box y0,y1,x0,x1`
(relative units) regenerates the box (`--edit_mode inpaint`) or everything but the box (`outpaint`),
for the given classes (use the null class, num_classes, for pure in/out-painting).
"""
import json
import pathlib
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from tqdm import tqdm

from viar_jax.io import checkpoint, png
from viar_jax.models import solvers, vqvae
from viar_jax.sample import sampler

flags.DEFINE_string('vae_ckpt', None, 'tokenizer checkpoint directory (launch.convert)')
flags.DEFINE_string('model_ckpt', None, 'VAR / VIAR checkpoint directory (launch.convert)')
flags.DEFINE_list('classes', [], 'class ids to sample; empty = all classes')
flags.DEFINE_integer('per_class', 4, 'samples per class')
flags.DEFINE_integer('batch', 16, 'samples per device call')
flags.DEFINE_float('cfg', 1.5, 'classifier-free guidance (ramped over scales)')
flags.DEFINE_integer('top_k', 900, 'top-k filtering (0 = off)')
flags.DEFINE_float('top_p', 0.96, 'top-p filtering (0 = off)')
flags.DEFINE_bool('more_smooth', False, 'soft Gumbel mixing of code vectors (reference demo option)')
flags.DEFINE_list('iters', [], 'VIAR iterations: "L,R" ramp or one entry per scale; empty = eval_iters')
flags.DEFINE_enum('cache', 'per_iteration', sampler.CACHE_MODES, 'VIAR implicit KV-cache mode')
flags.DEFINE_float('tol', None, 'VIAR early-exit tolerance (final_iterate cache only)')
flags.DEFINE_enum('solver', 'picard', solvers.METHODS, 'VIAR solver (anderson: final_iterate only)')
flags.DEFINE_integer('seed', 0, 'PRNG seed')
flags.DEFINE_string('edit', None, 'source image for editing: .npy/.npz uint8 (H, W, 3) or float [-1, 1]')
flags.DEFINE_list('edit_box', ['0.25', '0.75', '0.25', '0.75'], 'y0,y1,x0,x1 in relative units')
flags.DEFINE_enum('edit_mode', 'inpaint', ['inpaint', 'outpaint'], 'regenerate inside / outside the box')
flags.DEFINE_string('out', 'out/samples', 'output directory')


def parse_iters(values: Sequence[str], num_scales: int) -> Optional[tuple]:
  if not values:
    return None
  counts = [int(v) for v in values]
  if len(counts) == 2 and num_scales != 2:
    return solvers.iteration_schedule(counts[0], counts[1], num_scales)
  if len(counts) != num_scales:
    raise ValueError(f'--iters needs 2 values (L,R) or one per scale ({num_scales}), got {counts}')
  return tuple(counts)


def keep_mask(box: Sequence[float], mode: str, n: int) -> np.ndarray:
  """(n, n) float keep-mask at the finest token grid: 0 = regenerate. Box rounded to token cells."""
  y0, y1, x0, x1 = (int(round(float(v) * n)) for v in box)
  if not (0 <= y0 < y1 <= n and 0 <= x0 < x1 <= n):
    raise ValueError(f'--edit_box {box} is empty or outside [0, 1] after rounding to {n} cells')
  inside = np.zeros((n, n), np.float32)
  inside[y0:y1, x0:x1] = 1
  return 1 - inside if mode == 'inpaint' else inside


def load_image(path: str, size: int) -> np.ndarray:
  """-> (size, size, 3) float32 in [-1, 1]."""
  if path.endswith('.npz'):
    with np.load(path) as z:
      img = z[z.files[0]]
  else:
    img = np.load(path)
  img = img[0] if img.ndim == 4 else img
  if img.shape != (size, size, 3):
    raise ValueError(f'edit image must be ({size}, {size}, 3), got {img.shape}')
  return img.astype(np.float32) / 127.5 - 1 if img.dtype == np.uint8 else img.astype(np.float32)


def generate(vae_ckpt, model_ckpt, classes, per_class, batch, options: sampler.SampleOptions, seed,
             out, edit=None):
  """Samples `per_class` images of every class; writes grid, PNGs, npz and stats. Returns the paths."""
  vae_cfg, vae_params = checkpoint.load(vae_ckpt)
  cfg, params = checkpoint.load(model_ckpt)
  if not isinstance(vae_cfg, vqvae.VQVAEConfig):
    raise ValueError(f'{vae_ckpt} holds a transformer, not a tokenizer')
  if vae_cfg.patch_nums != cfg.patch_nums:  # the tokenizer CNN is resolution-agnostic
    vae_cfg = vqvae.VQVAEConfig(**{**vae_cfg.__dict__, 'patch_nums': cfg.patch_nums,
                                   'image_size': cfg.patch_nums[-1] * vae_cfg.downsample})
  classes = [int(c) for c in classes] or list(range(cfg.num_classes))
  bad = [c for c in classes if not 0 <= c <= cfg.num_classes]
  if bad:
    raise ValueError(f'class ids {bad} outside [0, {cfg.num_classes}]')
  vae, model = vqvae.VQVAE(vae_cfg), checkpoint.module_for(cfg)
  sample = sampler.make_sampler(vae, model, options)
  labels = np.repeat(np.asarray(classes, np.int32), per_class)
  edit_args = None
  if edit is not None:
    img, mask = edit
    source = vae.apply({'params': vae_params}, jnp.asarray(img)[None], method=vqvae.VQVAE.img_to_idx)
    edit_args = ([jnp.repeat(t, batch, axis=0) for t in source],
                 jnp.repeat(jnp.asarray(mask)[None], batch, axis=0))

  images, iters, t0 = [], [], time.perf_counter()
  for i in tqdm(range(0, len(labels), batch), desc='sampling', unit='batch'):
    chunk = labels[i:i + batch]
    padded = np.pad(chunk, (0, batch - len(chunk)), mode='edge')  # one compiled shape for all
    args = (vae_params, params, jax.random.fold_in(jax.random.PRNGKey(seed), i), jnp.asarray(padded))
    result = sample(*args, edit_args) if edit_args else sample(*args)
    images.append(png.to_uint8(np.asarray(result.images)[:len(chunk)], (0.0, 1.0)))
    iters.append(np.asarray(result.iterations)[:, :len(chunk)])
  images, iters = np.concatenate(images), np.concatenate(iters, axis=1)
  seconds = time.perf_counter() - t0

  out = pathlib.Path(out)
  for j, (im, label) in enumerate(zip(images, labels)):
    png.write_png(out / 'images' / f'{label:04d}_{j % per_class:03d}.png', im)
  grid = png.write_png(out / 'grid.png', png.grid(images, cols=per_class))
  np.savez(out / 'samples.npz', arr_0=images, arr_1=labels)
  stats = {'images': int(len(images)), 'seconds_incl_compile': round(seconds, 2),
           'images_per_second_incl_compile': round(len(images) / seconds, 3),
           'mean_iterations_per_scale': iters.mean(axis=1).round(3).tolist(),
           'options': {k: v for k, v in options.__dict__.items()}}
  (out / 'stats.json').write_text(json.dumps(stats, indent=1))
  print(f'{len(images)} images in {seconds:.1f}s -> {grid}, {out / "samples.npz"}')
  return {'grid': grid, 'npz': out / 'samples.npz', 'stats': stats}


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.vae_ckpt or not f.model_ckpt:
    raise app.UsageError('--vae_ckpt and --model_ckpt are required (see launch.convert)')
  read_config = lambda d: checkpoint.config_from_json(
      json.loads((pathlib.Path(d) / 'config.json').read_text()))
  cfg, vae_cfg = read_config(f.model_ckpt), read_config(f.vae_ckpt)
  options = sampler.SampleOptions(
      cfg=f.cfg, top_k=f.top_k, top_p=f.top_p, more_smooth=f.more_smooth,
      iters=parse_iters(f.iters, len(cfg.patch_nums)), tol=f.tol, solver=f.solver, cache_mode=f.cache)
  edit = None
  if f.edit:
    n = cfg.patch_nums[-1]
    edit = (load_image(f.edit, n * vae_cfg.downsample), keep_mask(f.edit_box, f.edit_mode, n))
  generate(f.vae_ckpt, f.model_ckpt, f.classes, f.per_class, f.batch, options, f.seed, f.out, edit)


if __name__ == '__main__':
  app.run(main)
