"""The same training steps on 1 device and on a data=4 x fsdp=2 mesh of 8 CPU devices agree."""
import jax
import jax.numpy as jnp
import numpy as np

from viar_jax import optim, sharding, trainer, transformer, vqvae


def test_one_device_and_eight_devices_give_the_same_losses():
  assert jax.device_count() == 8, 'tests/conftest.py sets 8 simulated CPU devices'
  vae_cfg = vqvae.VQVAEConfig(vocab_size=32, z_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                              image_size=8, patch_nums=(1, 2, 4))
  vae = vqvae.VQVAE(vae_cfg)
  vae_params = jax.jit(vae.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))['params']
  model = transformer.Transformer(transformer.TransformerConfig(
      depth=4, embed_dim=128, num_heads=2, num_classes=4, patch_nums=vae_cfg.patch_nums,
      vocab_size=32, z_channels=4, implicit=True, pre_depth=1, post_depth=1,
      no_grad_iters_range=(0, 3), with_grad_iters_range=(1, 2), drop_path_rate=0.1))
  optimizer = optim.make_optimizer(peak_lr=1e-3, total_steps=10, warmup_steps=1)
  images = jax.random.uniform(jax.random.PRNGKey(1), (3, 8, 8, 8, 3), minval=-1, maxval=1)
  labels = jax.random.randint(jax.random.PRNGKey(2), (3, 8), 0, 5)  # includes the null class 4

  def run(mesh, replicate):
    step, create, _, batch_sharding = trainer.sharded_train_step(model, vae, vae_params, optimizer,
                                                                 mesh, replicate=replicate)
    state, losses = create(jax.random.PRNGKey(3)), []
    for i in range(3):
      x, y = (jax.device_put(a[i], batch_sharding) for a in (images, labels))
      state, metrics = step(state, x, y)
      losses.append(float(metrics['loss']))
    return losses, jax.device_get(state.params)

  single, p1 = run(sharding.make_mesh(1, 1, devices=jax.devices()[:1]), ())
  multi, p8 = run(sharding.make_mesh(4, 2), sharding.IMPLICIT_MODULES)
  np.testing.assert_allclose(multi, single, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), p8, p1)
