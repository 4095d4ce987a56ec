"""Class-conditional sampling (and editing) from checkpoints to files (launch.sample, launch.evaluate).

    sample_files = generate.generate(vae_ckpt, model_ckpt, classes=[207, 360], per_class=8, batch=16,
                                     options=sampler.SampleOptions(iters=(10, 9, ...)), seed=0,
                                     out='out/samples')

Writes `<out>/grid.png` (one row per class), `<out>/images/<class>_<i>.png`, `<out>/samples.npz`
(`arr_0`: uint8 (N, H, W, 3) as the ADM evaluator expects, `arr_1`: labels) and per-scale VIAR
iteration stats in `<out>/stats.json`.

Every device of the process (or `devices`) samples: `batch` is per device, each call takes
batch · devices images (the last call padded, then trimmed), params replicated, the batch split
over the devices. Seeds: image j of the run (class-major: all of class 0's per_class images, then
class 1's, ...) draws from fold_in(PRNGKey(seed), j) (`sampler.image_keys`), so an image does not
depend on the batch size or the device count.
"""
import json
import pathlib
import time
from typing import Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from viar_jax.io import png, writable
from viar_jax.models import vqvae
from viar_jax.sample import pair, sampler
from viar_jax.train import sharding


def generate(vae_ckpt, model_ckpt, classes: Sequence, per_class: int, batch: int,
             options: sampler.SampleOptions, seed: int, out,
             edit: Optional[Tuple[np.ndarray, np.ndarray]] = None, devices=None) -> Dict:
  """Samples `per_class` images of every class (all classes if `classes` is empty).

  batch: images per device and call. edit: (source image (H, W, 3) float [-1, 1], keep-mask (n, n)
  at the finest scale) or None. devices: default every device of this process.
  Returns {'grid': path, 'npz': path, 'stats': dict}.
  """
  out = writable.ensure_dir(out, 'sample output directory')  # before loading and sampling
  vae, vae_params, model, params = pair.load(vae_ckpt, model_ckpt)
  cfg = model.config
  classes = [int(c) for c in classes] or list(range(cfg.num_classes))
  bad = [c for c in classes if not 0 <= c <= cfg.num_classes]
  if bad:
    raise ValueError(f'class ids {bad} outside [0, {cfg.num_classes}]')
  sample = sampler.make_sampler(vae, model, options)
  devices = list(devices or jax.local_devices())
  mesh = sharding.make_mesh(len(devices), 1, devices=devices)
  rows, whole = sharding.batch_sharding(mesh), NamedSharding(mesh, P())
  per_call = batch * mesh.size
  vae_params, params = jax.device_put((vae_params, params), whole)
  labels = np.repeat(np.asarray(classes, np.int32), per_class)
  edit_args = None
  if edit is not None:
    img, mask = edit
    source = vae.apply({'params': vae_params}, jnp.asarray(img)[None], method=vqvae.VQVAE.img_to_idx)
    edit_args = jax.device_put(([jnp.repeat(t, per_call, axis=0) for t in source],
                                jnp.repeat(jnp.asarray(mask)[None], per_call, axis=0)), rows)

  images, iters, t0 = [], [], time.perf_counter()
  for i in tqdm(range(0, len(labels), per_call), desc=f'sampling ({mesh.size} device(s))',
                unit='call'):
    chunk = labels[i:i + per_call]
    padded = np.pad(chunk, (0, per_call - len(chunk)), mode='edge')  # one compiled shape for all
    args = (vae_params, params,
            jax.device_put(sampler.image_keys(seed, np.arange(i, i + per_call)), rows),
            jax.device_put(padded, rows))
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
