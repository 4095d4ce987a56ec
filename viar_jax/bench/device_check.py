"""One short check of what an accelerator does with VAR / VIAR: sampling and a training step.

    python -m launch.device_check [--out out/device_check] [--sizes 30,16] [--tiny]

Rows, bfloat16, random weights (speed and memory do not depend on the values), the 256 px scales,
CFG 1.5 with top-k 900 / top-p 0.96:
  sample  VAR, VIAR 10->2 and VIAR 10->10 (5 pre / implicit / 5 post blocks) at batch 32 and 64 for
          d30, batch 64 for the other sizes; XLA attention, plus cuDNN's fused attention where the
          backend has it (VAR and VIAR 10->2, batch 64, largest size);
  train   the VIAR train step at the largest batch that fits the device: compiled at two batches,
          memory taken as linear in the batch, checked by compiling the chosen batch (one step back
          by a multiple of 8 if it does not fit); median time of 5 steps after 2, and MFU
          (viar_jax.train.mfu: model FLOPs at the mean K and m of the config's ranges).
Memory is XLA's compiled memory (argument + output + temp - aliased bytes), the same figure on
every backend; images/s is batch / median wall time of 3 calls after one. Every compile goes to the
persistent compilation cache of the launchers (viar_jax.cli), so a second run mostly times.

Writes `<out>/device_check.json` (the rows, the device, the settings) and prints one table.
`tiny=True`: depth-4, width-64 models on 4 scales, batches 2 and 4, float32: the CPU test.
"""
import dataclasses
import json
import statistics
import time
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from viar_jax import profiling
from viar_jax.bench import sampling
from viar_jax.io import writable
from viar_jax.models import factory, transformer, vqvae
from viar_jax.train import mfu, optim, sharding, train_step

SCHEDULES = ((10, 2), (10, 10))
TINY_SCHEDULES = ((3, 1), (3, 3))


def attention_implementations() -> List[str]:
  """'xla' everywhere; 'cudnn' on CUDA GPUs (jax.nn.dot_product_attention's fused kernel)."""
  return ['xla', 'cudnn'] if jax.default_backend() == 'gpu' else ['xla']


def size_settings(depth: int, batch: int, tiny: bool) -> sampling.Settings:
  if tiny:
    return dataclasses.replace(sampling.resolve(quick=True, batch=batch, repeats=1),
                               schedules=TINY_SCHEDULES)
  return dataclasses.replace(
      sampling.resolve(depth=depth, embed_dim=64 * depth, batch=batch, dtype='bfloat16',
                       vae_ch=160, repeats=3, isolate=False), schedules=SCHEDULES)


def with_attention(models: Dict, implementation: str) -> Dict:
  """The same params, each transformer built with `implementation` attention."""
  out = dict(models)
  for name in ('VAR', 'VIAR'):
    module, params = models[name]
    config = dataclasses.replace(module.config, attn_implementation=implementation)
    out[name] = (transformer.Transformer(config), params)
  return out


def sample_rows(depth: int, batches: Sequence[int], tiny: bool, fused_too: bool) -> List[Dict]:
  rows = []
  models = sampling.build_models(size_settings(depth, batches[0], tiny))
  for batch in batches:
    settings = size_settings(depth, batch, tiny)
    specs = [sampling.RowSpec('VAR')] + [sampling.RowSpec('VIAR', ramp, 'per_iteration')
                                         for ramp in settings.schedules]
    for implementation in attention_implementations():
      if implementation != 'xla' and not (fused_too and batch == batches[-1]):
        continue
      for spec in specs:
        if implementation != 'xla' and spec.schedule not in (None, settings.schedules[0]):
          continue
        row = sampling.measure_row(settings, spec, with_attention(models, implementation))
        rows.append({'kind': 'sample', 'depth': settings.depth, 'label': spec.label,
                     'attention': implementation, 'batch': batch,
                     'images_per_s': row['images_per_s'], 'seconds': row['seconds'],
                     'memory_bytes': row['compiled_total_bytes'], 'compile_s': row['compile_s']})
        print(format_row(rows[-1]), flush=True)
  return rows


def device_bytes() -> Optional[int]:
  stats = jax.devices()[0].memory_stats() or {}
  return int(stats['bytes_limit']) if 'bytes_limit' in stats else None


def train_row(depth: int, tiny: bool) -> Dict:
  """The VIAR train step at the largest batch that fits one device (see the module docstring)."""
  settings = size_settings(depth, 1, tiny)
  cfg = sampling.transformer_config(settings, implicit=True)
  vae_cfg = sampling.vae_config(settings)
  model, vae = transformer.Transformer(cfg), vqvae.VQVAE(vae_cfg)
  optimizer = optim.make_optimizer(peak_lr=1e-4, total_steps=1000, warmup_steps=10)
  mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  sharded = train_step.sharded_train_step(model, vae, optimizer, mesh)
  state_shapes = jax.eval_shape(sharded.create, jax.random.PRNGKey(0))
  vae_shapes = factory.abstract_params(vae_cfg)

  def compile_at(batch):
    args = (state_shapes, vae_shapes, factory.image_shape(vae_cfg, batch, jnp.uint8),
            jax.ShapeDtypeStruct((batch,), jnp.int32))
    return profiling.compile_with_report(sharded.step, *args)

  capacity = device_bytes()
  if capacity is None or tiny:  # no device limit to fit (CPU): the test's fixed batch
    batch = 4
    compiled, report = compile_at(batch)
  else:
    budget = int(0.92 * capacity)  # headroom for the allocator's fragmentation
    (_, small), (_, large) = compile_at(8), compile_at(16)
    per_example = max(1, (large.total_bytes - small.total_bytes) / 8)
    batch = max(8, int((budget - (small.total_bytes - 8 * per_example)) / per_example) // 8 * 8)
    compiled, report = compile_at(batch)
    if report.total_bytes > budget and batch > 8:
      batch -= 8
      compiled, report = compile_at(batch)

  state = sharded.create(jax.random.PRNGKey(0))
  vae_params = factory.random_params(vae_cfg, 0, sampling.PARAM_SCALE)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, factory.image_shape(vae_cfg, batch).shape, np.uint8))
  labels = jnp.asarray(rng.integers(0, cfg.num_classes, (batch,)), jnp.int32)
  times = []
  for i in range(7):
    t0 = time.perf_counter()
    state, metrics = compiled(state, vae_params, images, labels)
    jax.block_until_ready(metrics)
    if i >= 2:
      times.append(time.perf_counter() - t0)
  seconds = statistics.median(times)
  flops = mfu.model_flops_per_step(cfg, state_shapes.params, batch, **mfu.mean_iters(cfg))
  row = {'kind': 'train', 'depth': settings.depth, 'label': 'VIAR train step', 'attention': 'xla',
         'batch': batch, 'seconds': seconds, 'images_per_s': batch / seconds,
         'memory_bytes': report.total_bytes, 'compile_s': report.compile_s,
         'model_tflops_per_s': flops / seconds / 1e12,
         'mfu': mfu.utilisation(flops, seconds, jax.devices()[:1]),
         'device_bytes': capacity}
  print(format_row(row), flush=True)
  return row


def format_row(row: Dict) -> str:
  gib = row['memory_bytes'] / 2**30 if row['memory_bytes'] is not None else float('nan')
  rate = (f'MFU {100 * row["mfu"]:.1f}%' if row.get('mfu') is not None else
          f'{row["model_tflops_per_s"]:.3g} TFLOP/s' if 'model_tflops_per_s' in row else '')
  return (f'd{row["depth"]:<3} {row["label"]:<28} {row["attention"]:<6} B={row["batch"]:<4} '
          f'{row["images_per_s"]:>9.1f} img/s {row["seconds"]:>8.3f} s {gib:>8.2f} GiB {rate}')


def run(out='out/device_check', depths: Sequence[int] = (30, 16), tiny: bool = False) -> List[Dict]:
  """All rows for `depths` (the first also gets batch 32 and the fused-attention rows)."""
  out = writable.ensure_dir(out, 'device check output directory')
  device = jax.devices()[0]
  print(f'{device.device_kind} ({jax.default_backend()}), attention: '
        f'{", ".join(attention_implementations())}', flush=True)
  t0 = time.perf_counter()
  rows = []
  for i, depth in enumerate(depths):
    batches = ((2, 4) if tiny else (32, 64)) if i == 0 else ((4,) if tiny else (64,))
    rows += sample_rows(depth, batches, tiny, fused_too=i == 0)
    rows.append(train_row(depth, tiny))
  report = {'device_kind': device.device_kind, 'backend': jax.default_backend(),
            'jax': jax.__version__, 'tiny': tiny, 'seconds': time.perf_counter() - t0,
            'rows': rows}
  (out / 'device_check.json').write_text(json.dumps(report, indent=1))
  print(f'{len(rows)} rows in {report["seconds"]:.0f} s -> {out / "device_check.json"}', flush=True)
  return rows
