"""PatchGAN discriminator and hinge losses for VQGAN-style tokenizer training, NHWC.

`PatchDiscriminator` is pix2pix's `NLayerDiscriminator` as taming-transformers uses it: n_layers
stride-2 4x4 convs, one stride-1 4x4 conv, then a stride-1 4x4 conv to one logit per patch.

    disc = PatchDiscriminator(ndf=64, n_layers=3)
    params = disc.init(key, images_BHWC)['params']
    logits_BhwO = disc.apply({'params': params}, images_BHWC)   # (B, h, w, 1)
    d_loss = hinge_d_loss(disc(real), disc(stop_gradient(fake)))
    g_loss = generator_adv_loss(disc(fake))
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

# taming's weights_init: conv weights ~ N(0, 0.02), biases zero.
_KERNEL_INIT = nn.initializers.normal(0.02)


def patch_grid_size(image_size: int, n_layers: int) -> int:
  """Side of the logits map for a square `image_size` input; ValueError if it would be empty.

  A 4x4 conv with padding 1 maps a side h to h // 2 at stride 2 and to h - 1 at stride 1, so the
  map side is image_size // 2^n_layers - 2 (e.g. 8px: n_layers <= 1; 16px: <= 2; 32px: <= 3).
  """
  if n_layers < 1:
    raise ValueError(f'n_layers must be >= 1, got {n_layers}')
  side = image_size // 2**n_layers - 2
  if side < 1:
    fits = [n for n in range(1, 16) if image_size // 2**n - 2 >= 1]
    hint = f'use n_layers <= {max(fits)}' if fits else 'the image needs a side of at least 6'
    raise ValueError(f'a {image_size}px side is too small for a patch discriminator with '
                     f'n_layers={n_layers} (the logits map would be empty): {hint}')
  return side


class PatchDiscriminator(nn.Module):
  """pix2pix NLayerDiscriminator with GroupNorm instead of BatchNorm.

  GroupNorm (or no norm) rather than BatchNorm: BatchNorm would need a mutable `batch_stats`
  collection threaded through the train state and a train/eval switch, and it couples the samples of
  a batch (real and fake batches normalised with different statistics, per-shard statistics under
  data parallelism). GroupNorm is per-sample and stateless, so the step stays a pure function of
  (params, batch).

  Attributes:
    ndf: channels of the first conv; later convs use min(2^i, 8) * ndf.
    n_layers: number of stride-2 convs; the input side must satisfy side // 2^n_layers >= 3.
    use_norm: GroupNorm after every conv but the first and last (as BatchNorm was); False: none.
    num_groups: GroupNorm groups, reduced to gcd(num_groups, channels) so any ndf works.
  """
  ndf: int = 64
  n_layers: int = 3
  use_norm: bool = True
  num_groups: int = 32

  def _conv_norm_act(self, x, features: int, stride: int):
    # The original drops the conv bias when a norm with its own shift follows.
    x = nn.Conv(features, (4, 4), strides=stride, padding=((1, 1), (1, 1)),
                use_bias=not self.use_norm, kernel_init=_KERNEL_INIT)(x)
    if self.use_norm:
      x = nn.GroupNorm(num_groups=math.gcd(self.num_groups, features))(x)
    return nn.leaky_relu(x, 0.2)

  @nn.compact
  def __call__(self, x_BHWC):
    """Images (B, H, W, C) -> patch logits (B, H // 2^n - 2, W // 2^n - 2, 1), n = n_layers."""
    if x_BHWC.ndim != 4:
      raise ValueError(f'expected NHWC images, got shape {tuple(x_BHWC.shape)}')
    for side in x_BHWC.shape[1:3]:
      patch_grid_size(side, self.n_layers)  # raises if the logits map would be empty

    x = nn.Conv(self.ndf, (4, 4), strides=2, padding=((1, 1), (1, 1)),
                kernel_init=_KERNEL_INIT)(x_BHWC)
    x = nn.leaky_relu(x, 0.2)
    for i in range(1, self.n_layers):
      x = self._conv_norm_act(x, min(2**i, 8) * self.ndf, stride=2)
    x = self._conv_norm_act(x, min(2**self.n_layers, 8) * self.ndf, stride=1)
    return nn.Conv(1, (4, 4), strides=1, padding=((1, 1), (1, 1)), kernel_init=_KERNEL_INIT)(x)


def hinge_d_loss(logits_real, logits_fake) -> jax.Array:
  """Discriminator hinge loss: mean(relu(1 - real)) + mean(relu(1 + fake)); any shapes.

  taming's version halves this sum; the unhalved form here is 2 at the D(x) = 0 start.
  """
  return jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake))


def generator_adv_loss(logits_fake) -> jax.Array:
  """Generator's adversarial loss: -mean(D(fake)) (taming's hinge generator loss)."""
  return -jnp.mean(logits_fake)
