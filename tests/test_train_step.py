"""Train step: learns, is deterministic per key, and tokenizer training runs."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from viar_jax.models import factory, transformer, vqvae
from viar_jax.train import tokenizer_step, train_step

VAE = vqvae.VQVAEConfig(vocab_size=32, z_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                        image_size=8, patch_nums=(1, 2, 4))


@pytest.fixture(scope='module')
def setup():
  vae, vae_params = vqvae.VQVAE(VAE), factory.random_params(VAE)  # a frozen tokenizer
  cfg = transformer.TransformerConfig(depth=4, embed_dim=64, num_heads=1, num_classes=4,
                                      patch_nums=VAE.patch_nums, vocab_size=32, z_channels=4,
                                      implicit=True, pre_depth=1, post_depth=1,
                                      no_grad_iters_range=(0, 2), with_grad_iters_range=(1, 2),
                                      aln_gamma_init=1e-2)
  model = transformer.Transformer(cfg)
  images = jax.random.uniform(jax.random.PRNGKey(1), (8, 8, 8, 3), minval=-1, maxval=1)
  labels = jnp.arange(8, dtype=jnp.int32) % 4
  return vae, vae_params, model, images, labels


def test_train_step_learns_a_fixed_batch_and_is_deterministic(setup):
  vae, vae_params, model, images, labels = setup
  optimizer = optax.adamw(3e-3, b1=0.9, b2=0.95)
  step = jax.jit(functools.partial(train_step.train_step, model=model, vae=vae, vae_params=vae_params,
                                   optimizer=optimizer))
  create = jax.jit(lambda key: train_step.create_train_state(model, optimizer, key))
  state = initial = create(jax.random.PRNGKey(2))
  losses = []
  for _ in range(25):
    state, metrics = step(state, images, labels)
    losses.append(float(metrics['loss']))
  assert int(state.step) == 25
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
  # Same key, same batch -> same numbers; the step's randomness moves with the step counter.
  jax.tree.map(np.testing.assert_array_equal, create(jax.random.PRNGKey(2)), initial)
  _, m1 = step(initial, images, labels)
  assert float(m1['loss']) == losses[0]
  eval_metrics = jax.jit(functools.partial(train_step.eval_step, model=model, vae=vae,
                                           vae_params=vae_params))(state.params, images, labels)
  # Measured: token accuracy 0.006 -> 0.36 (the most frequent token is 0.19 of this batch's
  # targets), last-scale CE 3.46 (log 32, chance) -> 1.87.
  assert float(eval_metrics['acc']) > 0.25, eval_metrics
  assert float(eval_metrics['ce_last']) < 0.7 * np.log(model.config.vocab_size), eval_metrics


def test_label_smoothing_changes_only_the_objective():
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7))
  gt = jnp.array([[0, 1, 2, 3, 4], [6, 5, 4, 3, 2]])
  plain = train_step.token_metrics(logits, gt, 2)
  smooth = train_step.token_metrics(logits, gt, 2, label_smoothing=0.1)
  assert float(plain['ce']) == float(smooth['ce']) == float(plain['loss'])
  logp = jax.nn.log_softmax(logits)
  want = jnp.mean(0.9 * -jnp.take_along_axis(logp, gt[..., None], -1)[..., 0] - 0.1 * logp.mean(-1))
  np.testing.assert_allclose(smooth['loss'], want, rtol=1e-6)


def test_tokenizer_training_reduces_the_reconstruction_error():
  vae = vqvae.VQVAE(VAE)
  optimizer = optax.adam(2e-3)
  state = tokenizer_step.create_state(vae, optimizer, jax.random.PRNGKey(0))
  x = jnp.linspace(-1, 1, 8)
  images = jnp.stack([jnp.sin(3 * (i + 1) * x[:, None] + x[None, :])[..., None].repeat(3, -1)
                      for i in range(8)])  # smooth patterns
  step = jax.jit(functools.partial(tokenizer_step.train_step, vae=vae, optimizer=optimizer))
  l2 = []
  for _ in range(30):
    state, metrics = step(state, images)
    l2.append(float(metrics['l2']))
  # Measured: l2 0.81 -> 0.01 in 40 steps while the VQ term first rises as the latents grow.
  assert l2[-1] < 0.2 * l2[0], l2
  assert np.isfinite(float(metrics['vq']))
  # Usage is the fraction of the codebook hit at each scale: whole codes, at most B·pn² of them.
  usage = float(metrics['usage_mean'])
  cap = np.mean([min(1.0, len(images) * p * p / VAE.vocab_size) for p in VAE.patch_nums])
  hits = usage * len(VAE.patch_nums) * VAE.vocab_size
  assert 0 < usage <= cap and abs(hits - round(hits)) < 1e-3, (usage, cap)
