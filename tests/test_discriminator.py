"""Patch discriminator, hinge losses and the VQGAN-style tokenizer step (`gan_train_step`)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from viar_jax.models import discriminator, vqvae
from viar_jax.train import tokenizer_step

VAE = vqvae.VQVAEConfig(vocab_size=32, z_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                        image_size=16, patch_nums=(1, 2, 4, 8))
DISC_START = 2


def _logits_shape(size, n_layers, ndf=16):
  disc = discriminator.PatchDiscriminator(ndf=ndf, n_layers=n_layers)
  x = jnp.zeros((2, size, size, 3))
  return jax.eval_shape(lambda: disc.init_with_output(jax.random.PRNGKey(0), x)[0]).shape


def test_logits_map_shapes():
  # side // 2^n_layers - 2 (4x4 convs, padding 1: stride 2 halves, stride 1 takes one off).
  assert _logits_shape(16, 2) == (2, 2, 2, 1)
  assert _logits_shape(32, 2) == (2, 6, 6, 1)
  assert _logits_shape(32, 3, ndf=64) == (2, 2, 2, 1)
  assert _logits_shape(8, 1) == (2, 2, 2, 1)  # the digits tokenizer's 8px images
  assert discriminator.patch_grid_size(256, 3) == 30  # pix2pix's 30x30 map on 256px


def test_too_small_image_raises():
  with pytest.raises(ValueError, match='n_layers <= 2'):
    _logits_shape(16, 3)
  with pytest.raises(ValueError, match='too small'):
    _logits_shape(8, 2)


def test_hinge_losses_on_known_values():
  real = jnp.array([2.0, 0.5, -1.0])  # relu(1 - real) = 0, 0.5, 2
  fake = jnp.array([-2.0, 0.0, 1.0])  # relu(1 + fake) = 0, 1, 2
  np.testing.assert_allclose(discriminator.hinge_d_loss(real, fake), 2.5 / 3 + 1.0, rtol=1e-6)
  np.testing.assert_allclose(discriminator.hinge_d_loss(jnp.full(4, 1.0), jnp.full(4, -1.0)), 0.0)
  np.testing.assert_allclose(discriminator.generator_adv_loss(jnp.array([1.0, 2.0, 3.0])), -2.0)


@pytest.fixture(scope='module')
def gan():
  vae = vqvae.VQVAE(VAE)
  disc = discriminator.PatchDiscriminator(ndf=16, n_layers=2)
  vae_opt, disc_opt = optax.adam(2e-3), optax.adam(5e-4, b1=0.5, b2=0.9)
  # An 'rbg' key: XLA:CPU compiles threefry-based inits about 3x slower (8.6 s vs 22 s here).
  state = jax.jit(lambda k: tokenizer_step.create_gan_state(vae, disc, vae_opt, disc_opt, k))(
      jax.random.key(0, impl='rbg'))
  x = jnp.linspace(-1, 1, 16)
  images = jnp.stack([jnp.sin(3 * (i + 1) * x[:, None] + x[None, :])[..., None].repeat(3, -1)
                      for i in range(4)])  # smooth patterns
  step = jax.jit(functools.partial(
      tokenizer_step.gan_train_step, vae=vae, disc=disc, vae_optimizer=vae_opt,
      disc_optimizer=disc_opt, l1_weight=1.0, l2_weight=1.0, disc_weight=0.1,
      disc_start_step=DISC_START))
  return vae, disc, vae_opt, state, images, step


def _changed(a, b) -> bool:
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_gan_step_is_gated_by_the_start_step(gan):
  _, _, _, state, images, step = gan
  history = []
  for i in range(DISC_START + 4):
    new, m = step(state, images)
    history.append(m)
    lam = float(m['adaptive_weight'])
    assert np.isfinite(lam) and lam >= 0, (i, lam)
    assert all(np.isfinite(float(v)) for v in m.values()), (i, m)
    if i < DISC_START:
      assert float(m['disc_on']) == 0 and float(m['adv_term']) == 0
      assert not _changed(new.disc_params, state.disc_params)
      assert not _changed(new.disc_opt_state, state.disc_opt_state)
      # Off, the objective is the plain step's (comparing with `train_step` itself would add a
      # ~17 s compile; the last-layer test below checks the step's gradients against jax.grad).
      np.testing.assert_allclose(m['loss'], m['l1'] + m['l2'] + m['vq'], rtol=1e-6)
    else:
      assert float(m['disc_on']) == 1 and float(m['adv_term']) != 0
      assert _changed(new.disc_params, state.disc_params)
    assert _changed(new.vae.params, state.vae.params)
    state = new
  assert int(state.vae.step) == DISC_START + 4


def test_adaptive_weight_matches_grads_on_the_last_layer(gan):
  """λ from the step's pulled-back cotangents = λ from jax.grad w.r.t. the conv_out kernel alone."""
  vae, disc, _, state, images, step = gan
  params = state.vae.params

  def losses(kernel):
    p = {**params, 'decoder': {**params['decoder'], 'conv_out': {
        **params['decoder']['conv_out'], 'kernel': kernel}}}
    rec = vae.apply({'params': p}, images)[0]
    recon = jnp.mean(jnp.abs(rec - images)) + jnp.mean(jnp.square(rec - images))
    adv = discriminator.generator_adv_loss(disc.apply({'params': state.disc_params}, rec))
    return recon, adv

  kernel = params['decoder']['conv_out']['kernel']
  g_rec, g_adv = jax.jit(jax.jacrev(losses))(kernel)
  want = jnp.linalg.norm(g_rec) / (jnp.linalg.norm(g_adv) + 1e-4)
  _, m = step(state, images)
  np.testing.assert_allclose(m['adaptive_weight'], want, rtol=1e-4)


def test_discriminator_learns_a_fixed_batch(gan):
  _, _, _, state, images, step = gan
  d_losses = []
  for _ in range(DISC_START + 12):
    state, m = step(state, images)
    d_losses.append(float(m['d_loss']))
  assert np.all(np.isfinite(d_losses))
  # Measured: 2.00 at the start -> 1.19 twelve steps later (not monotone: the generator adapts too).
  on = d_losses[DISC_START:]
  assert np.mean(on[-3:]) < 0.8 * on[0], d_losses
