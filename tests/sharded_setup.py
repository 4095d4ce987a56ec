"""A tiny VIAR training setup shared by the 1-device, 8-device and 2-process tests."""
import jax
import numpy as np

from viar_jax.models import factory, transformer, vqvae
from viar_jax.train import optim, sharding, train_step

STEPS, BATCH = 3, 8


def run_steps(data: int, fsdp: int, devices=None, replicate=(), process_slice=None):
  """Trains 3 steps on a (data, fsdp) mesh; each process feeds its slice of the global batch.
  Returns the losses (and, single-process, the final params)."""
  vae_cfg = vqvae.VQVAEConfig(vocab_size=32, z_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                              image_size=8, patch_nums=(1, 2, 4))
  vae, vae_params = vqvae.VQVAE(vae_cfg), factory.random_params(vae_cfg)
  model = transformer.Transformer(transformer.TransformerConfig(
      depth=4, embed_dim=128, num_heads=2, num_classes=4, patch_nums=vae_cfg.patch_nums,
      vocab_size=32, z_channels=4, implicit=True, pre_depth=1, post_depth=1,
      no_grad_iters_range=(0, 3), with_grad_iters_range=(1, 2), drop_path_rate=0.1))
  optimizer = optim.make_optimizer(peak_lr=1e-3, total_steps=10, warmup_steps=1)
  rng = np.random.default_rng(1)
  images = rng.uniform(-1, 1, (STEPS, BATCH, 8, 8, 3)).astype(np.float32)
  labels = rng.integers(0, 5, (STEPS, BATCH)).astype(np.int32)  # includes the null class 4

  mesh = sharding.make_mesh(data, fsdp, devices=devices)
  sharded = train_step.sharded_train_step(model, vae, optimizer, mesh, replicate=replicate)
  batch_sharding = sharded.batch_sharding
  vae_params = jax.device_put(vae_params, sharded.replicated)
  state, losses = sharded.create(jax.random.PRNGKey(3)), []
  for i in range(STEPS):
    x, y = images[i], labels[i]
    if process_slice is not None:  # this process's rows of the global batch
      index, count = process_slice
      rows = slice(index * BATCH // count, (index + 1) * BATCH // count)
      x, y = x[rows], y[rows]
    x = jax.make_array_from_process_local_data(batch_sharding, x)
    y = jax.make_array_from_process_local_data(batch_sharding, y)
    state, metrics = sharded.step(state, vae_params, x, y)
    losses.append(float(metrics['loss']))
  if process_slice is not None:
    return losses
  return losses, jax.device_get(state.params)
