"""Training the multi-scale VQ-VAE (VAR's authors released none): pure step over a `TrainState`.

Loss = l1·|x̂ - x| + l2·(x̂ - x)² + VQ loss (β-weighted commitment + codebook/Φ term, averaged over
scales; the quantizer output is straight-through). Codebook usage per scale is reported as the
fraction of the vocabulary hit in the batch. A patch discriminator / perceptual loss is not
implemented (the perceptual loss would need user-supplied weights).
"""
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import optax

from viar_jax import vqvae
from viar_jax.trainer import TrainState


def create_state(vae: vqvae.VQVAE, optimizer: optax.GradientTransformation, key) -> TrainState:
  init_key, rng = jax.random.split(key)
  c = vae.config
  params = vae.init(init_key, jnp.zeros((1, c.image_size, c.image_size, c.in_channels)))['params']
  return TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params),
                    rng=jax.random.key_data(rng))


def train_step(state: TrainState, images_BHWC, *, vae: vqvae.VQVAE,
               optimizer: optax.GradientTransformation, l1_weight: float = 1.0,
               l2_weight: float = 1.0) -> Tuple[TrainState, Dict[str, jax.Array]]:
  def loss_fn(params):
    rec, vq_loss, hits_KV = vae.apply({'params': params}, images_BHWC)
    l1 = jnp.mean(jnp.abs(rec - images_BHWC))
    l2 = jnp.mean(jnp.square(rec - images_BHWC))
    loss = l1_weight * l1 + l2_weight * l2 + vq_loss
    usage = jnp.mean((hits_KV > 0).astype(jnp.float32), axis=1)  # (K,) fraction of codes used
    return loss, {'loss': loss, 'l1': l1, 'l2': l2, 'vq': vq_loss, 'usage_last': usage[-1],
                  'usage_mean': jnp.mean(usage)}

  grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  metrics['grad_norm'] = optax.tree.norm(grads)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state), metrics
