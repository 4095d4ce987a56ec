"""VAR's residual multi-scale vector quantizer (`VectorQuantizer2`), NHWC.

A latent f (B, n, n, C) is explained coarse to fine: at scale k the residual is area-downsampled to
pn_k x pn_k, snapped to its nearest codebook entries, and the codes are bicubic-upsampled back to n x n,
refined by a 3x3 conv Φ and subtracted from the residual. f̂ is the running sum of those refinements.
Token maps are (B, pn_k²) int32, row-major.
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from viar_jax.models import resample

HIGHEST = jax.lax.Precision.HIGHEST


def phi_ticks(num_phi: int) -> np.ndarray:
  if num_phi == 4:
    return np.linspace(1 / 3 / num_phi, 1 - 1 / 3 / num_phi, num_phi)
  return np.linspace(1 / 2 / num_phi, 1 - 1 / 2 / num_phi, num_phi)


def phi_index_table(num_scales: int, num_phi: int) -> Tuple[int, ...]:
  """Which Φ each scale uses: argmin |tick - k/(K-1)|.

  Evaluated in float64 numpy exactly as the reference does, because scales can sit on exact ties
  (K=10, four Φ: scales 2 and 7) that float64 rounding breaks in a specific way:
  K=10 -> (0,0,1,1,1,2,2,3,3,3), K=14 -> (0,0,0,1,1,1,1,2,2,2,2,3,3,3).
  """
  if num_phi < 1:
    raise ValueError(f'need at least one Φ, got {num_phi}')
  ticks = phi_ticks(num_phi)
  at = [k / (num_scales - 1) if num_scales > 1 else 0.0 for k in range(num_scales)]
  return tuple(int(np.argmin(np.abs(ticks - r))) for r in at)


class ResidualQuantization(NamedTuple):
  """Everything one residual pass over the scales gives (`MultiScaleQuantizer.residual_pass`)."""
  indices: List[jax.Array]  # per scale (B, pn²) int32
  f_hats: List[jax.Array]  # running f̂ after each scale, (B, n, n, C); the last is the quantized f
  var_input: jax.Array  # (B, L - pn_0², C): f̂ area-downsampled to each next scale (teacher forcing)
  vq_loss: jax.Array  # () mean over scales of β·‖sg(f̂) - f‖² + ‖f̂ - sg(f)‖²; 0 from given indices
  code_hits: jax.Array  # (K, V) int32 codebook hits per scale


class Phi(nn.Module):
  """Φ(h) = (1 - r)·h + r·conv3x3(h): the learnt refinement of an upsampled code map."""
  resi_ratio: float

  @nn.compact
  def __call__(self, h_BhwC):
    c = h_BhwC.shape[-1]
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (3, 3, c, c))
    bias = self.param('bias', nn.initializers.zeros_init(), (c,))
    conv = jax.lax.conv_general_dilated(h_BhwC, kernel, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return (1 - self.resi_ratio) * h_BhwC + self.resi_ratio * (conv + bias)


class PhiBank(nn.Module):
  """The reference's `PhiShared` (num_phi == 1: `qresi`) / `PhiPartiallyShared` (`qresi_ls.{i}`)."""
  resi_ratio: float
  num_phi: int

  def setup(self):
    if self.num_phi == 1:
      self.qresi = Phi(self.resi_ratio)
    else:
      self.qresi_ls = [Phi(self.resi_ratio) for _ in range(self.num_phi)]

  @property
  def phis(self) -> Tuple[Phi, ...]:
    return (self.qresi,) if self.num_phi == 1 else tuple(self.qresi_ls)


class MultiScaleQuantizer(nn.Module):
  """Codebook + Φ bank.

  share_quant_resi: 0 -> one Φ per scale (or `default_qresi_counts`), 1 -> one shared Φ,
  N > 1 -> N Φ spread over the scales by `phi_index_table`. |resi_ratio| <= 1e-6 -> Φ is the identity.
  """
  vocab_size: int
  z_channels: int
  patch_nums: Sequence[int]
  beta: float = 0.25
  using_znorm: bool = False
  resi_ratio: float = 0.5  # the reference's `quant_resi`
  share_quant_resi: int = 4
  default_qresi_counts: int = 0

  def setup(self):
    self.embedding = nn.Embed(self.vocab_size, self.z_channels,
                              embedding_init=_symmetric_uniform(1 / self.vocab_size))
    ratio = abs(self.resi_ratio)
    if ratio <= 1e-6:
      return
    if self.share_quant_resi == 0:  # one Φ per scale, named like the reference's `quant_resi.{i}`
      self.quant_resi = [Phi(ratio) for _ in range(self.default_qresi_counts or self.num_scales)]
    else:
      self.quant_resi = PhiBank(ratio, self.share_quant_resi)

  @property
  def phis(self) -> Tuple[Phi, ...]:
    if abs(self.resi_ratio) <= 1e-6:
      return ()
    return tuple(self.quant_resi) if self.share_quant_resi == 0 else self.quant_resi.phis

  @property
  def num_scales(self) -> int:
    return len(self.patch_nums)

  @property
  def latent_size(self) -> int:
    return self.patch_nums[-1]

  def phi(self, k: int, h_BhwC):
    if not self.phis:
      return h_BhwC
    if self.is_initializing():  # create every Φ's params even if this config never reaches some
      for p in self.phis:
        p(h_BhwC)
    return self.phis[phi_index_table(self.num_scales, len(self.phis))[k]](h_BhwC)

  # --- codes <-> latents -------------------------------------------------------------------------

  def codebook(self) -> jax.Array:
    return self.embedding.embedding

  def lookup(self, idx_Bl, pn: int):
    """(B, pn²) token ids -> (B, pn, pn, C) code vectors."""
    return jnp.take(self.codebook(), idx_Bl, axis=0).reshape(idx_Bl.shape[0], pn, pn, -1)

  def upsample_refine(self, k: int, h_BpnpnC):
    """Φ_j(k)(Up_k(h)): the contribution of scale k to f̂ at latent resolution."""
    return self.phi(k, resample.resize(h_BpnpnC, self.latent_size, 'bicubic'))

  def nearest_code(self, z_BpnpnC):
    """Nearest codebook entry per position, in fp32 as the reference: (B, pn, pn, C) -> (B, pn²)."""
    b = z_BpnpnC.shape[0]
    z_NC = z_BpnpnC.reshape(-1, z_BpnpnC.shape[-1]).astype(jnp.float32)
    e_VC = self.codebook().astype(jnp.float32)
    if self.using_znorm:
      normalize = lambda a: a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
      idx_N = jnp.argmax(jnp.dot(normalize(z_NC), normalize(e_VC).T, precision=HIGHEST), axis=1)
    else:
      d_NV = (jnp.sum(z_NC**2, axis=1, keepdims=True) + jnp.sum(e_VC**2, axis=1)
              - 2 * jnp.dot(z_NC, e_VC.T, precision=HIGHEST))
      idx_N = jnp.argmin(d_NV, axis=1)
    return idx_N.astype(jnp.int32).reshape(b, -1)

  def residual_pass(self, f_BhwC=None, indices: Optional[Sequence[jax.Array]] = None
                    ) -> ResidualQuantization:
    """The residual quantization loop, once for every use: tokenizing, teacher forcing, training.

    From a latent f (B, n, n, C): at each scale the residual is area-downsampled, snapped to its
    nearest codes, and their refined upsampling is added to f̂ and taken off the residual. From
    given token maps (all scales, or all but the last): the same loop with those codes. Outputs a
    caller does not use cost nothing under jit.
    """
    if (f_BhwC is None) == (indices is None):
      raise ValueError('residual_pass takes exactly one of a latent f or token maps')
    if f_BhwC is not None:
      f_BhwC = f_BhwC.astype(jnp.float32)
      f_sg = jax.lax.stop_gradient(f_BhwC)
      f_rest, f_hat = f_sg, jnp.zeros_like(f_sg)
      num_scales = self.num_scales
    else:
      n = self.latent_size
      f_hat = jnp.zeros((indices[0].shape[0], n, n, self.z_channels), self.codebook().dtype)
      num_scales = len(indices)
    idx_list, f_hats, chunks, hits, loss = [], [], [], [], jnp.float32(0.0)
    for k in range(num_scales):
      pn = self.patch_nums[k]
      if indices is None:
        idx_Bl = self.nearest_code(resample.resize(f_rest, pn, 'area'))
      else:
        idx_Bl = indices[k]
      h = self.upsample_refine(k, self.lookup(idx_Bl, pn))
      f_hat = f_hat + h
      if indices is None:
        f_rest = f_rest - h
        # β·‖sg(f̂) - f‖² (commitment, trains the encoder) + ‖f̂ - sg(f)‖² (trains codebook and Φ).
        loss = loss + self.beta * jnp.mean((jax.lax.stop_gradient(f_hat) - f_BhwC)**2)
        loss = loss + jnp.mean((f_hat - f_sg)**2)
      idx_list.append(idx_Bl)
      f_hats.append(f_hat)
      hits.append(jnp.bincount(idx_Bl.reshape(-1), length=self.vocab_size))
      if k + 1 < self.num_scales:
        pn_next = self.patch_nums[k + 1]
        nxt = resample.resize(f_hat, pn_next, 'area')
        chunks.append(nxt.reshape(nxt.shape[0], pn_next * pn_next, -1))
    return ResidualQuantization(idx_list, f_hats, jnp.concatenate(chunks, axis=1),
                                loss / self.num_scales, jnp.stack(hits))

  def next_ar_input(self, k: int, f_hat_BhwC, h_BpnpnC):
    """One autoregressive step: add scale k's codes to f̂; return (f̂, input for scale k+1 or f̂)."""
    if k == self.num_scales - 1:
      f_hat_BhwC = f_hat_BhwC + self.phi(k, h_BpnpnC)
      return f_hat_BhwC, f_hat_BhwC
    f_hat_BhwC = f_hat_BhwC + self.upsample_refine(k, h_BpnpnC)
    return f_hat_BhwC, resample.resize(f_hat_BhwC, self.patch_nums[k + 1], 'area')

  def __call__(self, f_BhwC):
    """Training forward: (straight-through f̂, VQ loss, per-scale codebook hit counts (K, V))."""
    rq = self.residual_pass(f_BhwC)
    f_BhwC = f_BhwC.astype(jnp.float32)
    f_hat_st = jax.lax.stop_gradient(rq.f_hats[-1]) - jax.lax.stop_gradient(f_BhwC) + f_BhwC
    return f_hat_st, rq.vq_loss, rq.code_hits


def _symmetric_uniform(bound):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


# --- codebook statistics and training-side codebook maintenance -----------------------------------
# Pure functions on plain arrays (no module state): used by viar_jax.train.tokenizer_step and
# viar_jax.eval.tokenizer_quality. None of them changes the quantizer's forward computation.


def usage_and_perplexity(hits_KV) -> Tuple[jax.Array, jax.Array]:
  """(K, V) code hit counts (or any non-negative weights) per scale -> (usage (K,), perplexity (K,)).

  usage: the fraction of the V codes with a positive count; perplexity: exp(entropy) of the scale's
  code distribution, V when uniform, 1 when a single code takes everything (and 1 for no hits).
  """
  hits_KV = jnp.asarray(hits_KV, jnp.float32)
  usage = jnp.mean((hits_KV > 0).astype(jnp.float32), axis=1)
  p = hits_KV / jnp.maximum(jnp.sum(hits_KV, axis=1, keepdims=True), 1e-12)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=1)
  return usage, jnp.exp(entropy)


def kmeans(x_NC, key, num_codes: int, iters: int = 10, weights_N=None) -> jax.Array:
  """Lloyd's k-means with k-means++ seeding -> (num_codes, C) centroids; jit-compatible and
  deterministic given `key` (the same on every device when the inputs are).

  weights_N: optional non-negative per-vector weights (0 masks a vector out). A cluster that loses
  all its points keeps its previous centroid.
  """
  x_NC = jnp.asarray(x_NC, jnp.float32)
  n = x_NC.shape[0]
  w = jnp.ones((n,), jnp.float32) if weights_N is None else jnp.asarray(weights_N, jnp.float32)
  sq = jnp.sum(x_NC**2, axis=1)

  def dist2(c_VC):  # (N, V) squared distances
    return jnp.maximum(sq[:, None] + jnp.sum(c_VC**2, axis=1)[None]
                       - 2 * jnp.dot(x_NC, c_VC.T, precision=HIGHEST), 0.0)

  # k-means++: each next seed drawn with probability ∝ weight · distance² to the nearest seed.
  keys = jax.random.split(key, num_codes)
  first = jax.random.choice(keys[0], n, p=w / jnp.sum(w))
  cents = jnp.zeros((num_codes, x_NC.shape[1]), jnp.float32).at[0].set(x_NC[first])
  d_min = jnp.sum((x_NC - x_NC[first])**2, axis=1)

  def seed(i, carry):
    cents, d_min = carry
    p = w * d_min
    total = jnp.sum(p)
    p = jnp.where(total > 0, p / jnp.maximum(total, 1e-30), w / jnp.sum(w))
    j = jax.random.choice(keys[i], n, p=p)
    cents = cents.at[i].set(x_NC[j])
    return cents, jnp.minimum(d_min, jnp.sum((x_NC - x_NC[j])**2, axis=1))

  cents, _ = jax.lax.fori_loop(1, num_codes, seed, (cents, d_min))

  def lloyd(_, cents):
    assign = jax.nn.one_hot(jnp.argmin(dist2(cents), axis=1), num_codes) * w[:, None]  # (N, V)
    count = jnp.sum(assign, axis=0)
    mean = jnp.dot(assign.T, x_NC, precision=HIGHEST) / jnp.maximum(count, 1e-12)[:, None]
    return jnp.where(count[:, None] > 0, mean, cents)

  return jax.lax.fori_loop(0, iters, lloyd, cents)


def restart_dead_codes(codebook_VC, dead_V, candidates_NC, key, weights_N=None) -> jax.Array:
  """Replaces the codes where `dead_V` is True by candidate vectors drawn at random (without
  replacement while there are enough, weighted by `weights_N`); live codes are returned unchanged.
  Deterministic given `key`."""
  v = codebook_VC.shape[0]
  n = candidates_NC.shape[0]
  w = jnp.ones((n,), jnp.float32) if weights_N is None else jnp.asarray(weights_N, jnp.float32)
  # Gumbel top-k: v distinct draws ∝ w (as long as at least v candidates have positive weight).
  g = jnp.log(jnp.maximum(w, 1e-30)) + jax.random.gumbel(key, (n,))
  g = jnp.where(w > 0, g, -jnp.inf)
  if n >= v:
    pick = jax.lax.top_k(g, v)[1]
  else:
    pick = jax.random.choice(key, n, (v,), p=w / jnp.sum(w))
  new = candidates_NC[pick].astype(codebook_VC.dtype)
  return jnp.where(dead_V[:, None], new, codebook_VC)
