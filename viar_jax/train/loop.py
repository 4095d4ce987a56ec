"""One VAR / VIAR training run from a config (launch.train): tokenizer (given or trained first),
(data, fsdp) mesh, AOT-compiled train step per progressive stage, resume from the latest
checkpoint, metric log, sample grids, and a final plain `model/` checkpoint.

    state, metrics = loop.train(config, workdir)              # runs or resumes
    loop.train(config, workdir, stop_after=100)              # ends early with a checkpoint

A run resumes from the latest checkpoint in its workdir; SIGTERM saves and exits. Every config error
is raised before any compute (check_run_config), and an unwritable workdir right after.

Faults: the loss, gradient norm and param norm are checked for NaN / inf at every log step and right
before every save (periodic, final, early stop / SIGTERM): a bad value raises
`run_io.NonFiniteError` naming the step and metric, that state is never saved, and the latest
checkpoint (the last finite one) stays for a rerun to resume from. Between log steps nothing is
fetched from the device, so a fault is reported at the next log / save step. Images the data
pipeline could not read are skipped, counted and reported at log steps (`data_skipped`).
"""
import pathlib
import shutil
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from viar_jax import data as data_lib
from viar_jax import profiling
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
  if c.tokenizer.ckpt and not pathlib.Path(c.tokenizer.ckpt, 'config.json').exists():
    raise FileNotFoundError(f'tokenizer checkpoint {c.tokenizer.ckpt} not found (config.json missing)')
  vae_cfg = tokenizer_config(c)
  model_cfg = run_config.transformer_config(c.model, vae_cfg)  # validates the model section
  if model_cfg.dtype == 'float16':
    raise ValueError("model.dtype='float16' needs loss scaling, which training does not do; use "
                     "'bfloat16' (the supported half precision) or 'float32'")
  if c.optim.get('mu_dtype', 'float32') not in ('float32', 'bfloat16'):
    raise ValueError(f"optim.mu_dtype must be 'float32' or 'bfloat16', got {c.optim.mu_dtype!r}")
  progressive_schedule(c, len(vae_cfg.patch_nums))  # validates pg / pg0
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


def sample_grid(vae, vae_params, model, params, c, step, workdir):
  n = model.config.num_classes
  labels = jnp.repeat(jnp.arange(n, dtype=jnp.int32), c.sample.per_class)
  options = sampler.SampleOptions(cfg=c.sample.cfg, top_k=c.sample.top_k, top_p=c.sample.top_p)
  out = sampler.make_sampler(vae, model, options)(vae_params, jax.device_get(params),
                                                   jax.random.PRNGKey(c.seed), labels)
  images = png.to_uint8(np.asarray(out.images), (0.0, 1.0))
  path = png.write_png(pathlib.Path(workdir) / f'samples_{step:06d}.png',
                       png.grid(images, cols=c.sample.per_class, zoom=max(1, 64 // images.shape[1])))
  print(f'wrote {path} (one row per class)', flush=True)
  return path


def export_model(directory: pathlib.Path, params, config):
  """The final params as a plain checkpoint (launch.sample / launch.evaluate read it); replaces an
  earlier export only once the new one is complete."""
  if jax.process_count() > 1:
    params = multihost_utils.process_allgather(params)  # global arrays; every process takes part
  params = jax.device_get(params)
  if jax.process_index() != 0:
    return
  staging = directory.with_name(directory.name + '.tmp')
  shutil.rmtree(staging, ignore_errors=True)
  checkpoint.save(staging, params, config)
  shutil.rmtree(directory, ignore_errors=True)
  staging.rename(directory)
  print(f'exported the final model to {directory}', flush=True)


def train(c, workdir: str, stop_after: int = None):
  """Runs (or resumes) the config's training in `workdir`; `stop_after` steps ends early with a
  checkpoint, like a preemption. Returns (final state, last metrics)."""
  process_count, process_index = jax.process_count(), jax.process_index()
  data_axis, fsdp_axis = check_run_config(c, jax.device_count(), process_count)
  workdir = writable.ensure_dir(workdir, 'workdir')  # before hours of compute, not at a save
  source = data_lib.open_source(c.data.name, 'train', c.data.data_dir)  # unknown names fail here
  t_start = time.perf_counter()

  # Tokenizer: given, or trained here first (digits demo).
  if c.tokenizer.ckpt:
    vae_cfg, vae_params = checkpoint.load(c.tokenizer.ckpt)
  else:
    vae_cfg, vae_params = tokenizer_loop.train_or_load(c, workdir / 'tokenizer')
  vae = vqvae.VQVAE(vae_cfg)
  model = transformer.Transformer(run_config.transformer_config(c.model, vae_cfg))
  mcfg = model.config

  mesh = sharding.make_mesh(data_axis, fsdp_axis)
  prog = progressive_schedule(c, len(mcfg.patch_nums))
  lr_kind = f'lin{prog.fraction:g}' if prog.enabled else c.optim.schedule  # as the reference
  peak_lr = optim.peak_lr_from_tblr(c.optim.tblr, c.optim.batch_size)
  optimizer = optim.make_optimizer(
      peak_lr=peak_lr, total_steps=c.optim.steps, warmup_steps=c.optim.warmup_steps,
      wpe=c.optim.wpe, schedule=lr_kind, twd=c.optim.twd, twde=c.optim.twde,
      clip_norm=c.optim.clip_norm, mu_dtype=jnp.dtype(c.optim.get('mu_dtype', 'float32')))
  replicate = sharding.IMPLICIT_MODULES if c.mesh.replicate_implicit else ()
  batch_shapes = (factory.image_shape(vae_cfg, c.optim.batch_size),
                  jax.ShapeDtypeStruct((c.optim.batch_size,), jnp.int32))
  compiled_steps, step_flops = {}, {}  # per stage: (model FLOPs, compiler FLOPs) of one step
  # VIAR's K and m vary per step; MFU over a logging window uses their means.
  expected_iters = dict(no_grad_iters=np.mean(mcfg.no_grad_iters_range),
                        with_grad_iters=np.mean(mcfg.with_grad_iters_range)) if mcfg.implicit else {}

  def compiled_step(stage):
    """The AOT-compiled train step of a progressive stage (one stage when not progressive)."""
    if stage not in compiled_steps:
      step_fn = train_step.sharded_train_step(
          model, vae, optimizer, mesh, replicate=replicate,
          label_smoothing=c.optim.label_smoothing, stage=stage if prog.enabled else None).step
      compiled, report = profiling.compile_with_report(step_fn, state_shapes, vae_params,
                                                       *batch_shapes)
      tokens = mcfg.scale_bounds[stage.num_scales - 1][1] if prog.enabled else mcfg.seq_len
      step_flops[stage] = (mfu.model_flops_per_step(mcfg, state_shapes.params, c.optim.batch_size,
                                                    tokens, **expected_iters), report.flops)
      print(report.line(f'train step{f" ({stage.num_scales} scales)" if prog.enabled else ""}'),
            flush=True)
      compiled_steps[stage] = compiled
    return compiled_steps[stage]

  sharded = train_step.sharded_train_step(model, vae, optimizer, mesh, replicate=replicate)
  create, state_sharding, batch_sharding = sharded.create, sharded.state_sharding, sharded.batch_sharding
  vae_params = jax.device_put(vae_params, sharded.replicated)
  state_shapes = jax.eval_shape(create, jax.random.PRNGKey(0))
  print(f'{"VIAR" if mcfg.implicit else "VAR"}: C={mcfg.embed_dim} depth={mcfg.depth} '
        f'L={mcfg.seq_len}; peak lr {peak_lr:.3g} ({lr_kind}); mesh data={data_axis} '
        f'fsdp={fsdp_axis} on {jax.device_count()} {jax.default_backend()} devices, '
        f'{process_count} process(es)')
  if prog.enabled:
    print(f'progressive training: scales {prog.first_stage + 1} -> {len(mcfg.patch_nums)} over '
          f'the first {prog.fraction:g} of the steps, newest-scale ramp {prog.ramp_steps:g} steps')
  print(sharding.describe(state_shapes.params, sharding.tree_specs(
      state_shapes.params, mesh, replicate=replicate), mesh), flush=True)

  loader = data_lib.make_loader(
      source, image_size=vae_cfg.image_size, global_batch_size=c.optim.batch_size, seed=c.seed,
      train=True, hflip=c.data.hflip, process_index=process_index, process_count=process_count)
  data_iter = iter(loader)

  ckpt = run_io.RunCheckpointer(workdir, keep=c.ckpt_keep, keep_period=c.ckpt_keep_period)
  state = create(jax.random.PRNGKey(c.seed))
  start = ckpt.latest_step()
  if start is not None:
    restored = ckpt.restore(start, state)
    state = jax.device_put(restored['state'], state_sharding)
    if restored['data'].get('grain'):
      data_lib.restore_loader(data_iter, restored['data']['grain'].encode())
    print(f'resumed from step {start}', flush=True)
  start = start or 0
  compiled_step(prog.stage(start))  # compile (and print memory) before the first batch

  stop = {'now': False}
  signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
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

  try:
    for step in range(start, c.optim.steps):
      batch = next(data_iter)
      images = jax.make_array_from_process_local_data(batch_sharding, np.asarray(batch['image']))
      labels = jax.make_array_from_process_local_data(batch_sharding,
                                                      np.asarray(batch['label'], np.int32))
      stage = prog.stage(step)
      state, metrics = compiled_step(stage)(state, vae_params, images, labels)
      done = step + 1
      if stop_after is not None and done - start >= stop_after:
        stop['now'] = True
      if done % c.log_every == 0 or done == c.optim.steps:
        run_io.check_finite(done, metrics, kept=last_finite)
        if prog.enabled:
          metrics = dict(metrics, prog_scales=stage.num_scales,
                         prog_weight=progressive.newest_scale_weight(stage, step))
        model_flops, compiler_flops = step_flops[stage]
        log.write(done, skips.add_to(metrics), model_flops=model_flops,
                  compiler_flops=compiler_flops)
      if done % c.ckpt_every == 0 or done == c.optim.steps or stop['now']:
        run_io.check_finite(done, metrics, kept=last_finite)  # never save a NaN / inf state
        ckpt.save(done, state, {'grain': data_lib.loader_state(data_iter).decode()}, meta,
                  force=True)
      if c.sample_every and (done % c.sample_every == 0 or done == c.optim.steps) and \
          process_index == 0:
        sample_grid(vae, vae_params, model, state.params, c, done, workdir)
      if stop['now']:
        print(f'stopping early: saved step {done}', flush=True)
        break
  finally:
    # Also on an error: finish the saves in flight (finite states) so they stay the latest good one.
    ckpt.close()
    log.close()
  skips.summary()
  if done == c.optim.steps:
    export_model(workdir / 'model', state.params, mcfg)
  print(f'done in {time.perf_counter() - t_start:.0f}s; workdir {workdir}', flush=True)
  return state, metrics
