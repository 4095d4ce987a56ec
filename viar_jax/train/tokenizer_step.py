"""Training the multi-scale VQ-VAE (VAR's authors released none): pure step over a `TrainState`.

Loss = l1·|x̂ - x| + l2·(x̂ - x)² + VQ loss (β-weighted commitment + codebook/Φ term, averaged over
scales; the quantizer output is straight-through). Codebook usage per scale is reported as the
fraction of the vocabulary hit in the batch.

Optional VQGAN-style adversarial loss (`create_gan_state` / `gan_train_step`): a patch discriminator
trained with the hinge loss, and a generator term disc_weight · λ · (-mean D(x̂)) with taming's
adaptive λ = ‖∇_W L_rec‖ / (‖∇_W L_adv‖ + 1e-4), W = the decoder's `conv_out` kernel. Both switch on
at `disc_start_step`.

Training-side codebook care (`codebook_train_step`, wrapping either step; `CodebookOptions`): code
hits per scale over a window of steps give usage and perplexity per scale; the codebook can be
re-initialised by k-means of the residual vectors the quantizer sees at every scale
(`residual_vectors`), and codes dead over the window restarted from random residuals. Keys are
derived from the state's rng and step and the batch is the global one, so every device computes
the same codebook. Optional: a quantization warm-up (`quantization_mix`), a VQ loss weight, and tied
decoder output channels for grey data (`tie_output_channels`).

Optional perceptual loss: perceptual_weight · mean LPIPS(x, x̂) (`viar_jax.eval.lpips`, VGG16), added to
the reconstruction loss (so in the GAN step it also enters λ's numerator, as in taming's VQGAN). Its
params come from user-supplied files (`lpips.load_params`) and are passed to the step as a frozen
argument: not trained, not in the optimizer state. It needs images with a side of at least
`lpips.MIN_IMAGE_SIZE` (16) px. With perceptual_weight = 0 nothing of it is traced: the steps are as
before.
"""
import dataclasses
from typing import Any, Dict, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import optax

from viar_jax.data import transforms
from viar_jax.eval import lpips
from viar_jax.models import discriminator, quantizer, resample, vqvae
from viar_jax.train.train_step import TrainState


def create_state(vae: vqvae.VQVAE, optimizer: optax.GradientTransformation, key,
                 tie_channels: bool = False) -> TrainState:
  """Fresh VQ-VAE state; tie_channels: start with identical decoder output channels."""
  init_key, rng = jax.random.split(key)
  c = vae.config
  params = vae.init(init_key, jnp.zeros((1, c.image_size, c.image_size, c.in_channels)))['params']
  if tie_channels:
    params = tie_output_channels(params)
  return TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params),
                    rng=jax.random.key_data(rng))


def tie_output_channels(params):
  """Grey data: the decoder's output conv with every output channel a copy of channel 0, so each
  decoded image (reconstruction or sample) has identical channels, exactly.

  Grey images reach the tokenizer as RGB with repeated channels; trained freely, the three output
  channels drift apart (coloured noise on grey strokes). Tying them is a constraint on the released
  architecture's weights, not a change of it: the checkpoint loads and decodes as any other.
  Applied at init and after every update; with identical channels and grey targets the gradients of
  the three channels are equal anyway, the copy only removes rounding drift.
  """
  conv = params['decoder']['conv_out']
  kernel, bias = conv['kernel'], conv['bias']
  tied = {**conv, 'kernel': jnp.broadcast_to(kernel[..., :1], kernel.shape),
          'bias': jnp.broadcast_to(bias[:1], bias.shape)}
  return {**params, 'decoder': {**params['decoder'], 'conv_out': tied}}


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


def quantization_mix(step, quant_ramp: Optional[Tuple[int, int]]):
  """The share of quantization in the decoder's input at `step`: None (always 1, the plain
  straight-through forward) without a ramp; with quant_ramp = (start, end), 0 before `start`, a
  linear ramp to 1 at `end`, 1 after. A warm-up: the decoder first learns from the encoder's
  latents f themselves, then from f + mix·(f̂ - f) (gradients are straight-through throughout, and
  the VQ loss trains codebook and Φ all along)."""
  if quant_ramp is None:
    return None
  start, end = quant_ramp
  if end <= start:
    return (step >= start).astype(jnp.float32)
  return jnp.clip((step - start) / (end - start), 0.0, 1.0).astype(jnp.float32)


def forward(vae: vqvae.VQVAE, params, images_BHWC, mix=None):
  """The training forward: `vae(images)` -> (reconstruction, VQ loss, hits (K, V)); with a
  quantization share `mix` (`quantization_mix`), the decoder input is f + mix·sg(f̂ - f)."""
  if mix is None:
    return vae.apply({'params': params}, images_BHWC)

  def run(m, x):
    f = m.encode(x).astype(jnp.float32)
    f_st, vq_loss, hits = m.quantize(f)  # sg(f̂) - sg(f) + f
    return m.decoder(m.post_quant_conv(f + mix * (f_st - f))), vq_loss, hits

  return vae.apply({'params': params}, images_BHWC, method=run)


def train_step(state: TrainState, images_BHWC, *, vae: vqvae.VQVAE,
               optimizer: optax.GradientTransformation, l1_weight: float = 1.0,
               l2_weight: float = 1.0, perceptual_weight: float = 0.0,
               lpips_params=None, tie_channels: bool = False,
               return_hits: bool = False, vq_weight: float = 1.0,
               quant_ramp: Optional[Tuple[int, int]] = None
               ) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One VQ-VAE step: l1·L1 + l2·L2 (+ perceptual_weight · mean LPIPS) + VQ loss.

  tie_channels: keep the decoder's output channels identical (`tie_output_channels` after the
  update; grey data). return_hits: metrics also hold 'code_hits', the (K, V) int32 hits per scale
  (not a scalar: for `codebook_train_step`, not for logging). vq_weight: weight of the VQ loss
  (under Adam only the encoder's share, the commitment, feels it: the codebook and Φ learn from that
  term alone). quant_ramp: see `quantization_mix`.

  lpips_params: `lpips.load_params(...)`, required when perceptual_weight > 0 (pass it as a jit
  argument rather than closing over it, or ~60 MB of VGG16 weights become compiled constants).
  Metrics gain 'perceptual' (the unweighted mean LPIPS) only when perceptual_weight > 0.
  """
  check_perceptual(perceptual_weight, lpips_params, images_BHWC.shape)
  images_BHWC = transforms.to_model_range(images_BHWC)  # uint8 from the loader, or float

  mix = quantization_mix(state.step, quant_ramp)

  def loss_fn(params):
    rec, vq_loss, hits_KV = forward(vae, params, images_BHWC, mix)
    l1 = jnp.mean(jnp.abs(rec - images_BHWC))
    l2 = jnp.mean(jnp.square(rec - images_BHWC))
    loss = l1_weight * l1 + l2_weight * l2 + vq_weight * vq_loss
    extra = {}
    if perceptual_weight > 0:
      extra['perceptual'] = perceptual_loss(lpips_params, images_BHWC, rec)
      loss = loss + perceptual_weight * extra['perceptual']
    usage = jnp.mean((hits_KV > 0).astype(jnp.float32), axis=1)  # (K,) fraction of codes used
    if return_hits:
      extra['code_hits'] = hits_KV
    if mix is not None:
      extra['quant_mix'] = mix
    return loss, {'loss': loss, 'l1': l1, 'l2': l2, 'vq': vq_loss, 'usage_last': usage[-1],
                  'usage_mean': jnp.mean(usage), **extra}

  grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  metrics['grad_norm'] = optax.tree.norm(grads)
  params = optax.apply_updates(state.params, updates)
  if tie_channels:
    params = tie_output_channels(params)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


# --- VQGAN variant: VQ-VAE + patch discriminator --------------------------------------------------


@flax.struct.dataclass
class GanTrainState:
  vae: TrainState  # the tokenizer's state; `vae.step` is the step counter of the whole run
  disc_params: Any
  disc_opt_state: Any


def create_gan_state(vae: vqvae.VQVAE, disc: discriminator.PatchDiscriminator,
                     vae_optimizer: optax.GradientTransformation,
                     disc_optimizer: optax.GradientTransformation, key,
                     tie_channels: bool = False) -> GanTrainState:
  """Fresh VQ-VAE state (as `create_state`) plus discriminator params and optimizer state."""
  vae_key, disc_key = jax.random.split(key)
  c = vae.config
  x = jnp.zeros((1, c.image_size, c.image_size, c.in_channels))
  disc_params = disc.init(disc_key, x)['params']  # raises if the images are too small for it
  return GanTrainState(vae=create_state(vae, vae_optimizer, vae_key, tie_channels),
                       disc_params=disc_params,
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
                   perceptual_weight: float = 0.0, lpips_params=None,
                   tie_channels: bool = False, return_hits: bool = False,
                   vq_weight: float = 1.0, quant_ramp: Optional[Tuple[int, int]] = None
                   ) -> Tuple[GanTrainState, Dict[str, jax.Array]]:
  """One VQ-VAE step and one discriminator step on the same reconstructions.

  images_BHWC: (B, H, W, C) uint8, or float in [-1, 1]; H = W = vae.config.image_size.
  Generator loss = L_rec + VQ + on · disc_weight · λ · (-mean D(x̂)), with L_rec = l1·L1 + l2·L2
  (+ perceptual_weight · mean LPIPS, see `train_step`), on = (state.vae.step >= disc_start_step) and
  λ the adaptive weight from L_rec and the adversarial term (a constant for the gradient).
  Discriminator loss = hinge(D(x), D(sg(x̂))), applied only when on. `on` is traced, so one compiled
  step serves the whole run; before the start the VQ-VAE update equals `train_step`'s and the
  discriminator's params and optimizer state stay as they are. Returns (new state, scalar metrics).
  tie_channels, return_hits, vq_weight, quant_ramp: as in `train_step`.
  """
  check_perceptual(perceptual_weight, lpips_params, images_BHWC.shape)
  images_BHWC = transforms.to_model_range(images_BHWC)
  on = state.vae.step >= disc_start_step
  disc_apply = lambda p, x: disc.apply({'params': p}, x)

  # One VQ-VAE forward; its VJP then gives the gradient of any loss on (x̂, vq_loss).
  mix = quantization_mix(state.vae.step, quant_ramp)

  def vae_forward(params):
    rec, vq_loss, hits_KV = forward(vae, params, images_BHWC, mix)
    return (rec, vq_loss), hits_KV

  (rec_BHWC, vq_loss), vae_vjp, hits_KV = jax.vjp(vae_forward, state.vae.params, has_aux=True)

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
  grads = vae_vjp((d_rec + adv_scale * d_adv, jnp.full_like(vq_loss, vq_weight)))[0]
  updates, vae_opt_state = vae_optimizer.update(grads, state.vae.opt_state, state.vae.params)
  vae_params = optax.apply_updates(state.vae.params, updates)
  if tie_channels:
    vae_params = tie_output_channels(vae_params)
  vae_state = state.vae.replace(step=state.vae.step + 1, params=vae_params,
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
  metrics = {'loss': rec_loss + vq_weight * vq_loss + adv_term, 'l1': l1, 'l2': l2, 'vq': vq_loss,
             'usage_last': usage[-1], 'usage_mean': jnp.mean(usage),
             'grad_norm': optax.tree.norm(grads), 'g_adv': g_adv, 'adv_term': adv_term,
             'adaptive_weight': lam, 'd_loss': d_loss, 'd_grad_norm': optax.tree.norm(d_grads),
             'logits_real': jnp.mean(logits_real), 'logits_fake': jnp.mean(logits_fake),
             'disc_on': on.astype(jnp.float32), **extra}
  if mix is not None:
    metrics['quant_mix'] = mix
  if return_hits:
    metrics['code_hits'] = hits_KV
  new_state = GanTrainState(vae=vae_state, disc_params=keep(d_params, state.disc_params),
                            disc_opt_state=keep(d_opt_state, state.disc_opt_state))
  return new_state, metrics


# --- codebook maintenance: usage window, data-based (k-means) init, dead-code restarts ------------


@dataclasses.dataclass(frozen=True)
class CodebookOptions:
  """Training-side codebook care (config.tokenizer.codebook); the defaults switch everything off.

  window: usage and perplexity per scale are measured over the code hits of the last `window` steps
    (`usage_s<k>`: fraction of the vocabulary hit at scale k; `perplexity_s<k>`: exp(entropy)).
  kmeans_step: before the update of this step (0: the first), the codebook becomes the k-means
    (k-means++ seeds, `kmeans_iters` Lloyd iterations) of the batch's residual vectors, i.e. the
    quantizer inputs at every scale under the current encoder; < 0: never.
  restart_every: every this many steps (from step `window` on, up to `restart_until`), codes with
    no hit at any scale within the window are replaced by residual vectors of the batch drawn at
    random; 0: never. restart_until < 0: until the end.
  scale_balanced: k-means and restarts weight each scale's residuals equally (else each vector
    counts once, and the 1x1 scale is a small minority).
  """
  window: int = 50
  kmeans_step: int = -1
  kmeans_iters: int = 10
  restart_every: int = 0
  restart_until: int = -1
  scale_balanced: bool = True

  def __post_init__(self):
    if self.window < 1 or self.kmeans_iters < 1 or self.restart_every < 0:
      raise ValueError(f'config.tokenizer.codebook: window and kmeans_iters must be >= 1 and '
                       f'restart_every >= 0, got {self}')

  @property
  def active(self) -> bool:
    return self.kmeans_step >= 0 or self.restart_every > 0


@flax.struct.dataclass
class CodebookState:
  window: jax.Array  # (window, K, V) int32: code hits per scale of the last `window` steps (ring)
  restarts: jax.Array  # int32 (): codes restarted so far


@flax.struct.dataclass
class TokenizerState:
  """A tokenizer training state (`TrainState` or `GanTrainState`) plus the codebook bookkeeping."""
  model: Any
  codes: CodebookState


def model_train_state(model_state) -> TrainState:
  """The VQ-VAE's `TrainState` inside a `TrainState` / `GanTrainState` / `TokenizerState`."""
  if isinstance(model_state, TokenizerState):
    model_state = model_state.model
  return model_state.vae if isinstance(model_state, GanTrainState) else model_state


def _replace_vae_state(model_state, vae_state: TrainState):
  if isinstance(model_state, GanTrainState):
    return model_state.replace(vae=vae_state)
  return vae_state


def init_codebook_state(vae: vqvae.VQVAE, options: CodebookOptions) -> CodebookState:
  c = vae.config
  return CodebookState(window=jnp.zeros((options.window, len(c.patch_nums), c.vocab_size),
                                        jnp.int32),
                       restarts=jnp.int32(0))


def get_codebook(params) -> jax.Array:
  return params['quantize']['embedding']['embedding']


def set_codebook(params, codebook_VC):
  q = params['quantize']
  return {**params, 'quantize': {**q, 'embedding': {**q['embedding'], 'embedding': codebook_VC}}}


def residual_vectors(vae: vqvae.VQVAE, params, images_BHWC, scale_balanced: bool = True):
  """The quantizer's inputs at every scale for a batch: -> (vectors (M, C), weights (M,)), M = B·Σpn².

  Scale k's inputs are the residual f - f̂_{k-1} area-downsampled to pn_k x pn_k (what
  `nearest_code` snaps). scale_balanced: weights 1 / (B·pn_k²), so every scale has the same total
  weight; else all 1.
  """
  c = vae.config

  def run(m, x):
    f = m.encode(x).astype(jnp.float32)
    return f, m.quantize.residual_pass(f).f_hats

  f, f_hats = vae.apply({'params': params}, images_BHWC, method=run)
  f, f_hats = jax.lax.stop_gradient(f), jax.lax.stop_gradient(f_hats)
  vecs, weights, prev = [], [], jnp.zeros_like(f)
  for k, pn in enumerate(c.patch_nums):
    r = resample.resize(f - prev, pn, 'area').reshape(-1, f.shape[-1])
    vecs.append(r)
    weights.append(jnp.full((r.shape[0],), 1.0 / r.shape[0] if scale_balanced else 1.0))
    prev = f_hats[k]
  return jnp.concatenate(vecs), jnp.concatenate(weights)


def codebook_metrics(window_NKV) -> Dict[str, jax.Array]:
  """usage_s<k> / perplexity_s<k> per scale and dead_codes (no hit at any scale) over the window."""
  hits_KV = jnp.sum(window_NKV, axis=0)
  usage, perplexity = quantizer.usage_and_perplexity(hits_KV)
  out = {'dead_codes': jnp.sum(jnp.sum(hits_KV, axis=0) == 0).astype(jnp.float32),
         'usage_min': jnp.min(usage)}
  for k in range(hits_KV.shape[0]):
    out[f'usage_s{k}'] = usage[k]
    out[f'perplexity_s{k}'] = perplexity[k]
  return out


def maintain_codebook(params, codes: CodebookState, images_BHWC, key, step, *, vae: vqvae.VQVAE,
                      options: CodebookOptions):
  """The codebook step of `codebook_train_step` on its own (before `step`'s update):
  -> (params, number of dead codes restarted). K-means at `options.kmeans_step`, dead-code restart on
  restart steps, else unchanged. Only the taken branch runs (`lax.switch`). Deterministic given
  `key`; under data parallelism the batch is the global one, so every device gets the same codebook.
  """
  o = options
  images_BHWC = transforms.to_model_range(images_BHWC)
  v = vae.config.vocab_size
  do_kmeans = (step == o.kmeans_step) if o.kmeans_step >= 0 else jnp.bool_(False)
  if o.restart_every > 0:
    do_restart = (step >= o.window) & (step % o.restart_every == 0)
    if o.restart_until >= 0:
      do_restart = do_restart & (step <= o.restart_until)
  else:
    do_restart = jnp.bool_(False)
  dead_V = jnp.sum(codes.window, axis=(0, 1)) == 0

  def keep():
    return get_codebook(params), jnp.int32(0)

  def run_kmeans():
    x, w = residual_vectors(vae, params, images_BHWC, o.scale_balanced)
    return kmeans_codebook(x, w, key, v, o.kmeans_iters, get_codebook(params).dtype), jnp.int32(0)

  def restart():
    x, w = residual_vectors(vae, params, images_BHWC, o.scale_balanced)
    cb = quantizer.restart_dead_codes(get_codebook(params), dead_V, x, key, w)
    return cb, jnp.sum(dead_V).astype(jnp.int32)

  branch = jnp.where(do_kmeans, 1, jnp.where(do_restart, 2, 0))
  cb, replaced = jax.lax.switch(branch, (keep, run_kmeans, restart))
  return set_codebook(params, cb), replaced


def kmeans_codebook(x_NC, w_N, key, vocab_size: int, iters: int, dtype):
  return quantizer.kmeans(x_NC, key, vocab_size, iters, w_N).astype(dtype)


def codebook_train_step(state: TokenizerState, images_BHWC, *args, vae: vqvae.VQVAE,
                        step_fn, options: CodebookOptions, **kwargs
                        ) -> Tuple[TokenizerState, Dict[str, jax.Array]]:
  """`maintain_codebook`, then `step_fn` (`train_step` / `gan_train_step`, partially applied
  without `return_hits`), then the usage window. Extra positional and keyword arguments go to
  step_fn. Metrics gain the window's `codebook_metrics` and `restarted` (codes replaced so far).
  """
  vae_state = model_train_state(state.model)
  step = vae_state.step
  key = jax.random.fold_in(jax.random.wrap_key_data(vae_state.rng), step)
  key = jax.random.fold_in(key, 0x636f6465)  # a stream of its own ('code')
  model, replaced = state.model, jnp.int32(0)
  if options.active:
    params, replaced = maintain_codebook(vae_state.params, state.codes, images_BHWC, key, step,
                                        vae=vae, options=options)
    model = _replace_vae_state(model, vae_state.replace(params=params))
  model, metrics = step_fn(model, images_BHWC, *args, return_hits=True, **kwargs)
  hits_KV = metrics.pop('code_hits')
  window = state.codes.window.at[step % options.window].set(hits_KV.astype(jnp.int32))
  codes = CodebookState(window=window, restarts=state.codes.restarts + replaced)
  metrics.update(codebook_metrics(window))
  metrics['restarted'] = codes.restarts.astype(jnp.float32)
  return TokenizerState(model=model, codes=codes), metrics
