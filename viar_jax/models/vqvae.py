"""The multi-scale VQ-VAE tokenizer of VAR (`vae_ch160v4096z32.pth`), as one Linen module.

Image convention: NHWC float in [-1, 1] (x·2 - 1 from [0, 1]); decoded images are clamped to [-1, 1].
Latents f, f̂ are (B, n, n, z_channels) with n = image_size / 2^(len(ch_mult) - 1) = patch_nums[-1].
Token maps are a list over scales of (B, pn_k²) int32, row-major (w fastest).

    vae = VQVAE(VQVAEConfig())
    params = vae.init(key, img)['params']                      # or viar_jax.io.convert
    idx = vae.apply({'params': params}, img, method=VQVAE.img_to_idx)
"""
import dataclasses
from typing import List, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from viar_jax.models import quantizer, vae_nets


@dataclasses.dataclass(frozen=True)
class VQVAEConfig:
  """Hyper-parameters; the defaults are the released 256px tokenizer."""
  vocab_size: int = 4096
  z_channels: int = 32
  ch: int = 160
  ch_mult: Tuple[int, ...] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  in_channels: int = 3
  image_size: int = 256
  patch_nums: Tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
  beta: float = 0.25
  using_znorm: bool = False
  quant_resi: float = 0.5
  share_quant_resi: int = 4
  default_qresi_counts: int = 0
  quant_conv_ks: int = 3
  using_sa: bool = True
  using_mid_sa: bool = True

  def __post_init__(self):
    object.__setattr__(self, 'ch_mult', tuple(int(m) for m in self.ch_mult))
    object.__setattr__(self, 'patch_nums', tuple(int(p) for p in self.patch_nums))
    for name in ('vocab_size', 'z_channels', 'ch', 'num_res_blocks', 'in_channels', 'image_size'):
      if int(getattr(self, name)) < 1:
        raise ValueError(f'VQVAEConfig.{name} must be positive, got {getattr(self, name)}')
    if not self.ch_mult:
      raise ValueError('VQVAEConfig.ch_mult must not be empty')
    bad = [self.ch * m for m in self.ch_mult if (self.ch * m) % vae_nets.NUM_GROUPS]
    if bad:
      raise ValueError(f'every channel count must be a multiple of {vae_nets.NUM_GROUPS} (GroupNorm); '
                       f'ch={self.ch} with ch_mult={self.ch_mult} gives {bad}')
    if self.image_size % self.downsample:
      raise ValueError(f'image_size {self.image_size} is not divisible by the downsample factor '
                       f'{self.downsample} of ch_mult={self.ch_mult}')
    check_patch_nums(self.patch_nums, self.latent_size)
    if self.quant_conv_ks < 1 or self.quant_conv_ks % 2 == 0:
      raise ValueError(f'quant_conv_ks must be a positive odd number, got {self.quant_conv_ks}')
    if self.share_quant_resi < 0:
      raise ValueError(f'share_quant_resi must be >= 0, got {self.share_quant_resi}')

  @property
  def downsample(self) -> int:
    return 2 ** (len(self.ch_mult) - 1)

  @property
  def latent_size(self) -> int:
    return self.image_size // self.downsample

  @property
  def seq_len(self) -> int:
    return sum(pn * pn for pn in self.patch_nums)


def check_patch_nums(patch_nums: Sequence[int], latent_size: int):
  if not patch_nums:
    raise ValueError('patch_nums must not be empty')
  if any(p < 1 for p in patch_nums) or any(a >= b for a, b in zip(patch_nums, patch_nums[1:])):
    raise ValueError(f'patch_nums must be positive and strictly increasing, got {tuple(patch_nums)}')
  if patch_nums[-1] != latent_size:
    raise ValueError(f'the last entry of patch_nums {tuple(patch_nums)} must equal the latent side '
                     f'{latent_size} (image_size / downsample)')


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


class VQVAE(nn.Module):
  config: VQVAEConfig

  def setup(self):
    c = self.config
    self.encoder = vae_nets.Encoder(c.ch, c.ch_mult, c.num_res_blocks, c.z_channels,
                                    c.using_sa, c.using_mid_sa)
    self.decoder = vae_nets.Decoder(c.ch, c.ch_mult, c.num_res_blocks, c.in_channels,
                                    c.using_sa, c.using_mid_sa)
    ks, pad = c.quant_conv_ks, c.quant_conv_ks // 2
    self.quant_conv = nn.Conv(c.z_channels, (ks, ks), padding=((pad, pad), (pad, pad)))
    self.post_quant_conv = nn.Conv(c.z_channels, (ks, ks), padding=((pad, pad), (pad, pad)))
    self.quantize = quantizer.MultiScaleQuantizer(
        c.vocab_size, c.z_channels, c.patch_nums, c.beta, c.using_znorm, c.quant_resi,
        c.share_quant_resi, c.default_qresi_counts)

  # --- input checks ---------------------------------------------------------------------------------

  def _check_img(self, img_BHWC):
    c = self.config
    want = (c.image_size, c.image_size, c.in_channels)
    if img_BHWC.ndim != 4 or tuple(img_BHWC.shape[1:]) != want:
      raise ValueError(f'expected images of shape (B, {c.image_size}, {c.image_size}, '
                       f'{c.in_channels}) (NHWC), got {tuple(img_BHWC.shape)}')

  def _check_fhat(self, f_BhwC):
    n, cz = self.config.latent_size, self.config.z_channels
    if f_BhwC.ndim != 4 or tuple(f_BhwC.shape[1:]) != (n, n, cz):
      raise ValueError(f'expected a latent of shape (B, {n}, {n}, {cz}), got {tuple(f_BhwC.shape)}')

  def _check_idx(self, idx_list):
    pns = self.config.patch_nums
    if len(idx_list) < len(pns) - 1 or len(idx_list) > len(pns):
      raise ValueError(f'expected {len(pns)} token maps (one per scale), got {len(idx_list)}')
    for k, (pn, idx) in enumerate(zip(pns, idx_list)):
      if idx.ndim != 2 or idx.shape[1] != pn * pn or idx.shape[0] != idx_list[0].shape[0]:
        raise ValueError(f'token map of scale {k} must be (B, {pn * pn}), got {tuple(idx.shape)}')
      if not jnp.issubdtype(idx.dtype, jnp.integer):
        raise ValueError(f'token map of scale {k} must be integer, got {idx.dtype}')
      if _is_concrete(idx):
        idx_np = np.asarray(idx)
        lo, hi = int(idx_np.min()), int(idx_np.max())
        if lo < 0 or hi >= self.config.vocab_size:
          raise ValueError(f'token ids of scale {k} must lie in [0, {self.config.vocab_size}), '
                           f'got range [{lo}, {hi}]')

  # --- public methods -----------------------------------------------------------------------------

  def encode(self, img_BHWC):
    """Image -> latent f = quant_conv(encoder(img)), (B, n, n, z_channels)."""
    self._check_img(img_BHWC)
    return self.quant_conv(self.encoder(img_BHWC))

  def img_to_idx(self, img_BHWC) -> List[jax.Array]:
    """Image -> token maps per scale, list of (B, pn_k²) int32."""
    return self.quantize.residual_pass(self.encode(img_BHWC)).indices

  def img_to_idx_and_var_input(self, img_BHWC):
    """Image -> (token maps per scale, teacher-forcing input (B, L - pn_0², z_channels)) in one pass."""
    rq = self.quantize.residual_pass(self.encode(img_BHWC))
    return rq.indices, rq.var_input

  def img_to_fhats(self, img_BHWC) -> List[jax.Array]:
    """Image -> running f̂ after every scale (the last is the quantized latent)."""
    return self.quantize.residual_pass(self.encode(img_BHWC)).f_hats

  def idx_to_fhats(self, idx_list) -> List[jax.Array]:
    """Token maps -> cumulative f̂ after each scale, each (B, n, n, z_channels)."""
    self._check_idx(idx_list)
    return self.quantize.residual_pass(indices=idx_list).f_hats

  def idx_to_var_input(self, idx_list):
    """Token maps -> teacher-forcing input of the transformer, (B, L - pn_0², z_channels)."""
    self._check_idx(idx_list)
    return self.quantize.residual_pass(indices=idx_list).var_input

  def codebook(self) -> jax.Array:
    """(vocab_size, z_channels) code vectors."""
    return self.quantize.codebook()

  def next_ar_input(self, k: int, f_hat_BhwC, h_BpnpnC):
    """Sampling step at scale k: f̂ += Φ(Up(h)); returns (f̂, next-scale input (B, pn', pn', C))."""
    pn = self.config.patch_nums[k]
    if h_BpnpnC.shape[1:] != (pn, pn, self.config.z_channels):
      raise ValueError(f'scale {k} codes must be (B, {pn}, {pn}, {self.config.z_channels}), '
                       f'got {tuple(h_BpnpnC.shape)}')
    return self.quantize.next_ar_input(k, f_hat_BhwC, h_BpnpnC)

  def fhat_to_img(self, f_hat_BhwC):
    """Latent -> image in [-1, 1], NHWC."""
    self._check_fhat(f_hat_BhwC)
    return jnp.clip(self.decoder(self.post_quant_conv(f_hat_BhwC)), -1.0, 1.0)

  def idx_to_img(self, idx_list):
    return self.fhat_to_img(self.idx_to_fhats(idx_list)[-1])

  def reconstruct(self, img_BHWC):
    """Image -> tokens -> image (clamped), NHWC in [-1, 1]."""
    return self.fhat_to_img(self.img_to_fhats(img_BHWC)[-1])

  def __call__(self, img_BHWC):
    """Training forward: (reconstruction (unclamped), VQ loss, codebook hit counts (K, V)).

    The quantizer output is straight-through, so the reconstruction loss trains the encoder.
    """
    f_hat, vq_loss, hits_KV = self.quantize(self.encode(img_BHWC))
    return self.decoder(self.post_quant_conv(f_hat)), vq_loss, hits_KV
