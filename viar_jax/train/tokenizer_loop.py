"""Trains the multi-scale VQ-VAE tokenizer from a run config (launch.train_tokenizer, launch.train).

Losses: reconstruction L1/L2 + VQ/commitment, an optional VQGAN-style patch discriminator
(config.tokenizer.disc_weight > 0) and an optional LPIPS perceptual loss
(config.tokenizer.perceptual_weight > 0, user-supplied weights, images of >= 16 px). Uses
`config.tokenizer` (architecture under `vqvae`, steps, batch_size, lr, loss weights) and
`config.data` (`augment=False` trains on the exact pixels of datasets stored at the model's
resolution, as the digits are). Training-side options (all leave the VQ-VAE architecture as it is; see
tokenizer_step and configs/digits.py):
  codebook     usage window, k-means codebook init, dead-code restarts (`CodebookOptions`);
               usage_s<k> / perplexity_s<k> per scale are logged
  quant_ramp   (start, end): the decoder sees the unquantized latent first, then the codes
  vq_weight    weight of the VQ loss
  grayscale    tie the decoder's output channels: grey data decodes to grey images, exactly
Writes a viar-jax checkpoint, `reconstructions.png` (real images over their reconstructions from
every scale prefix) and `reconstruction_metrics.json` (viar_jax.eval.tokenizer_quality: on the
digits, digits-FID and class accuracy of reconstructed train digits, usage per scale) to the output
directory.

Runs as the transformer's training does (viar_jax.train.loop): on every process, data parallel over
a mesh of all devices (the state replicated, each process reading its rows of the same global
batches), resumable training checkpoints in `<out_dir>/checkpoints` every `config.ckpt_every` steps
(each process its own data position), SIGTERM / `stop` saving the same step on every process,
metrics and console lines from process 0, and the final checkpoint written by every process.

Faults: an unwritable output directory fails before compiling. The loss, gradient norm and param
norm are checked for NaN / inf at every log step (a tenth of the steps, and the last one) and before
every save: a bad value raises `run_io.NonFiniteError` naming the step and metric and that state is
not saved. Skipped unreadable images are counted in the log (`data_skipped`).
"""
import dataclasses
import functools
import time

import jax
import numpy as np
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec as P

from viar_jax import data as data_lib
from viar_jax import runtime
from viar_jax.eval import lpips, tokenizer_quality
from viar_jax.io import checkpoint, run_config, writable
from viar_jax.models import discriminator, vqvae
from viar_jax.train import optim, run_io, sharding, tokenizer_step


def train_or_load(c, out_dir, mesh=None, stop: runtime.Stop = None):
  """Loads `<out_dir>` if it holds a finished tokenizer, else trains (or resumes) one there.
  -> (config, params), params None when `stop` ended training early."""
  out_dir = epath.Path(out_dir)
  if (out_dir / 'config.json').exists():
    runtime.say(f'using the tokenizer in {out_dir}')
    return checkpoint.load(out_dir)
  return train(c, out_dir, mesh, stop)


def load_perceptual(t, image_size: int):
  """LPIPS params when t.perceptual_weight > 0, else None; raises on a bad setup before any compute."""
  weight = t.get('perceptual_weight', 0.0)
  if weight < 0:
    raise ValueError(f'config.tokenizer.perceptual_weight must be >= 0, got {weight}')
  if weight == 0:
    return None
  if not t.get('lpips_lin', ''):
    raise ValueError(
        f'config.tokenizer.perceptual_weight={weight} needs the LPIPS weights, which are never '
        f'downloaded: set config.tokenizer.lpips_vgg to {lpips.VGG_SOURCE} and '
        f'config.tokenizer.lpips_lin to {lpips.LIN_SOURCE}')
  lpips.check_image_size(image_size, image_size)
  return lpips.load_params(t.get('lpips_vgg', ''), t.lpips_lin)


def train(c, out_dir, mesh=None, stop: runtime.Stop = None):
  """Trains `config.tokenizer` on `config.data` into `out_dir` (resuming from its checkpoints).
  -> (VQVAEConfig, params); params None when `stop` (default: SIGTERM) ended training early."""
  cfg = run_config.vqvae_config(c.tokenizer.vqvae)
  t = c.tokenizer
  if t.batch_size % jax.device_count():
    raise ValueError(f'config.tokenizer.batch_size={t.batch_size} is not divisible by the '
                     f'{jax.device_count()} devices')
  lpips_params = load_perceptual(t, cfg.image_size)  # first: a bad setup fails before compiling
  out_dir = writable.ensure_dir(out_dir, 'tokenizer output directory')
  stop = stop or runtime.Stop()
  mesh = mesh or sharding.make_mesh(jax.device_count(), 1)
  replicated, batch_sharding = NamedSharding(mesh, P()), sharding.batch_sharding(mesh)
  perceptual_weight = t.get('perceptual_weight', 0.0)
  vae = vqvae.VQVAE(cfg)
  optimizer = optim.make_tokenizer_optimizer(lr=t.lr, steps=t.steps)
  use_gan = t.get('disc_weight', 0.0) > 0
  tie = bool(t.get('grayscale', False))  # grey data: decoder output channels tied (see the config)
  codebook = codebook_options(t)
  if use_gan:  # VQGAN-style patch discriminator (tokenizer_step.gan_train_step)
    disc = discriminator.PatchDiscriminator(ndf=t.disc_ndf, n_layers=t.disc_layers)
    disc_optimizer = optim.make_discriminator_optimizer(lr=t.disc_lr)
    create_model = lambda k: tokenizer_step.create_gan_state(vae, disc, optimizer, disc_optimizer,
                                                             k, tie)
    model_step = functools.partial(
        tokenizer_step.gan_train_step, vae=vae, disc=disc, vae_optimizer=optimizer,
        disc_optimizer=disc_optimizer, l1_weight=t.l1_weight, l2_weight=t.l2_weight,
        disc_weight=t.disc_weight, disc_start_step=t.disc_start_step,
        perceptual_weight=perceptual_weight, tie_channels=tie,
        vq_weight=t.get('vq_weight', 1.0), quant_ramp=quant_ramp(t))
  else:
    create_model = lambda k: tokenizer_step.create_state(vae, optimizer, k, tie)
    model_step = functools.partial(
        tokenizer_step.train_step, vae=vae, optimizer=optimizer, l1_weight=t.l1_weight,
        l2_weight=t.l2_weight, perceptual_weight=perceptual_weight, tie_channels=tie,
        vq_weight=t.get('vq_weight', 1.0), quant_ramp=quant_ramp(t))
  # The codebook bookkeeping (usage window, k-means init, dead-code restarts) wraps either step.
  create = lambda k: tokenizer_step.TokenizerState(
      model=create_model(k), codes=tokenizer_step.init_codebook_state(vae, codebook))
  step = lambda s, x, lp: tokenizer_step.codebook_train_step(
      s, x, vae=vae, step_fn=model_step, options=codebook, lpips_params=lp)
  # Data parallel: the (small) state replicated, the batch over every device. The LPIPS params
  # (None when off) are an argument, not a closure: no 60 MB of constants.
  state = jax.jit(create, out_shardings=replicated)(jax.random.PRNGKey(c.seed))
  step_fn = jax.jit(step, in_shardings=(replicated, batch_sharding, replicated),
                    out_shardings=(replicated, replicated), donate_argnums=(0,))
  lpips_params = jax.device_put(lpips_params, replicated)
  source = data_lib.open_source(c.data.name, 'train', c.data.data_dir)
  loader = data_lib.make_loader(source, image_size=cfg.image_size, global_batch_size=t.batch_size,
                                seed=c.seed + 1, train=True, hflip=c.data.hflip,
                                process_index=jax.process_index(),
                                process_count=jax.process_count(),
                                **data_lib.loader_options(c.data))
  it = iter(loader)
  ckpt = run_io.RunCheckpointer(out_dir, keep=1)
  start = ckpt.latest_step() or 0
  if start:
    state = ckpt.restore(start, state, it)['state']
    runtime.say(f'tokenizer: resumed from step {start}')
  log = run_io.MetricLog(out_dir, t.steps, t.batch_size, name='tokenizer')
  skips = data_lib.SkipReport(loader.skip_stats, 'tokenizer data')
  kept = (f'The latest tokenizer checkpoint in {ckpt.directory} (if any) is the last finite state; '
          'a rerun resumes from it (lower config.tokenizer.lr or check the data if it recurs).')
  t0 = time.perf_counter()
  try:
    for i in range(start, t.steps):
      images = jax.make_array_from_process_local_data(batch_sharding, np.asarray(next(it)['image']))
      state, metrics = step_fn(state, images, lpips_params)
      done = i + 1
      stopping = stop.step_done() and done < t.steps
      if done % max(1, t.steps // 10) == 0 or done == t.steps:
        run_io.check_finite(done, metrics, kept=kept)
        log.write(done, skips.add_to(metrics))
      if stopping or (done % c.ckpt_every == 0 and done < t.steps):
        run_io.check_finite(done, metrics, kept=kept)
        ckpt.save(done, state, it, force=True)
      if stopping:
        runtime.say(f'tokenizer: stopping early ({stop.reason()}): saved step {done}')
        return cfg, None
  finally:
    ckpt.close()
    log.close()
  skips.summary()
  params = tokenizer_step.model_train_state(state).params
  train_s = time.perf_counter() - t0
  checkpoint.save(out_dir, params, cfg)  # every process; the training checkpoints stay for reference
  if runtime.is_primary():
    write_reconstructions(c, vae, jax.device_get(params), next(it)['image'], out_dir)
  runtime.say(f'tokenizer trained in {train_s:.0f}s -> {out_dir}')
  return cfg, params


def quant_ramp(t):
  """config.tokenizer.quant_ramp (start, end) steps, or None (absent / empty: no warm-up)."""
  ramp = t.get('quant_ramp', None)
  if not ramp:
    return None
  if len(ramp) != 2 or not 0 <= int(ramp[0]) <= int(ramp[1]):
    raise ValueError(f'config.tokenizer.quant_ramp must be (start, end) steps with 0 <= start <= '
                     f'end, got {tuple(ramp)}')
  return int(ramp[0]), int(ramp[1])


def codebook_options(t) -> tokenizer_step.CodebookOptions:
  """`config.tokenizer.codebook` (a dict, absent: all off) as `tokenizer_step.CodebookOptions`."""
  options = t.get('codebook', None) or {}
  options = options.to_dict() if hasattr(options, 'to_dict') else dict(options)
  unknown = set(options) - {f.name for f in dataclasses.fields(tokenizer_step.CodebookOptions)}
  if unknown:
    raise ValueError(f'config.tokenizer.codebook: unknown keys {sorted(unknown)}')
  return tokenizer_step.CodebookOptions(**options)


def write_reconstructions(c, vae, params, images, out_dir):
  """`reconstructions.png` (real images over their reconstructions from every scale prefix) and
  `reconstruction_metrics.json` (`viar_jax.eval.tokenizer_quality`). On the 8x8 digits with
  config.tokenizer.eval_digits: the digits protocol (1000 train digits: digits-FID vs the test
  split, class accuracy, usage per scale); otherwise usage and pixel error on `images` (a batch)."""
  t = c.tokenizer
  digits = (c.data.name == 'digits' and vae.config.image_size == 8
            and t.get('eval_digits', True))
  t0 = time.perf_counter()
  m = tokenizer_quality.evaluate(vae, params, out_dir, images=None if digits else images,
                                 data_dir=c.data.data_dir if digits else None)
  runtime.say(f'tokenizer {tokenizer_quality.summary(m)} ({time.perf_counter() - t0:.0f}s) '
              f'-> {out_dir / tokenizer_quality.METRICS_FILE}')
  return m
