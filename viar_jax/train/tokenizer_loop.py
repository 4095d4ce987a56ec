"""Trains the multi-scale VQ-VAE tokenizer from a run config (launch.train_tokenizer, launch.train).

Losses: reconstruction L1/L2 + VQ/commitment, an optional VQGAN-style patch discriminator
(config.tokenizer.disc_weight > 0) and an optional LPIPS perceptual loss
(config.tokenizer.perceptual_weight > 0, user-supplied weights, images of >= 16 px). Uses
`config.tokenizer` (architecture under `vqvae`, steps, batch_size, lr, loss weights) and
`config.data`; writes a viar-jax checkpoint plus `reconstructions.png` (input rows above their
reconstructions) to the output directory.

Faults: an unwritable output directory fails before compiling. The loss, gradient norm and param
norm are checked for NaN / inf at every log step (a tenth of the steps, and the last one, which
precedes the only save): a bad value raises `run_io.NonFiniteError` naming the step and metric and
nothing is saved. Skipped unreadable images are counted in the log (`data_skipped`).
"""
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from viar_jax import data as data_lib
from viar_jax.eval import lpips
from viar_jax.io import checkpoint, png, run_config, writable
from viar_jax.models import discriminator, vqvae
from viar_jax.train import optim, run_io, tokenizer_step


def train_or_load(c, out_dir):
  """Loads `<out_dir>` if it holds a finished tokenizer, else trains one there. -> (config, params)."""
  out_dir = pathlib.Path(out_dir)
  if (out_dir / 'config.json').exists():
    print(f'using the tokenizer in {out_dir}', flush=True)
    return checkpoint.load(out_dir)
  return train(c, out_dir)


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


def train(c, out_dir):
  """Trains `config.tokenizer` on `config.data` into `out_dir`. -> (VQVAEConfig, params)."""
  cfg = run_config.vqvae_config(c.tokenizer.vqvae)
  t = c.tokenizer
  lpips_params = load_perceptual(t, cfg.image_size)  # first: a bad setup fails before compiling
  out_dir = writable.ensure_dir(out_dir, 'tokenizer output directory')
  perceptual_weight = t.get('perceptual_weight', 0.0)
  vae = vqvae.VQVAE(cfg)
  optimizer = optim.make_tokenizer_optimizer(lr=t.lr, steps=t.steps)
  use_gan = t.get('disc_weight', 0.0) > 0
  if use_gan:  # VQGAN-style patch discriminator (tokenizer_step.gan_train_step)
    disc = discriminator.PatchDiscriminator(ndf=t.disc_ndf, n_layers=t.disc_layers)
    disc_optimizer = optim.make_discriminator_optimizer(lr=t.disc_lr)
    state = jax.jit(lambda k: tokenizer_step.create_gan_state(
        vae, disc, optimizer, disc_optimizer, k))(jax.random.PRNGKey(c.seed))
    step_fn = jax.jit(lambda s, x, lp: tokenizer_step.gan_train_step(
        s, x, vae=vae, disc=disc, vae_optimizer=optimizer, disc_optimizer=disc_optimizer,
        l1_weight=t.l1_weight, l2_weight=t.l2_weight, disc_weight=t.disc_weight,
        disc_start_step=t.disc_start_step, perceptual_weight=perceptual_weight,
        lpips_params=lp), donate_argnums=(0,))
  else:
    state = jax.jit(lambda k: tokenizer_step.create_state(vae, optimizer, k))(
        jax.random.PRNGKey(c.seed))
    step_fn = jax.jit(lambda s, x, lp: tokenizer_step.train_step(
        s, x, vae=vae, optimizer=optimizer, l1_weight=t.l1_weight, l2_weight=t.l2_weight,
        perceptual_weight=perceptual_weight, lpips_params=lp), donate_argnums=(0,))
  source = data_lib.open_source(c.data.name, 'train', c.data.data_dir)
  loader = data_lib.make_loader(source, image_size=cfg.image_size, global_batch_size=t.batch_size,
                                seed=c.seed + 1, train=True, hflip=c.data.hflip,
                                process_index=jax.process_index(),
                                process_count=jax.process_count())
  it = iter(loader)
  log = run_io.MetricLog(out_dir, t.steps, t.batch_size, name='tokenizer')
  skips = data_lib.SkipReport(loader.skip_stats, 'tokenizer data')
  kept = (f'Nothing was saved to {out_dir} (the tokenizer is written once training ends); a rerun '
          'trains it again (lower config.tokenizer.lr or check the data if it recurs).')
  t0 = time.perf_counter()
  try:
    for step in range(t.steps):
      batch = next(it)
      # The LPIPS params (None when off) are an argument, not a closure: no 60 MB of constants.
      state, metrics = step_fn(state, jnp.asarray(batch['image']), lpips_params)
      # The last step is always checked: it is the state saved below.
      if (step + 1) % max(1, t.steps // 10) == 0 or step + 1 == t.steps:
        run_io.check_finite(step + 1, metrics, kept=kept)
        log.write(step + 1, skips.add_to(metrics))
  finally:
    log.close()
  skips.summary()
  params = jax.device_get(state.vae.params if use_gan else state.params)
  checkpoint.save(out_dir, params, cfg)
  images = jnp.asarray(next(it)['image'][:8])
  rec = vae.apply({'params': params}, images, method=vqvae.VQVAE.reconstruct)
  grid = png.grid(png.to_uint8(np.concatenate([np.asarray(images), np.asarray(rec)])), cols=8,
                  zoom=max(1, 64 // cfg.image_size))
  png.write_png(out_dir / 'reconstructions.png', grid)
  print(f'tokenizer trained in {time.perf_counter() - t0:.0f}s -> {out_dir}', flush=True)
  return cfg, params
