"""Transformer pieces of VAR: AdaLN self-attention block, attention, FFN, AdaLN-before-head.

Shapes: x_BLC tokens, cond_BD class condition (D = C), mask_LS boolean (True = may attend).
Parameter names follow the reference state dict (`attn.mat_qkv`, `ffn.fc1`, `ada_lin`, ...).

KV cache (sampling): `cache = (k_BSHd, v_BSHd, start)` with preallocated buffers; the block writes this
call's keys/values at [start, start + L) and attends to [0, start + L). `start` is a Python int, so
every scale is a static slice.
"""
import math
from typing import TYPE_CHECKING, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:  # blocks only read its fields; the transformer module imports this one
  from viar_jax.models.transformer import TransformerConfig

MAX_SCALE_MUL = float(np.log(np.float32(100.0)))  # the reference clamps the log-scale at ln 100
Cache = Tuple[jax.Array, jax.Array, int]


def trunc_normal(std: float, factor: float = 1.0) -> Callable:
  """The reference's `trunc_normal_(std, a=-2, b=2)` (absolute bounds), times `factor`."""
  def init(key, shape, dtype=jnp.float32):
    x = jax.random.truncated_normal(key, -2.0 / std, 2.0 / std, shape, jnp.float32)
    return (x * std * factor).astype(dtype)
  return init


def adaln_init(std: float, num_gammas: int, gamma_factor: float, other_factor: float) -> Callable:
  """AdaLN projection kernel (in, k·C): the first `num_gammas`·C columns ×gamma_factor, rest ×other."""
  def init(key, shape, dtype=jnp.float32):
    w = trunc_normal(std)(key, shape, jnp.float32)
    is_gamma = jnp.arange(shape[-1]) < num_gammas * shape[0]  # kernel (C, k·C), gammas first
    return (w * jnp.where(is_gamma, gamma_factor, other_factor)).astype(dtype)
  return init


def layer_norm(x, eps: float):
  """LayerNorm without affine params, biased variance, statistics in fp32."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def drop_path(module: nn.Module, x_BLC, rate: float, deterministic: bool):
  """Stochastic depth: drop a sample's whole branch with probability `rate`, rescale the rest."""
  if deterministic or rate <= 0.0:
    return x_BLC
  keep = jax.random.bernoulli(module.make_rng('dropout'), 1.0 - rate, (x_BLC.shape[0], 1, 1))
  return jnp.where(keep, x_BLC / (1.0 - rate), 0.0).astype(x_BLC.dtype)


class SelfAttention(nn.Module):
  """Multi-head self-attention with VAR's qkv biases (q, v learnt, k fixed at zero).

  attn_l2_norm: q and k are L2-normalised per head and q is scaled by exp(min(s_h, ln 100)), logits
  unscaled; otherwise logits = q·k · 0.25/√d.
  """
  num_heads: int
  attn_l2_norm: bool = True
  attn_drop_rate: float = 0.0
  proj_drop_rate: float = 0.0
  init_std: float = 0.02
  proj_init_factor: float = 1.0
  dtype: jnp.dtype = jnp.float32
  implementation: Optional[str] = None  # for jax.nn.dot_product_attention: None, 'xla', 'cudnn'

  @nn.compact
  def __call__(self, x_BLC, mask_LS=None, deterministic: bool = True, cache: Optional[Cache] = None):
    b, l, c = x_BLC.shape
    h = self.num_heads
    d = c // h
    q_bias = self.param('q_bias', nn.initializers.zeros_init(), (c,))
    v_bias = self.param('v_bias', nn.initializers.zeros_init(), (c,))
    qkv = nn.Dense(3 * c, use_bias=False, dtype=self.dtype, kernel_init=trunc_normal(self.init_std),
                   name='mat_qkv')(x_BLC)
    qkv = qkv + jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(qkv.dtype)
    q, k, v = jnp.moveaxis(qkv.reshape(b, l, 3, h, d), 2, 0)  # head-major split of each C
    if self.attn_l2_norm:
      log_scale = self.param('scale_mul_1H11', nn.initializers.constant(math.log(4.0)), (1, h, 1, 1))
      scale_H1 = jnp.exp(jnp.minimum(log_scale.reshape(h, 1), MAX_SCALE_MUL))
      normalize = lambda a: a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
      q = (normalize(q.astype(jnp.float32)) * scale_H1).astype(self.dtype)
      k = normalize(k.astype(jnp.float32)).astype(self.dtype)
      logit_scale = 1.0
    else:
      logit_scale = 0.25 / math.sqrt(d)

    new_cache = None
    if cache is not None:
      k_buf, v_buf, start = cache
      k_buf = jax.lax.dynamic_update_slice_in_dim(k_buf, k.astype(k_buf.dtype), start, axis=1)
      v_buf = jax.lax.dynamic_update_slice_in_dim(v_buf, v.astype(v_buf.dtype), start, axis=1)
      new_cache = (k_buf, v_buf, start + l)
      k, v = k_buf[:, :start + l].astype(q.dtype), v_buf[:, :start + l].astype(q.dtype)

    if self.attn_drop_rate > 0 and not deterministic:
      logits = jnp.einsum('blhd,bshd->bhls', q, k).astype(jnp.float32) * logit_scale
      if mask_LS is not None:
        logits = jnp.where(mask_LS, logits, -jnp.inf)
      probs = nn.Dropout(self.attn_drop_rate)(jax.nn.softmax(logits, -1), deterministic=False)
      o = jnp.einsum('bhls,bshd->blhd', probs.astype(v.dtype), v)
    else:
      mask = None if mask_LS is None else mask_LS[None, None]
      o = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=logit_scale,
                                       implementation=self.implementation)
    o = nn.Dense(c, dtype=self.dtype, name='proj',
                 kernel_init=trunc_normal(self.init_std, self.proj_init_factor))(o.reshape(b, l, c))
    o = nn.Dropout(self.proj_drop_rate)(o, deterministic=deterministic or self.proj_drop_rate == 0)
    return o if cache is None else (o, new_cache)


class FFN(nn.Module):
  """fc1 C -> hidden, GELU (tanh approximation), fc2 hidden -> C."""
  hidden: int
  drop_rate: float = 0.0
  init_std: float = 0.02
  fc2_init_factor: float = 1.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BLC, deterministic: bool = True):
    c = x_BLC.shape[-1]
    h = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=trunc_normal(self.init_std),
                 name='fc1')(x_BLC)
    h = nn.Dense(c, dtype=self.dtype, kernel_init=trunc_normal(self.init_std, self.fc2_init_factor),
                 name='fc2')(jax.nn.gelu(h, approximate=True))
    return nn.Dropout(self.drop_rate)(h, deterministic=deterministic or self.drop_rate == 0)


class AdaLNBlock(nn.Module):
  """VAR's `AdaLNSelfAttn`: pre-norm block modulated by the class condition.

  Modulation chunks, in order: γ1, γ2, scale1, scale2, shift1, shift2.
    x += γ1 · Attn(LN(x)·(1 + scale1) + shift1);  x += γ2 · FFN(LN(x)·(1 + scale2) + shift2)
  shared_aln: `cond` is the already projected (B, 1, 6, C) shared modulation, and the block adds its
  own `ada_gss` (1, 1, 6, C) instead of owning an `ada_lin`.
  """
  config: 'TransformerConfig'  # width-independent block settings: heads, norms, dropout, init
  drop_path_rate: float = 0.0  # this block's stochastic depth (rates grow with depth)

  @nn.compact
  def __call__(self, x_BLC, cond, mask_LS=None, deterministic: bool = True,
               cache: Optional[Cache] = None):
    cfg, c = self.config, x_BLC.shape[-1]
    dtype = jnp.dtype(cfg.dtype)
    if cfg.shared_aln:
      def gss_init(key, shape, dtype=jnp.float32):
        g = jax.random.normal(key, shape, jnp.float32) / math.sqrt(c)
        return g * jnp.array([cfg.aln_gamma_init] * 2 + [cfg.aln_init] * 4)[:, None]
      mod = self.param('ada_gss', gss_init, (1, 1, 6, c)) + cond  # cond: (B, 1, 6, C)
    else:
      mod = nn.Dense(6 * c, dtype=jnp.float32, name='ada_lin',
                     kernel_init=adaln_init(cfg.init_std, 2, cfg.aln_gamma_init, cfg.aln_init))(
                         jax.nn.silu(cond)).reshape(-1, 1, 6, c)
    gamma1, gamma2, scale1, scale2, shift1, shift2 = [mod[:, :, i].astype(dtype) for i in range(6)]

    attn = SelfAttention(num_heads=cfg.num_heads, attn_l2_norm=cfg.attn_l2_norm,
                         attn_drop_rate=cfg.attn_drop_rate, proj_drop_rate=cfg.drop_rate,
                         init_std=cfg.init_std, proj_init_factor=cfg.residual_init_factor,
                         dtype=dtype, implementation=cfg.attn_implementation, name='attn')
    h = layer_norm(x_BLC, cfg.norm_eps) * (1 + scale1) + shift1
    out = attn(h, mask_LS, deterministic, cache)
    a, new_cache = out if cache is not None else (out, None)
    x_BLC = x_BLC + drop_path(self, a * gamma1, self.drop_path_rate, deterministic)
    ffn = FFN(hidden=round(c * cfg.mlp_ratio), drop_rate=cfg.drop_rate, init_std=cfg.init_std,
              fc2_init_factor=cfg.residual_init_factor, dtype=dtype, name='ffn')
    h = layer_norm(x_BLC, cfg.norm_eps) * (1 + scale2) + shift2
    x_BLC = x_BLC + drop_path(self, ffn(h, deterministic) * gamma2, self.drop_path_rate, deterministic)
    return x_BLC if cache is None else (x_BLC, new_cache)


class AdaLNBeforeHead(nn.Module):
  """LN(h)·(1 + scale) + shift with (scale, shift) = Linear(SiLU(cond)) split [scale | shift]."""
  norm_eps: float = 1e-6
  init_std: float = 0.02
  aln_init: float = 0.5

  @nn.compact
  def __call__(self, h_BLC, cond_BD):
    c = h_BLC.shape[-1]
    mod = nn.Dense(2 * c, name='ada_lin', kernel_init=trunc_normal(self.init_std, self.aln_init))(
        jax.nn.silu(cond_BD)).reshape(-1, 1, 2, c)
    return layer_norm(h_BLC, self.norm_eps) * (1 + mod[:, :, 0]) + mod[:, :, 1]
