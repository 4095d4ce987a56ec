"""VAR and VIAR next-scale prediction transformers (one Linen module, `implicit` switches to VIAR).

VAR:   embeddings -> `depth` AdaLN blocks (block-causal over scales) -> AdaLN head -> logits.
VIAR:  embeddings -> pre blocks -> implicit layer z <- Block(P([z; x]), c) from z0 = x -> post blocks
       -> head. Training uses Jacobian-free backprop (`solvers.jfb_fixed_point`): K no-grad
       iterations, then m differentiated ones.

Teacher forcing: `model.apply(variables, labels_B, x_BLCv, ...)` with x_BLCv the tokenizer's
teacher-forcing input (B, L - 1, Cvae) -> fp32 logits (B, L, V). Labels lie in [0, num_classes];
num_classes is the null (unconditional) class.
"""
import dataclasses
import math
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from viar_jax.models import blocks, implicit, solvers


# What a rematerialised block keeps for the backward pass (None: no rematerialisation).
REMAT_POLICIES = {'none': None, 'dots_saveable': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                  'full': jax.checkpoint_policies.nothing_saveable}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """VAR (implicit=False) or VIAR (implicit=True). Width and heads default to VAR's depth rule.

  `depth` is the nominal depth: it drives the width rule, the residual init rescale 1/√(2·depth) and
  the drop-path indices, also for VIAR (whose real stack is pre_depth + 1 + post_depth blocks).
  """
  depth: int = 16
  embed_dim: Optional[int] = None  # default 64·depth
  num_heads: Optional[int] = None  # default depth
  num_classes: int = 1000
  patch_nums: Tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
  vocab_size: int = 4096
  z_channels: int = 32
  mlp_ratio: float = 4.0
  attn_l2_norm: bool = True
  shared_aln: bool = False
  norm_eps: float = 1e-6
  drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: Optional[float] = None  # default 0.1·depth/24
  cond_drop_rate: float = 0.1
  # Initialisation (reference `init_weights` defaults; recipes override aln_gamma_init).
  head_init: float = 0.02
  aln_init: float = 0.5
  aln_gamma_init: float = 1e-5
  # VIAR.
  implicit: bool = False
  pre_depth: int = 5
  post_depth: int = 5
  no_grad_iters_range: Tuple[int, int] = (0, 10)
  with_grad_iters_range: Tuple[int, int] = (1, 12)
  eval_iters: int = 10  # implicit iterations of a deterministic teacher-forced forward
  # Numerics.
  dtype: str = 'float32'  # compute dtype of the blocks; params, embeddings, head stay fp32
  # Rematerialisation of the explicit blocks in training: 'none', 'dots_saveable' (keep matmul
  # outputs, recompute the rest) or 'full' (keep only block inputs). No effect on the numbers.
  remat: str = 'none'
  # Attention kernel: 'auto' (cuDNN on CUDA GPUs in bf16/fp16, Pallas splash on TPU, else XLA;
  # None means the same), 'xla', 'cudnn' or 'splash'. See viar_jax.models.blocks.
  attn_implementation: Optional[str] = 'auto'

  def __post_init__(self):
    fix = lambda name, value: object.__setattr__(self, name, value)
    fix('patch_nums', tuple(int(p) for p in self.patch_nums))
    fix('no_grad_iters_range', tuple(self.no_grad_iters_range))
    fix('with_grad_iters_range', tuple(self.with_grad_iters_range))
    if self.embed_dim is None:
      fix('embed_dim', 64 * self.depth)
    if self.num_heads is None:
      fix('num_heads', self.depth)
    if self.drop_path_rate is None:
      fix('drop_path_rate', 0.1 * self.depth / 24)
    for name in ('depth', 'embed_dim', 'num_heads', 'num_classes', 'vocab_size', 'z_channels'):
      if getattr(self, name) < 1:
        raise ValueError(f'TransformerConfig.{name} must be positive, got {getattr(self, name)}')
    if self.embed_dim % self.num_heads:
      raise ValueError(f'embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}')
    if not self.patch_nums or any(a >= b for a, b in zip(self.patch_nums, self.patch_nums[1:])) \
        or self.patch_nums[0] < 1:
      raise ValueError(f'patch_nums must be positive and strictly increasing, got {self.patch_nums}')
    for name in ('drop_rate', 'attn_drop_rate', 'drop_path_rate', 'cond_drop_rate'):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f'TransformerConfig.{name} must lie in [0, 1), got {getattr(self, name)}')
    if self.dtype not in ('float32', 'bfloat16', 'float16'):
      raise ValueError(f"dtype must be 'float32', 'bfloat16' or 'float16', got {self.dtype!r}")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f'remat must be one of {tuple(REMAT_POLICIES)}, got {self.remat!r}')
    blocks.check_attn_implementation(self.attn_implementation, self.dtype,
                                     self.embed_dim // self.num_heads)
    if self.implicit:
      if self.pre_depth < 0 or self.post_depth < 0 or self.pre_depth + self.post_depth > self.depth:
        raise ValueError(f'VIAR needs 0 <= pre_depth, post_depth and pre_depth + post_depth <= depth; '
                         f'got pre {self.pre_depth}, post {self.post_depth}, depth {self.depth}')
      (k0, k1), (m0, m1) = self.no_grad_iters_range, self.with_grad_iters_range
      if not 0 <= k0 <= k1 or not 0 <= m0 <= m1 or m1 < 1:
        raise ValueError(f'bad JFB ranges: no_grad {self.no_grad_iters_range}, '
                         f'with_grad {self.with_grad_iters_range}')

  @property
  def seq_len(self) -> int:
    return sum(p * p for p in self.patch_nums)

  @property
  def scale_bounds(self) -> Tuple[Tuple[int, int], ...]:
    """[begin, end) token range of every scale."""
    ends = np.cumsum([p * p for p in self.patch_nums])
    return tuple((int(e - p * p), int(e)) for p, e in zip(self.patch_nums, ends))

  @property
  def init_std(self) -> float:
    return math.sqrt(1 / self.embed_dim / 3)

  def drop_path_rates(self) -> Tuple[float, ...]:
    return tuple(float(r) for r in np.linspace(0, self.drop_path_rate, self.depth))

  @property
  def residual_init_factor(self) -> float:
    """Init rescale of the blocks' residual output projections (attn.proj, ffn.fc2)."""
    return 1 / math.sqrt(2 * self.depth)


def token_levels(patch_nums) -> np.ndarray:
  """(L,) scale index of every token."""
  return np.concatenate([np.full(p * p, k, np.int32) for k, p in enumerate(patch_nums)])


def block_causal_mask(patch_nums) -> np.ndarray:
  """(L, L) bool: a query at scale a may attend a key at scale b iff b <= a."""
  lvl = token_levels(patch_nums)
  return lvl[:, None] >= lvl[None, :]


def make_block(c: TransformerConfig, index: int) -> blocks.AdaLNBlock:
  """The block at position `index` of the nominal depth (its drop-path rate)."""
  return blocks.AdaLNBlock(c, c.drop_path_rates()[index])


def implicit_layer(c: TransformerConfig) -> implicit.ImplicitLayer:
  """VIAR's implicit layer, with the drop-path rate of the middle of the nominal depth."""
  return implicit.ImplicitLayer(c, c.drop_path_rates()[c.depth // 2])


class Transformer(nn.Module):
  config: TransformerConfig

  def setup(self):
    c = self.config
    std, dim = c.init_std, c.embed_dim
    self.class_emb = nn.Embed(c.num_classes + 1, dim, embedding_init=blocks.trunc_normal(std))
    self.lvl_embed = nn.Embed(len(c.patch_nums), dim, embedding_init=blocks.trunc_normal(std))
    self.word_embed = nn.Dense(dim, kernel_init=blocks.trunc_normal(std))
    self.pos_start = self.param('pos_start', blocks.trunc_normal(std), (1, 1, dim))
    self.pos_1LC = self.param('pos_1LC', blocks.trunc_normal(std), (1, c.seq_len, dim))
    if c.shared_aln:
      self.shared_ada_lin = nn.Dense(6 * dim, kernel_init=blocks.adaln_init(
          std, 2, c.aln_gamma_init, c.aln_init))
    if c.implicit:
      self.pre_blocks = [make_block(c, i) for i in range(c.pre_depth)]
      # Shares this module's scope, so its params keep the reference's top-level names.
      self.implicit = implicit_layer(c)
      nn.share_scope(self, self.implicit)
      self.post_blocks = [make_block(c, c.depth - c.post_depth + i) for i in range(c.post_depth)]
    else:
      self.blocks = [make_block(c, i) for i in range(c.depth)]
    self.head_nm = blocks.AdaLNBeforeHead(c.norm_eps, std, c.aln_init)
    self.head = nn.Dense(c.vocab_size, kernel_init=blocks.trunc_normal(std, c.head_init))

  # --- pieces shared by teacher forcing and sampling -------------------------------------------------

  def check_labels(self, labels_B):
    if labels_B.ndim != 1 or not jnp.issubdtype(labels_B.dtype, jnp.integer):
      raise ValueError(f'labels must be a 1-D integer array, got {labels_B.dtype} {labels_B.shape}')
    if not isinstance(labels_B, jax.core.Tracer):
      labels_np = np.asarray(labels_B)
      lo, hi = int(labels_np.min()), int(labels_np.max())
      if lo < 0 or hi > self.config.num_classes:
        raise ValueError(f'class labels must lie in [0, {self.config.num_classes}] '
                         f'({self.config.num_classes} = null class), got range [{lo}, {hi}]')

  def condition(self, labels_B):
    """Class embedding (B, C) and what the blocks are modulated by (the shared projection if any)."""
    cond_BD = self.class_emb(labels_B)
    if self.config.shared_aln:
      return cond_BD, self.shared_ada_lin(jax.nn.silu(cond_BD)).reshape(-1, 1, 6, cond_BD.shape[-1])
    return cond_BD, cond_BD

  def embed_first(self, cond_BD):
    """Token 0 (the SOS slot): cond + pos_start + lvl_embed[0] + pos_1LC[0] -> (B, 1, C)."""
    return (cond_BD[:, None] + self.pos_start + self.lvl_embed.embedding[0] + self.pos_1LC[:, :1])

  def embed_tokens(self, x_BlCv, begin: int, end: int):
    """word_embed(inputs) + level + position embeddings of tokens [begin, end)."""
    lvl = jnp.asarray(token_levels(self.config.patch_nums)[begin:end])
    return (self.word_embed(x_BlCv.astype(jnp.float32)) + self.lvl_embed(lvl)[None]
            + self.pos_1LC[:, begin:end])

  def logits(self, h_BLC, cond_BD):
    """AdaLN head in fp32 -> (B, L, V)."""
    return self.head(self.head_nm(h_BLC.astype(jnp.float32), cond_BD)).astype(jnp.float32)

  # --- KV-cached inference (see viar_jax.sample.sampler) ---------------------------------------------------

  def sample_first(self, labels_B):
    """-> (SOS tokens (B, 1, C) in the compute dtype, class embedding cond_BD, block condition)."""
    cond_BD, cond = self.condition(labels_B)
    return self.embed_first(cond_BD).astype(self.config.dtype), cond_BD, cond

  def sample_next(self, nxt_BlCv, k: int):
    """Embedded inputs of scale k (the area-downsampled f̂, (B, pn_k², Cvae))."""
    begin, end = self.config.scale_bounds[k]
    return self.embed_tokens(nxt_BlCv, begin, end).astype(self.config.dtype)

  def sample_blocks(self, stack: str, x_BlC, cond, caches, start: int):
    """Runs a block stack ('blocks', 'pre_blocks' or 'post_blocks') with per-block KV caches."""
    new_caches = []
    for blk, (k_buf, v_buf) in zip(getattr(self, stack), caches):
      x_BlC, (k_buf, v_buf, _) = blk(x_BlC, cond, None, True, (k_buf, v_buf, start))
      new_caches.append((k_buf, v_buf))
    return x_BlC, new_caches

  def sample_head(self, h_BlC, cond_BD):
    return self.logits(h_BlC, cond_BD)

  # --- teacher forcing -------------------------------------------------------------------------------

  def __call__(self, labels_B, x_BLCv, *, deterministic: bool = True,
               no_grad_iters=None, with_grad_iters=None):
    """Teacher-forced logits (B, L, V) fp32.

    `x_BLCv` may also be a scale prefix (B, e - 1, Cvae) with e the end of some scale: the logits
    of tokens [0, e) are then exactly those of the full sequence (attention is block-causal), which
    is what progressive training trains on.

    Not deterministic: labels are replaced by the null class with probability cond_drop_rate and
    drop-path/dropout are active (rng stream 'dropout'); VIAR draws K and m from rng stream 'jfb'
    unless given. Deterministic: no randomness; VIAR runs `no_grad_iters` (default eval_iters) and
    `with_grad_iters` (default 0) iterations.
    """
    c = self.config
    self.check_labels(labels_B)
    first = c.patch_nums[0]**2
    ends = [end for _, end in c.scale_bounds]
    end = x_BLCv.shape[1] + first if x_BLCv.ndim == 3 else -1
    if x_BLCv.shape[0] != labels_B.shape[0] or x_BLCv.shape[-1] != c.z_channels or end not in ends:
      raise ValueError(f'teacher-forcing input must be (B, L - 1, Cvae) = '
                       f'{(labels_B.shape[0], c.seq_len - first, c.z_channels)} or a scale prefix '
                       f'(B, e - 1, Cvae) with e in {ends}; got {tuple(x_BLCv.shape)}')
    if not deterministic and c.cond_drop_rate > 0:
      drop = jax.random.uniform(self.make_rng('dropout'), labels_B.shape) < c.cond_drop_rate
      labels_B = jnp.where(drop, c.num_classes, labels_B)
    cond_BD, cond = self.condition(labels_B)
    x = jnp.concatenate([self.embed_first(cond_BD),
                         self.embed_tokens(x_BLCv, first, end)], axis=1)
    x = x.astype(c.dtype)
    mask = jnp.asarray(block_causal_mask(c.patch_nums)[:end, :end])
    if not c.implicit:
      return self.logits(self._run_stack(self.blocks, x, cond, mask, deterministic), cond_BD)

    x = self._run_stack(self.pre_blocks, x, cond, mask, deterministic)
    no_grad_iters, with_grad_iters = self._jfb_iters(deterministic, no_grad_iters, with_grad_iters)
    # What this forward ran, for the training log (collection 'intermediates', if made mutable).
    self.sow('intermediates', 'jfb_iters', jnp.stack([jnp.asarray(no_grad_iters, jnp.int32),
                                                       jnp.asarray(with_grad_iters, jnp.int32)]))
    # The equilibrium state stays float32 under half-precision compute, so solver residuals and
    # mixing are not limited by its rounding; the blocks still compute in c.dtype.
    x = x.astype(jnp.float32)
    if self.is_initializing():
      self.implicit(x, x, cond, mask, deterministic)  # create the implicit params
    z = self._jfb(x, cond, mask, deterministic, no_grad_iters, with_grad_iters)
    z = self._run_stack(self.post_blocks, z.astype(c.dtype), cond, mask, deterministic)
    return self.logits(z, cond_BD)

  def _run_stack(self, stack, x, cond, mask, deterministic: bool):
    """A list of blocks in order, rematerialised per block as config.remat says."""
    apply = lambda blk, x, cond, mask: blk(x, cond, mask, deterministic)
    policy = REMAT_POLICIES[self.config.remat]
    if policy is not None and not deterministic:
      apply = nn.remat(apply, policy=policy)
    for blk in stack:
      x = apply(blk, x, cond, mask)
    return x

  def _jfb_iters(self, deterministic, no_grad_iters, with_grad_iters):
    c = self.config
    if deterministic:
      return (c.eval_iters if no_grad_iters is None else no_grad_iters,
              0 if with_grad_iters is None else with_grad_iters)
    if no_grad_iters is None or with_grad_iters is None:
      k, m = solvers.draw_jfb_iters(self.make_rng('jfb'), c.no_grad_iters_range,
                                    c.with_grad_iters_range)
      no_grad_iters = k if no_grad_iters is None else no_grad_iters
      with_grad_iters = m if with_grad_iters is None else with_grad_iters
    return no_grad_iters, with_grad_iters

  def _jfb(self, x, cond, mask, deterministic, no_grad_iters, with_grad_iters):
    """Runs the implicit layer as a pure function of its params so loops can close over them."""
    c = self.config
    params = implicit.ImplicitLayer.params_of(self.variables['params'])
    rngs = {'dropout': self.make_rng('dropout')} if not deterministic else {}
    # The drop-path mask of the implicit block is drawn once per forward and shared by its iterations.
    layer = self.implicit.pure()

    def step(p, z, inj):
      return layer.apply({'params': p}, z, inj, cond, mask, deterministic, rngs=rngs).astype(z.dtype)

    max_m = max(c.with_grad_iters_range[1], with_grad_iters if isinstance(with_grad_iters, int) else 0)
    return solvers.jfb_fixed_point(step, params, x, x, no_grad_iters=no_grad_iters,
                                   with_grad_iters=with_grad_iters, max_with_grad_iters=max_m)
