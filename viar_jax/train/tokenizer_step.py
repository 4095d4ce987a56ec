"""Training the multi-scale VQ-VAE (VAR's authors released none): pure step over a `TrainState`.

Loss = l1·|x̂ - x| + l2·(x̂ - x)² + VQ loss (β-weighted commitment + codebook/Φ term, averaged over
scales; the quantizer output is straight-through). Codebook usage per scale is reported as the
fraction of the vocabulary hit in the batch.

Optional VQGAN-style adversarial loss (`create_gan_state` / `gan_train_step`): a patch discriminator
trained with the hinge loss, and a generator term disc_weight · λ · (-mean D(x̂)) with taming's
adaptive λ = ‖∇_W L_rec‖ / (‖∇_W L_adv‖ + 1e-4), W = the decoder's `conv_out` kernel. Both switch on
at `disc_start_step`.

Optional perceptual loss: perceptual_weight · mean LPIPS(x, x̂) (`viar_jax.eval.lpips`, VGG16), added to
the reconstruction loss (so in the GAN step it also enters λ's numerator, as in taming's VQGAN). Its
params come from user-supplied files (`lpips.load_params`) and are passed to the step as a frozen
argument: not trained, not in the optimizer state. It needs images with a side of at least
`lpips.MIN_IMAGE_SIZE` (16) px. With perceptual_weight = 0 nothing of it is traced: the steps are as
before.
"""
from typing import Any, Dict, Tuple

import flax
import jax
import jax.numpy as jnp
import optax

from viar_jax.data import transforms
from viar_jax.eval import lpips
from viar_jax.models import discriminator, vqvae
from viar_jax.train.train_step import TrainState


def create_state(vae: vqvae.VQVAE, optimizer: optax.GradientTransformation, key) -> TrainState:
  init_key, rng = jax.random.split(key)
  c = vae.config
  params = vae.init(init_key, jnp.zeros((1, c.image_size, c.image_size, c.in_channels)))['params']
  return TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params),
                    rng=jax.random.key_data(rng))


def check_perceptual(perceptual_weight: float, lpips_params, image_shape=None):
  """ValueError for a negative weight, a positive one without LPIPS params, or too small images."""
  if perceptual_weight < 0:
    raise ValueError(f'perceptual_weight must be >= 0, got {perceptual_weight}')
  if perceptual_weight > 0:
    if lpips_params is None:
      raise ValueError(f'perceptual_weight={perceptual_weight} needs LPIPS params '
                       f'(lpips.load_params on the user-supplied VGG16 and LPIPS weight files)')
    if image_shape is not None:
      lpips.check_image_size(*image_shape[1:3])


def perceptual_loss(lpips_params, images_BHWC, rec_BHWC) -> jax.Array:
  """Mean LPIPS(x, x̂) over the batch; the LPIPS params are frozen (no gradient reaches them)."""
  return jnp.mean(lpips.lpips_distance(jax.lax.stop_gradient(lpips_params), images_BHWC, rec_BHWC))


def train_step(state: TrainState, images_BHWC, *, vae: vqvae.VQVAE,
               optimizer: optax.GradientTransformation, l1_weight: float = 1.0,
               l2_weight: float = 1.0, perceptual_weight: float = 0.0,
               lpips_params=None) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One VQ-VAE step: l1·L1 + l2·L2 (+ perceptual_weight · mean LPIPS) + VQ loss.

  lpips_params: `lpips.load_params(...)`, required when perceptual_weight > 0 (pass it as a jit
  argument rather than closing over it, or ~60 MB of VGG16 weights become compiled constants).
  Metrics gain 'perceptual' (the unweighted mean LPIPS) only when perceptual_weight > 0.
  """
  check_perceptual(perceptual_weight, lpips_params, images_BHWC.shape)
  images_BHWC = transforms.to_model_range(images_BHWC)  # uint8 from the loader, or float

  def loss_fn(params):
    rec, vq_loss, hits_KV = vae.apply({'params': params}, images_BHWC)
    l1 = jnp.mean(jnp.abs(rec - images_BHWC))
    l2 = jnp.mean(jnp.square(rec - images_BHWC))
    loss = l1_weight * l1 + l2_weight * l2 + vq_loss
    extra = {}
    if perceptual_weight > 0:
      extra['perceptual'] = perceptual_loss(lpips_params, images_BHWC, rec)
      loss = loss + perceptual_weight * extra['perceptual']
    usage = jnp.mean((hits_KV > 0).astype(jnp.float32), axis=1)  # (K,) fraction of codes used
    return loss, {'loss': loss, 'l1': l1, 'l2': l2, 'vq': vq_loss, 'usage_last': usage[-1],
                  'usage_mean': jnp.mean(usage), **extra}

  grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  metrics['grad_norm'] = optax.tree.norm(grads)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state), metrics


# --- VQGAN variant: VQ-VAE + patch discriminator --------------------------------------------------


@flax.struct.dataclass
class GanTrainState:
  vae: TrainState  # the tokenizer's state; `vae.step` is the step counter of the whole run
  disc_params: Any
  disc_opt_state: Any


def create_gan_state(vae: vqvae.VQVAE, disc: discriminator.PatchDiscriminator,
                     vae_optimizer: optax.GradientTransformation,
                     disc_optimizer: optax.GradientTransformation, key) -> GanTrainState:
  """Fresh VQ-VAE state (as `create_state`) plus discriminator params and optimizer state."""
  vae_key, disc_key = jax.random.split(key)
  c = vae.config
  x = jnp.zeros((1, c.image_size, c.image_size, c.in_channels))
  disc_params = disc.init(disc_key, x)['params']  # raises if the images are too small for it
  return GanTrainState(vae=create_state(vae, vae_optimizer, vae_key), disc_params=disc_params,
                       disc_opt_state=disc_optimizer.init(disc_params))


def _last_layer(tree):
  """The decoder's output conv kernel, the layer taming balances the adversarial term on."""
  return tree['decoder']['conv_out']['kernel']


def adaptive_weight(recon_grad_last, adv_grad_last) -> jax.Array:
  """VQGAN's λ = ‖∇ L_rec‖ / (‖∇ L_adv‖ + 1e-4) on the last layer, clipped to [0, 1e4]."""
  ratio = jnp.linalg.norm(recon_grad_last) / (jnp.linalg.norm(adv_grad_last) + 1e-4)
  return jnp.clip(ratio, 0.0, 1e4)


def gan_train_step(state: GanTrainState, images_BHWC, *, vae: vqvae.VQVAE,
                   disc: discriminator.PatchDiscriminator,
                   vae_optimizer: optax.GradientTransformation,
                   disc_optimizer: optax.GradientTransformation, l1_weight: float = 1.0,
                   l2_weight: float = 1.0, disc_weight: float = 0.1, disc_start_step: int = 0,
                   perceptual_weight: float = 0.0,
                   lpips_params=None) -> Tuple[GanTrainState, Dict[str, jax.Array]]:
  """One VQ-VAE step and one discriminator step on the same reconstructions.

  images_BHWC: (B, H, W, C) uint8, or float in [-1, 1]; H = W = vae.config.image_size.
  Generator loss = L_rec + VQ + on · disc_weight · λ · (-mean D(x̂)), with L_rec = l1·L1 + l2·L2
  (+ perceptual_weight · mean LPIPS, see `train_step`), on = (state.vae.step >= disc_start_step) and
  λ the adaptive weight from L_rec and the adversarial term (a constant for the gradient).
  Discriminator loss = hinge(D(x), D(sg(x̂))), applied only when on. `on` is traced, so one compiled
  step serves the whole run; before the start the VQ-VAE update equals `train_step`'s and the
  discriminator's params and optimizer state stay as they are. Returns (new state, scalar metrics).
  """
  check_perceptual(perceptual_weight, lpips_params, images_BHWC.shape)
  images_BHWC = transforms.to_model_range(images_BHWC)
  on = state.vae.step >= disc_start_step
  disc_apply = lambda p, x: disc.apply({'params': p}, x)

  # One VQ-VAE forward; its VJP then gives the gradient of any loss on (x̂, vq_loss).
  def forward(params):
    rec, vq_loss, hits_KV = vae.apply({'params': params}, images_BHWC)
    return (rec, vq_loss), hits_KV

  (rec_BHWC, vq_loss), vae_vjp, hits_KV = jax.vjp(forward, state.vae.params, has_aux=True)

  def recon_loss(rec):
    l1 = jnp.mean(jnp.abs(rec - images_BHWC))
    l2 = jnp.mean(jnp.square(rec - images_BHWC))
    loss, extra = l1_weight * l1 + l2_weight * l2, {}
    if perceptual_weight > 0:
      extra['perceptual'] = perceptual_loss(lpips_params, images_BHWC, rec)
      loss = loss + perceptual_weight * extra['perceptual']
    return loss, (l1, l2, extra)

  def adv_loss(rec):
    logits_fake = disc_apply(state.disc_params, rec)
    return discriminator.generator_adv_loss(logits_fake), logits_fake

  (rec_loss, (l1, l2, extra)), d_rec = jax.value_and_grad(recon_loss, has_aux=True)(rec_BHWC)
  (g_adv, logits_fake), d_adv = jax.value_and_grad(adv_loss, has_aux=True)(rec_BHWC)

  # λ from the two losses' gradients on the last layer. Only that leaf of each pulled-back gradient
  # is used, so under jit XLA drops the rest of these two backward passes (one conv's VJP each).
  no_vq = jnp.zeros_like(vq_loss)
  lam = adaptive_weight(_last_layer(vae_vjp((d_rec, no_vq))[0]),
                        _last_layer(vae_vjp((d_adv, no_vq))[0]))
  adv_scale = jnp.where(on, disc_weight * lam, 0.0)  # a constant: no gradient flows through λ
  # The loss is a weighted sum, so one pull-back of the summed cotangents gives its full gradient.
  grads = vae_vjp((d_rec + adv_scale * d_adv, jnp.ones_like(vq_loss)))[0]
  updates, vae_opt_state = vae_optimizer.update(grads, state.vae.opt_state, state.vae.params)
  vae_state = state.vae.replace(step=state.vae.step + 1,
                                params=optax.apply_updates(state.vae.params, updates),
                                opt_state=vae_opt_state)

  # Discriminator step against the reconstructions above (no gradient into the VQ-VAE).
  fake_BHWC = jax.lax.stop_gradient(rec_BHWC)

  def d_loss_fn(params):
    logits_real = disc_apply(params, images_BHWC)
    return discriminator.hinge_d_loss(logits_real, disc_apply(params, fake_BHWC)), logits_real

  (d_loss, logits_real), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(state.disc_params)
  d_updates, d_opt_state = disc_optimizer.update(d_grads, state.disc_opt_state, state.disc_params)
  d_params = optax.apply_updates(state.disc_params, d_updates)
  # Select, not scale: before the start even Adam's count and weight decay must stay put.
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(on, n, o), new, old)

  usage = jnp.mean((hits_KV > 0).astype(jnp.float32), axis=1)  # (K,) fraction of codes used
  adv_term = adv_scale * g_adv
  metrics = {'loss': rec_loss + vq_loss + adv_term, 'l1': l1, 'l2': l2, 'vq': vq_loss,
             'usage_last': usage[-1], 'usage_mean': jnp.mean(usage),
             'grad_norm': optax.tree.norm(grads), 'g_adv': g_adv, 'adv_term': adv_term,
             'adaptive_weight': lam, 'd_loss': d_loss, 'd_grad_norm': optax.tree.norm(d_grads),
             'logits_real': jnp.mean(logits_real), 'logits_fake': jnp.mean(logits_fake),
             'disc_on': on.astype(jnp.float32), **extra}
  new_state = GanTrainState(vae=vae_state, disc_params=keep(d_params, state.disc_params),
                            disc_opt_state=keep(d_opt_state, state.disc_opt_state))
  return new_state, metrics
