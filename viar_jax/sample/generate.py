"""Class-conditional sampling (and editing) from checkpoints to files (launch.sample, launch.evaluate).

    sample_files = generate.generate(vae_ckpt, model_ckpt, classes=[207, 360], per_class=8, batch=16,
                                     options=sampler.SampleOptions(iters=(10, 9, ...)), seed=0,
                                     out='out/samples')

Writes `<out>/grid.png` (one row per class, at most 16 x 16 images), `<out>/images/<class>_<i>.png`,
`<out>/samples.npz` (`arr_0`: uint8 (N, H, W, 3) as the ADM evaluator expects, `arr_1`: labels) and
per-scale VIAR iteration stats in `<out>/stats.json`; the run itself lives in `<out>/run.json` and
`<out>/shards/` (viar_jax.sample.shards).

Scale: every device of every process samples (`batch` images per device and call; the last call is
padded, then trimmed), params replicated, the batch split over one mesh of all devices. Each process
writes its own rows as a shard right after each call, so memory does not grow with the number of
images, and `samples.npz` is streamed from the shards at the end. Run again with the same arguments
into the same `out`, a run that was killed resumes: the calls whose images are all on disk are
skipped and the result is the same as an uninterrupted run's; other settings are refused.

Seeds: image j of the run (class-major: all of class 0's per_class images, then class 1's, ...)
draws from fold_in(PRNGKey(seed), j) (`sampler.image_keys`), so an image depends on neither the
batch size, nor the device or process count, nor on resuming.
"""
import hashlib
import json
import time
from typing import Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from tqdm import tqdm

from viar_jax import runtime
from viar_jax.io import png, writable
from viar_jax.models import vqvae
from viar_jax.sample import pair, sampler, shards
from viar_jax.train import sharding

GRID_MAX = 16  # classes (rows) and images per class (columns) shown in grid.png


def generate(vae_ckpt, model_ckpt, classes: Sequence, per_class: int, batch: int,
             options: sampler.SampleOptions, seed: int, out,
             edit: Optional[Tuple[np.ndarray, np.ndarray]] = None, devices=None,
             fsdp: int = 1) -> Dict:
  """Samples `per_class` images of every class (all classes if `classes` is empty) into `out`.

  batch: images per device and call. edit: (source image (H, W, 3) float [-1, 1], keep-mask (n, n)
  at the finest scale) or None. devices: default every device of every process. fsdp > 1: the
  transformer's large params are split over groups of `fsdp` devices (sharding.param_specs) instead
  of replicated, for models whose replicas do not fit; XLA gathers each where it is used.
  Returns {'grid': path, 'npz': path, 'stats': dict} (the paths on process 0, else None).
  """
  out = writable.ensure_dir(out, 'sample output directory')  # before loading and sampling
  if batch < 1 or per_class < 1:
    raise ValueError(f'batch (per device) and per_class must be >= 1, got {batch} and {per_class}')
  devices = list(devices or jax.devices())
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f'fsdp={fsdp} must divide the {len(devices)} devices')
  vae, vae_params, model, params = pair.load(vae_ckpt, model_ckpt)
  cfg = model.config
  classes = [int(c) for c in classes] or list(range(cfg.num_classes))
  bad = [c for c in classes if not 0 <= c <= cfg.num_classes]
  if bad:
    raise ValueError(f'class ids {bad} outside [0, {cfg.num_classes}]')
  labels = np.repeat(np.asarray(classes, np.int32), per_class)
  spec = {'vae_ckpt': str(writable.absolute(vae_ckpt)),
          'model_ckpt': str(writable.absolute(model_ckpt)), 'classes': classes,
          'per_class': per_class, 'seed': seed, 'options': dict(options.__dict__),
          'edit': None if edit is None else _digest(*edit)}
  run = shards.SampleRun.open(out, spec)  # refuses another run's directory, before any compute

  mesh = sharding.make_mesh(len(devices) // fsdp, fsdp, devices=devices)
  if fsdp > 1:
    shardings = sharding.named_shardings(sharding.param_specs(params, mesh), mesh)
    params = jax.tree.map(sampler.on_mesh, params, shardings)
  per_call = batch * mesh.size
  sample = sampler.make_sampler(vae, model, options, mesh=mesh)
  edit_args = None
  if edit is not None:
    img, mask = edit
    source = vae.apply({'params': vae_params}, jnp.asarray(img)[None], method=vqvae.VQVAE.img_to_idx)
    edit_args = ([np.repeat(np.asarray(t), per_call, axis=0) for t in source],
                 np.repeat(np.asarray(mask)[None], per_call, axis=0))

  starts = _calls_to_run(run, len(labels), per_call, mesh)
  done_before = len(labels) - sum(min(per_call, len(labels) - s) for s in starts)
  progress = tqdm(total=len(labels), initial=done_before, unit='img', smoothing=0.1,
                  desc=f'sampling on {mesh.size} device(s)', disable=not runtime.is_primary())
  t0 = time.perf_counter()
  for start in starts:
    index = np.arange(start, start + per_call)
    args = (vae_params, params, sampler.image_keys(seed, index),
            labels[np.minimum(index, len(labels) - 1)])  # padded: one compiled shape for all calls
    result = sample(*args, edit_args) if edit_args else sample(*args)
    rows, images = sampler.process_rows(result.images)
    _, iterations = sampler.process_rows(result.iterations, axis=1)
    real = start + rows < len(labels)
    index, images = start + rows[real], png.to_uint8(images[real], (0.0, 1.0))
    if len(index):
      run.write_shard(index, images, iterations.T[real])
      for j, image in zip(index, images):
        png.write_png(out / 'images' / f'{labels[j]:04d}_{j % per_class:03d}.png', image)
    progress.update(min(per_call, len(labels) - start))
  progress.close()
  seconds = time.perf_counter() - t0
  runtime.sync('samples-written')

  result = {'grid': None, 'npz': None, 'stats': None}
  if runtime.is_primary():
    result = _finish(run, out, labels, per_class, options, len(labels) - done_before, seconds,
                     image_shape=(vae.config.image_size, vae.config.image_size, 3), edit=edit)
  runtime.sync('samples-assembled')
  return result


def _calls_to_run(run: shards.SampleRun, total: int, per_call: int, mesh) -> list:
  """First indices of the calls that still have images missing from disk on some process."""
  mine = np.unique(np.concatenate([
      np.arange(per_call)[i] for i in sharding.batch_sharding(mesh)
      .addressable_devices_indices_map((per_call,)).values()]))
  done = run.done()
  starts = np.arange(0, total, per_call)
  needed = np.array([not np.isin((s + mine)[s + mine < total], done).all() for s in starts])
  if jax.process_count() > 1:  # a call is collective: run it if any process misses rows of it
    needed = multihost_utils.process_allgather(needed).any(axis=0)
  return starts[needed].tolist()


def _finish(run, out, labels, per_class, options, sampled, seconds, image_shape, edit) -> Dict:
  """Process 0: samples.npz, grid.png (edits: each row led by the source and the region
  regenerated, marked red) and stats.json from the shards."""
  npz_path = run.assemble(labels, image_shape)
  iterations = np.concatenate(list(run.read(len(labels), 'iterations')))
  first = np.unique(labels, return_index=True)[1]  # the first image of each class (class-major)
  cols = min(per_class, GRID_MAX)
  shown = np.concatenate([j + np.arange(cols) for j in np.sort(first)[:GRID_MAX]])
  images = next(run.read(len(labels), 'images', indices=shown, chunk=len(shown)))
  if edit is not None:
    lead = _edit_sources(*edit)
    images = np.concatenate([np.concatenate([lead, row]) for row in images.reshape(-1, cols,
                                                                                   *image_shape)])
    cols += len(lead)
  zoom = max(1, 64 // image_shape[0])  # small images (8px digits) shown enlarged
  grid = png.write_png(out / 'grid.png', png.grid(images, cols=cols, zoom=zoom))
  stats = {'images': int(len(labels)), 'sampled_now': int(sampled),
           'seconds_incl_compile': round(seconds, 2),
           'images_per_second_incl_compile': round(sampled / seconds, 3) if sampled else None,
           'mean_iterations_per_scale': iterations.mean(axis=0).round(3).tolist(),
           'options': dict(options.__dict__)}
  (epath.Path(out) / 'stats.json').write_text(json.dumps(stats, indent=1))
  print(f'{len(labels)} images ({sampled} sampled now, {seconds:.1f}s) -> {grid}, {npz_path}')
  return {'grid': grid, 'npz': npz_path, 'stats': stats}


def _edit_sources(image, keep_mask) -> np.ndarray:
  """(2, H, W, 3) uint8: the source image, and the same with the cells to regenerate tinted red."""
  source = png.to_uint8(np.asarray(image))
  cell = source.shape[0] // keep_mask.shape[0]
  regenerate = np.kron(np.asarray(keep_mask) < 0.5, np.ones((cell, cell), bool))[..., None]
  tinted = np.where(regenerate, (source * 0.5 + np.array([127, 0, 0])).astype(np.uint8), source)
  return np.stack([source, tinted])


def _digest(image, mask) -> str:
  """sha256 of an edit's inputs: a resumed edit run must edit the same image the same way."""
  h = hashlib.sha256()
  for a in (image, mask):
    a = np.ascontiguousarray(a)
    h.update(str((a.dtype, a.shape)).encode() + a.tobytes())
  return h.hexdigest()
