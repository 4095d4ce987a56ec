"""One VAR / VIAR training run from a config (launch.train): tokenizer (given or trained first),
(data, fsdp) mesh, AOT-compiled train step per progressive stage, resume from the latest
checkpoint, metric log, sample grids, and a final plain `model/` checkpoint.

    state, metrics = loop.train(config, workdir)              # runs or resumes
    loop.train(config, workdir, stop=runtime.Stop(after=100))  # ends early with a checkpoint

One process or many (jax.distributed, started by runtime.initialize): every process runs this
function; the global batch is split over the processes (each reads its rows, so the run sees the
same batches whatever the process count), the state is sharded over every device, and saves,
restores, sample grids and the export are collective. Console lines, metrics and PNGs come from
process 0. A run resumes from the latest checkpoint in its workdir (each process its own data
position); SIGTERM on any process saves the same step everywhere and exits. Every config error is
raised before any compute (check_run_config), and an unwritable workdir right after. The workdir
may be a local directory or a bucket URL (etils.epath).

Faults: the loss, gradient norm and param norm are checked for NaN / inf at every log step and right
before every save (periodic, final, early stop / SIGTERM): a bad value raises
`run_io.NonFiniteError` naming the step and metric, that state is never saved, and the latest
checkpoint (the last finite one) stays for a rerun to resume from. Between log steps nothing is
fetched from the device, so a fault is reported at the next log / save step. Images the data
pipeline could not read are skipped, counted and reported at log steps (`data_skipped`).
"""
import time
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from viar_jax import data as data_lib
from viar_jax import profiling, runtime
from viar_jax.io import checkpoint, png, run_config, writable
from viar_jax.models import factory, transformer, vqvae
from viar_jax.sample import sampler
from viar_jax.train import mfu, optim, progressive, run_io, sharding, tokenizer_loop, train_step


def check_run_config(c, num_devices: int, process_count: int):
  """Every config error before any compute."""
  data, fsdp = c.mesh.data, c.mesh.fsdp
  data = num_devices // fsdp if data == -1 else data
  if data * fsdp != num_devices:
    raise ValueError(f'mesh data={c.mesh.data} x fsdp={fsdp} does not cover the {num_devices} devices')
  if c.optim.batch_size % (data * fsdp) or c.optim.batch_size % process_count:
    raise ValueError(f'global batch {c.optim.batch_size} is not divisible by the mesh size '
                     f'{data * fsdp} and the process count {process_count}')
  if c.tokenizer.ckpt and not (epath.Path(c.tokenizer.ckpt) / 'config.json').exists():
    raise FileNotFoundError(f'tokenizer checkpoint {c.tokenizer.ckpt} not found (config.json missing)')
  vae_cfg = tokenizer_config(c)
  model_cfg = run_config.transformer_config(c.model, vae_cfg)  # validates the model section
  if model_cfg.dtype == 'float16':
    raise ValueError("model.dtype='float16' needs loss scaling, which training does not do; use "
                     "'bfloat16' (the supported half precision) or 'float32'")
  if c.optim.get('mu_dtype', 'float32') not in ('float32', 'bfloat16'):
    raise ValueError(f"optim.mu_dtype must be 'float32' or 'bfloat16', got {c.optim.mu_dtype!r}")
  progressive_schedule(c, len(vae_cfg.patch_nums))  # validates pg / pg0
  if c.sample_every:
    sample_labels(c, model_cfg.num_classes, data * fsdp)  # validates the sample section
  return data, fsdp


def tokenizer_config(c) -> vqvae.VQVAEConfig:
  """The tokenizer's config: from its checkpoint, or the one tokenizer_loop will train."""
  if c.tokenizer.ckpt:
    return checkpoint.load_config(c.tokenizer.ckpt)
  return run_config.vqvae_config(c.tokenizer.vqvae)


def progressive_schedule(c, num_scales: int) -> progressive.Schedule:
  o = c.optim
  ramp = o.get('pg_ramp_steps')
  return progressive.Schedule(
      fraction=o.get('pg', 0.0), first_stage=o.get('pg0', 0), warmup_steps=o.warmup_steps,
      ramp_steps=o.steps / 300 if ramp is None else ramp, total_steps=o.steps, num_scales=num_scales)


def make_optimizer(c, num_scales: int):
  """The run's AdamW from config.optim -> (optimizer, peak lr, lr schedule kind); progressive
  training makes the schedule 'lin<pg>', as the reference does."""
  o, prog = c.optim, progressive_schedule(c, num_scales)
  lr_kind = f'lin{prog.fraction:g}' if prog.enabled else o.schedule
  peak_lr = optim.peak_lr_from_tblr(o.tblr, o.batch_size)
  optimizer = optim.make_optimizer(
      peak_lr=peak_lr, total_steps=o.steps, warmup_steps=o.warmup_steps, wpe=o.wpe,
      schedule=lr_kind, twd=o.twd, twde=o.twde, clip_norm=o.clip_norm,
      mu_dtype=jnp.dtype(o.get('mu_dtype', 'float32')))
  return optimizer, peak_lr, lr_kind


def sample_labels(c, num_classes: int, num_devices: int) -> Tuple[np.ndarray, int]:
  """The in-training sample grid's labels: config.sample.classes (default: the first 10),
  per_class each, padded (with the last one) to a multiple of the device count. -> (labels, how
  many the grid shows)."""
  classes = tuple(c.sample.get('classes') or range(min(num_classes, 10)))
  bad = [k for k in classes if not 0 <= k < num_classes]
  if bad or c.sample.per_class < 1:
    raise ValueError(f'config.sample.classes must be class ids in 0..{num_classes - 1} and '
                     f'per_class >= 1; got classes={classes}, per_class={c.sample.per_class}')
  labels = np.repeat(np.asarray(classes, np.int32), c.sample.per_class)
  return np.pad(labels, (0, -len(labels) % num_devices), mode='edge'), len(labels)


class SampleGrid:
  """The in-training sample grid: one sampler, compiled once, batch sharded over the mesh, the
  (FSDP-sharded) params used where they are; every process takes part, process 0 writes the PNG."""

  def __init__(self, c, vae, model, mesh):
    self.c = c
    self.labels, self.shown = sample_labels(c, model.config.num_classes, mesh.size)
    self.key = jax.random.PRNGKey(c.seed)
    options = sampler.SampleOptions(cfg=c.sample.cfg, top_k=c.sample.top_k, top_p=c.sample.top_p)
    self.sample = sampler.make_sampler(vae, model, options, mesh=mesh)

  def __call__(self, vae_params, params, step: int, workdir):
    images = self.sample(vae_params, params, self.key, self.labels).images
    images = multihost_utils.process_allgather(images, tiled=True)[:self.shown]
    if not runtime.is_primary():
      return None
    images = png.to_uint8(np.asarray(images), (0.0, 1.0))
    path = png.write_png(epath.Path(workdir) / f'samples_{step:06d}.png',
                         png.grid(images, cols=self.c.sample.per_class,
                                  zoom=max(1, 64 // images.shape[1])))
    print(f'wrote {path} (one row per class)', flush=True)
    return path


def export_model(directory, params, config):
  """The final params as a plain checkpoint (launch.sample / launch.evaluate read it), written by
  every process through the checkpoint library (no gather to one host); replaces an earlier export
  only once the new one is complete."""
  directory = epath.Path(directory)
  staging = directory.parent / (directory.name + '.tmp')
  if runtime.is_primary() and staging.exists():
    staging.rmtree()
  runtime.sync('export: staging cleared')
  checkpoint.save(staging, params, config)  # collective; ends with a barrier
  if runtime.is_primary():
    if directory.exists():
      directory.rmtree()
    staging.rename(directory)
    print(f'exported the final model to {directory}', flush=True)
  runtime.sync('export: in place')


def train(c, workdir, stop: runtime.Stop = None):
  """Runs (or resumes) the config's training in `workdir` on every process; `stop` (default: on
  SIGTERM only) ends early with a checkpoint. Returns (final state, last metrics), or
  (None, None) when it stopped while training the tokenizer."""
  stop = stop or runtime.Stop()
  process_count, process_index = jax.process_count(), jax.process_index()
  data_axis, fsdp_axis = check_run_config(c, jax.device_count(), process_count)
  workdir = writable.ensure_dir(workdir, 'workdir')  # before hours of compute, not at a save
  source = data_lib.open_source(c.data.name, 'train', c.data.data_dir)  # unknown names fail here
  data_lib.loader_options(c.data)  # bad worker / prefetch values fail here too
  t_start = time.perf_counter()
  mesh = sharding.make_mesh(data_axis, fsdp_axis)
  runtime.say(runtime.summary(mesh))

  # Tokenizer: given, or trained here first (digits demo).
  if c.tokenizer.ckpt:
    vae_cfg, vae_params = checkpoint.load(c.tokenizer.ckpt)
  else:
    vae_cfg, vae_params = tokenizer_loop.train_or_load(c, workdir / 'tokenizer', mesh, stop)
    if vae_params is None:  # stopped early (tokenizer_loop said so)
      return None, None
  vae = vqvae.VQVAE(vae_cfg)
  model = transformer.Transformer(run_config.transformer_config(c.model, vae_cfg))
  mcfg = model.config

  prog = progressive_schedule(c, len(mcfg.patch_nums))
  optimizer, peak_lr, lr_kind = make_optimizer(c, len(mcfg.patch_nums))
  replicate = sharding.IMPLICIT_MODULES if c.mesh.replicate_implicit else ()
  batch_shapes = (factory.image_shape(vae_cfg, c.optim.batch_size, jnp.uint8),  # as loaded
                  jax.ShapeDtypeStruct((c.optim.batch_size,), jnp.int32))
  compiled_steps, step_flops = {}, {}  # per stage: (model FLOPs, compiler FLOPs) of one step

  def compiled_step(stage):
    """The AOT-compiled train step of a progressive stage (one stage when not progressive)."""
    if stage not in compiled_steps:
      step_fn = train_step.sharded_train_step(
          model, vae, optimizer, mesh, replicate=replicate,
          label_smoothing=c.optim.label_smoothing, stage=stage if prog.enabled else None).step
      with jax.set_mesh(mesh):  # attention kernels (e.g. TPU splash) run per device of the mesh
        compiled, report = profiling.compile_with_report(step_fn, state_shapes, vae_params,
                                                         *batch_shapes)
      tokens = mcfg.scale_bounds[stage.num_scales - 1][1] if prog.enabled else mcfg.seq_len
      # VIAR's K and m vary per step; MFU over a logging window uses their means.
      step_flops[stage] = (mfu.model_flops_per_step(mcfg, state_shapes.params, c.optim.batch_size,
                                                    tokens, **mfu.mean_iters(mcfg)), report.flops)
      runtime.say(report.line(f'train step{f" ({stage.num_scales} scales)" if prog.enabled else ""}'))
      compiled_steps[stage] = compiled
    return compiled_steps[stage]

  sharded = train_step.sharded_train_step(model, vae, optimizer, mesh, replicate=replicate)
  # Host copies first: a loaded checkpoint sits on one local device, which another process cannot
  # read from; every process holds the same values.
  vae_params = jax.device_put(jax.device_get(vae_params), sharded.replicated)
  state_shapes = jax.eval_shape(sharded.create, jax.random.PRNGKey(0))
  runtime.say(f'{"VIAR" if mcfg.implicit else "VAR"}: C={mcfg.embed_dim} depth={mcfg.depth} '
              f'L={mcfg.seq_len}; peak lr {peak_lr:.3g} ({lr_kind}); global batch '
              f'{c.optim.batch_size} ({c.optim.batch_size // process_count} per process)')
  if prog.enabled:
    runtime.say(f'progressive training: scales {prog.first_stage + 1} -> {len(mcfg.patch_nums)} '
                f'over the first {prog.fraction:g} of the steps, newest-scale ramp '
                f'{prog.ramp_steps:g} steps')
  runtime.say(sharding.describe(state_shapes.params, sharding.tree_specs(
      state_shapes.params, mesh, replicate=replicate), mesh))

  loader = data_lib.make_loader(
      source, image_size=vae_cfg.image_size, global_batch_size=c.optim.batch_size, seed=c.seed,
      train=True, hflip=c.data.hflip, process_index=process_index, process_count=process_count,
      **data_lib.loader_options(c.data))
  data_iter = iter(loader)

  ckpt = run_io.RunCheckpointer(workdir, keep=c.ckpt_keep, keep_period=c.ckpt_keep_period)
  state = sharded.create(jax.random.PRNGKey(c.seed))
  start = ckpt.latest_step()
  if start is not None:
    state = ckpt.restore(start, state, data_iter)['state']
    runtime.say(f'resumed from step {start}')
  start = start or 0
  compiled_step(prog.stage(start))  # compile (and print memory) before the first batch
  grid = SampleGrid(c, vae, model, mesh) if c.sample_every else None

  log = run_io.MetricLog(workdir, c.optim.steps, c.optim.batch_size)
  meta = {'config': c.to_dict()}
  metrics, done = None, start
  skips = data_lib.SkipReport(loader.skip_stats)

  def last_finite():
    ckpt.wait()  # saves in flight hold finite states: let them land before naming the latest
    latest = ckpt.latest_step()
    if latest is None:
      return 'No checkpoint was saved yet; a rerun starts from scratch.'
    return (f'The latest checkpoint, step {latest} in {ckpt.directory}, is the last finite state; '
            'rerunning resumes from it (lower the learning rate or check the data if it recurs).')

  stopping = False
  try:
    for step in range(start, c.optim.steps):
      batch = next(data_iter)
      images = jax.make_array_from_process_local_data(sharded.batch_sharding,
                                                      np.asarray(batch['image']))
      labels = jax.make_array_from_process_local_data(sharded.batch_sharding,
                                                      np.asarray(batch['label'], np.int32))
      stage = prog.stage(step)
      state, metrics = compiled_step(stage)(state, vae_params, images, labels)
      done = step + 1
      stopping = stop.step_done() and done < c.optim.steps
      if done % c.log_every == 0 or done == c.optim.steps:
        run_io.check_finite(done, metrics, kept=last_finite)
        if prog.enabled:
          metrics = dict(metrics, prog_scales=stage.num_scales,
                         prog_weight=progressive.newest_scale_weight(stage, step))
        model_flops, compiler_flops = step_flops[stage]
        log.write(done, skips.add_to(metrics), model_flops=model_flops,
                  compiler_flops=compiler_flops)
      if done % c.ckpt_every == 0 or done == c.optim.steps or stopping:
        run_io.check_finite(done, metrics, kept=last_finite)  # never save a NaN / inf state
        ckpt.save(done, state, data_iter, meta, force=True)
      if grid and (done % c.sample_every == 0 or done == c.optim.steps):
        grid(vae_params, state.params, done, workdir)
      if stopping:
        runtime.say(f'stopping early ({stop.reason()}): saved step {done}')
        break
  finally:
    # Also on an error: finish the saves in flight (finite states) so they stay the latest good one.
    ckpt.close()
    log.close()
  skips.summary()
  if done == c.optim.steps:
    export_model(workdir / 'model', state.params, mcfg)
  runtime.say(f'done in {time.perf_counter() - t_start:.0f}s; workdir {workdir}')
  return state, metrics
