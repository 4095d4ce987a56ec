"""Transformer pieces of VAR: AdaLN self-attention block, attention, FFN, AdaLN-before-head.

Shapes: x_BLC tokens, cond_BD class condition (D = C), mask_LS boolean (True = may attend).
Parameter names follow the reference state dict (`attn.mat_qkv`, `ffn.fc1`, `ada_lin`, ...).

KV cache (sampling): `cache = (k_BHSd, v_BHSd, start)` with preallocated buffers; the block writes this
call's keys/values at [start, start + L) and attends to [0, start + L). `start` is a Python int, so
every scale is a static slice. Head-major buffers let both attention dots read the cache without
transposing it (`cached_attention`). A grouped cache `(k_GBHSd, v_GBHSd, start, g)` does the same in
group g (a traced index: VIAR's per-iteration caches, updated in place inside the iteration loop).

Attention implementation (`TransformerConfig.attn_implementation`, resolved per call at trace time by
`resolve_attention`):
  'xla'     jax.nn.dot_product_attention's XLA path (KV-cache calls: `cached_attention`, the same
            math arranged for the head-major cache); every backend, dtype and call.
  'cudnn'   cuDNN fused (flash) attention via jax.nn.dot_product_attention; CUDA GPUs, bfloat16 or
            float16, head dim a multiple of 8 (<= 128 before Hopper, <= 256 from Hopper on). The
            block-causal mask goes in as a bias; as cuDNN's backward with a bias needs even lengths,
            a teacher-forced sequence of odd length (a progressive-training prefix) is padded by one
            token that no real query attends. Used with the KV cache too (queries of one scale
            against the cache).
  'splash'  Pallas splash attention (TPU): the block-causal mask of `patch_nums` is a static
            `NumpyMask`, so fully masked key blocks are skipped. The sequence is padded to a multiple
            of SPLASH_BLOCK (680 -> 768 at 256px) with padded keys masked out and padded queries
            attending the real keys (no empty rows), then cut back. Teacher forcing only: the KV-cache
            calls of the sampler use 'xla'. Pallas kernels are not partitioned by XLA: under a mesh
            of Auto axes set with `jax.set_mesh` (as `sharding.make_mesh` makes) whose size divides
            the batch, the kernel runs in `jax.shard_map` over the batch (split over every mesh
            axis); otherwise a batch sharded over several devices is gathered for the kernel.
  'auto'    (default; None means the same) 'cudnn' on a CUDA GPU for bfloat16/float16 with a head dim
            that is a multiple of 8 and <= 128; 'splash' on TPU where it runs per device (one device,
            or a mesh it can shard_map over, see above); 'xla' otherwise. The KV-cache calls always
            'xla'. So on CPU, and for float32 everywhere but the TPU, 'auto' is 'xla'.
The backend is that of the mesh set with `jax.set_mesh` if any (what a TPU compile from a CPU host
needs), else of `jax.default_device` if set, else `jax.default_backend()`. With attention dropout
active (attn_drop_rate > 0 in training) the explicit softmax path is used whatever the setting.
"""
import contextlib
import math
from typing import TYPE_CHECKING, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:  # blocks only read its fields; the transformer module imports this one
  from viar_jax.models.transformer import TransformerConfig

MAX_SCALE_MUL = float(np.log(np.float32(100.0)))  # the reference clamps the log-scale at ln 100
Cache = tuple  # (k, v, start) or (k, v, start, group), see the module doc

ATTN_IMPLEMENTATIONS = ('auto', 'xla', 'cudnn', 'splash')
HALF_DTYPES = ('bfloat16', 'float16')
SPLASH_BLOCK = 128  # splash attention's q / kv block; the padded sequence is a multiple of it
_SPLASH_INTERPRET = [False]  # set by `splash_interpret`


@contextlib.contextmanager
def splash_interpret():
  """For tests and debugging off TPU: within this context the attention backend reads as 'tpu' and
  the splash kernel runs in Pallas interpret mode (slow; any backend)."""
  _SPLASH_INTERPRET.append(True)
  try:
    yield
  finally:
    _SPLASH_INTERPRET.pop()


def attention_backend() -> str:
  """The platform the attention is compiled for: 'cpu', 'gpu' (CUDA), 'rocm' or 'tpu'. From the mesh
  set with `jax.set_mesh` if any, else `jax.default_device` if set, else `jax.default_backend()`."""
  if _SPLASH_INTERPRET[-1]:
    return 'tpu'
  mesh = jax.sharding.get_abstract_mesh()
  default = jax.config.jax_default_device
  if not mesh.empty:
    platform = mesh.abstract_device.platform
  elif default is not None:
    platform = default if isinstance(default, str) else default.platform
  else:
    platform = jax.default_backend()
  platform = {'cuda': 'gpu'}.get(platform, platform)
  if platform == 'gpu':
    try:
      from jax.extend import backend as jax_backend  # pylint: disable=import-outside-toplevel
      if 'rocm' in jax_backend.get_backend('gpu').platform_version:
        return 'rocm'
    except (ImportError, RuntimeError, AttributeError):
      pass
  return platform


def check_attn_implementation(implementation: Optional[str], dtype: str, head_dim: int) -> None:
  """What a config can check without a backend: the name, and cuDNN's dtype and head dim."""
  if implementation is not None and implementation not in ATTN_IMPLEMENTATIONS:
    raise ValueError(f'attn_implementation must be one of {ATTN_IMPLEMENTATIONS} (or None = auto), '
                     f'got {implementation!r}')
  if implementation == 'cudnn':
    if jnp.dtype(dtype).name not in HALF_DTYPES:
      raise ValueError(f"attn_implementation='cudnn' (cuDNN fused attention) takes bfloat16 or "
                       f"float16 only, the compute dtype is {jnp.dtype(dtype).name}; use 'auto' or "
                       f"'xla' for float32")
    if head_dim % 8 or head_dim > 256:
      raise ValueError(f"attn_implementation='cudnn' needs a head dim that is a multiple of 8 and "
                       f"<= 256, got {head_dim}")


def resolve_attention(implementation: Optional[str], backend: str, dtype, *,
                      head_dim: Optional[int] = None, cached: bool = False,
                      per_device: bool = True) -> str:
  """The implementation one attention call uses: 'xla', 'cudnn' or 'splash' (see the module doc).

  A pure function of its arguments. backend: 'cpu', 'gpu' / 'cuda', 'rocm' or 'tpu'; dtype: the compute
  dtype; head_dim: checked for cuDNN where given; cached: a KV-cache (sampling) call; per_device:
  whether a Pallas kernel would run per device (`splash_runs_per_device`), else 'auto' keeps XLA on
  TPU. An explicit choice the backend cannot run is a ValueError.
  """
  name = jnp.dtype(dtype).name
  backend = {'cuda': 'gpu'}.get(backend, backend)
  check_attn_implementation(implementation, name, head_dim or 8)
  if implementation in (None, 'auto'):
    if cached:
      return 'xla'
    if backend == 'gpu' and name in HALF_DTYPES and (head_dim is None or (
        head_dim % 8 == 0 and head_dim <= 128)):
      return 'cudnn'
    return 'splash' if backend == 'tpu' and per_device else 'xla'
  if implementation == 'cudnn' and backend != 'gpu':
    raise ValueError(f"attn_implementation='cudnn' needs a CUDA GPU backend; the attention backend "
                     f"is {backend!r}. Use 'auto' or 'xla'")
  if implementation == 'splash':
    if backend != 'tpu':
      raise ValueError(f"attn_implementation='splash' is a TPU (Pallas) kernel; the attention backend "
                       f"is {backend!r}. Use 'auto' or 'xla' (to compile for a TPU topology from a "
                       f"CPU host, trace under jax.set_mesh with a mesh of the TPU devices)")
    return 'xla' if cached else 'splash'
  return implementation


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def padded_attention(q_BLHd, k_BLHd, v_BLHd, mask_LL, scale: float, multiple: int,
                     implementation: str = 'cudnn'):
  """Self-attention over a sequence padded to a multiple of `multiple`: padded keys are masked out,
  padded queries attend every real key (no empty softmax rows) and are cut off. Same values and
  gradients as the unpadded call. mask_LL: (L, L) bool or None."""
  l = q_BLHd.shape[1]
  lp = _round_up(l, multiple)
  if lp == l:
    mask = None if mask_LL is None else mask_LL[None, None]
    return jax.nn.dot_product_attention(q_BLHd, k_BLHd, v_BLHd, mask=mask, scale=scale,
                                        implementation=implementation)
  pad = lambda a: jnp.pad(a, ((0, 0), (0, lp - l), (0, 0), (0, 0)))
  real = jnp.ones((l, l), bool) if mask_LL is None else jnp.broadcast_to(mask_LL, (l, l))
  mask = jnp.zeros((lp, lp), bool).at[:l, :l].set(real).at[l:, :l].set(True)
  o = jax.nn.dot_product_attention(pad(q_BLHd), pad(k_BLHd), pad(v_BLHd), mask=mask[None, None],
                                   scale=scale, implementation=implementation)
  return o[:, :l]


def cudnn_attention(q_BLHd, k_BSHd, v_BSHd, mask, scale: float, cached: bool = False):
  """cuDNN fused attention. Teacher forcing: mask (L, L), odd L padded by one (see the module doc).
  KV cache: queries (B, l) against keys (B, S); mask None or broadcastable to (l, S)."""
  if not cached:
    return padded_attention(q_BLHd, k_BSHd, v_BSHd, mask, scale, 2, 'cudnn')
  t, s = q_BLHd.shape[1], k_BSHd.shape[1]
  mask = None if mask is None else jnp.broadcast_to(mask, (t, s))[None, None]  # cuDNN: a full bias
  return jax.nn.dot_product_attention(q_BLHd, k_BSHd, v_BSHd, mask=mask, scale=scale,
                                      implementation='cudnn')


# exp(logit - bound) of any logit in [-bound, bound] is a normal fp32 number (>= e^-80) up to this.
MAX_SOFTMAX_SHIFT = 40.0


def cached_attention(q_BlHd, k_BHSd, v_BHSd, mask_lS, scale: float, logit_bound_H=None):
  """Queries of one scale against the KV cache, on XLA -> (B, l, H, d).

  jax.nn.dot_product_attention's math (fp32 logits and softmax) arranged for XLA:CPU: the keys are
  head-major, so neither dot transposes the cache, and the softmax is normalised after the value
  product (a division of the (B, H, l, d) output, not of the (B, H, l, S) probabilities). 1.7x its
  XLA path at VAR-d16 sampling shapes on CPU. mask_lS: None or broadcastable to (l, S).

  logit_bound_H: None, or (H,) bounds with |logit| <= bound_h in head h (l2-normalised attention:
  the head's scale). Where every bound is <= MAX_SOFTMAX_SHIFT the softmax is shifted by the bound
  instead of the row max, which saves a reduction over the (B, H, l, S) logits (122 -> 106 ms at
  8 x 16 heads x 256 x 680); otherwise (and without bounds) by the row max. The shift cancels in
  the normalisation: same result up to rounding.
  """
  logits = jnp.einsum('blhd,bhsd->bhls', q_BlHd, k_BHSd, preferred_element_type=jnp.float32) * scale
  if mask_lS is not None:
    logits = jnp.where(mask_lS, logits, -jnp.inf)
  row_max = lambda: jnp.max(logits, axis=-1, keepdims=True)
  if logit_bound_H is None:
    shift = row_max()
  else:
    bound = jnp.asarray(logit_bound_H, jnp.float32)
    if bound.shape != (k_BHSd.shape[1],):
      raise ValueError(f'logit_bound_H must hold one bound per head, shape ({k_BHSd.shape[1]},); '
                       f'got {bound.shape}')
    by_bound = lambda: jnp.broadcast_to(bound[:, None, None], logits.shape[:-1] + (1,))
    shift = jax.lax.cond(jnp.all(bound <= MAX_SOFTMAX_SHIFT), by_bound, row_max)
  weights = jnp.exp(logits - shift)
  # Head-major output: the dot writes it contiguously; the (B, l, H, d) transpose fuses into the
  # normalisation (bit-identical, 153 -> 132 ms per block with its projection at 256 x 680).
  o_BHld = jnp.einsum('bhls,bhsd->bhld', weights.astype(v_BHSd.dtype), v_BHSd,
                      preferred_element_type=jnp.float32)
  o_BHld = o_BHld / jnp.sum(weights, axis=-1, keepdims=True)
  return jnp.swapaxes(o_BHld, 1, 2).astype(q_BlHd.dtype)


def splash_mask(patch_nums, length: int, block: int = SPLASH_BLOCK) -> np.ndarray:
  """(Lp, Lp) bool, Lp = length rounded up to `block`: the block-causal mask of the scale prefix
  [0, length) (a scale end), padded keys masked out, padded queries attending every real key."""
  from viar_jax.models.transformer import block_causal_mask  # pylint: disable=import-outside-toplevel
  ends = np.cumsum([p * p for p in patch_nums])
  if length not in ends:
    raise ValueError(f'splash attention covers scale prefixes: length {length} is not a scale end '
                     f'{tuple(int(e) for e in ends)}')
  lp = _round_up(length, block)
  mask = np.zeros((lp, lp), bool)
  mask[:length, :length] = block_causal_mask(patch_nums)[:length, :length]
  mask[length:, :length] = True
  return mask


def _splash_kernel(patch_nums: Tuple[int, ...], length: int, num_heads: int, block: int,
                   interpret: bool):
  """Built per call (tens of ms, in numpy): inside a trace its mask tables become constants of the
  program. (Built eagerly and cached instead, they would be placed on the context mesh's devices,
  which fails for the compile-only devices of a TPU topology.)"""
  # pylint: disable=import-outside-toplevel
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  head_mask = sm.NumpyMask(splash_mask(patch_nums, length, block))
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                        block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block,
                        block_kv_dq=block)
  return sk.make_splash_mha(sm.MultiHeadMask([head_mask] * num_heads), block_sizes=sizes,
                            head_shards=1, q_seq_shards=1, interpret=interpret)


def _splash_mesh(batch: int):
  """The context mesh to shard_map the kernel over (batch split over all its axes), or None."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.size > 1 and mesh.are_all_axes_auto and batch % mesh.size == 0:
    return mesh
  return None


def splash_runs_per_device(batch: int) -> bool:
  """Whether the splash kernel of a (batch, ...) call would run per device: under a mesh it can
  shard_map over, or where there is one device (or in interpret mode), rather than on a gathered
  batch."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    return mesh.size == 1 or _splash_mesh(batch) is not None
  return _SPLASH_INTERPRET[-1] or jax.device_count() == 1


def splash_attention(q_BLHd, k_BLHd, v_BLHd, patch_nums, scale: float, *,
                     block: int = SPLASH_BLOCK, interpret: Optional[bool] = None):
  """Block-causal self-attention of a scale prefix with the splash kernel (see the module doc).
  interpret: Pallas interpret mode (default: inside `splash_interpret` only)."""
  b, l, h, _ = q_BLHd.shape
  lp = _round_up(l, block)
  interpret = _SPLASH_INTERPRET[-1] if interpret is None else interpret
  kernel = _splash_kernel(tuple(int(p) for p in patch_nums), l, h, block, bool(interpret))

  def run(q, k, v):
    if scale != 1.0:
      q = (q * scale).astype(q.dtype)
    heads_first = lambda a: jnp.pad(jnp.moveaxis(a, 2, 1), ((0, 0), (0, 0), (0, lp - l), (0, 0)))
    o = jax.vmap(kernel)(heads_first(q), heads_first(k), heads_first(v))  # (b, H, Lp, d)
    return jnp.moveaxis(o[:, :, :l], 1, 2).astype(q.dtype)

  mesh = _splash_mesh(b)
  if mesh is not None:
    spec = jax.sharding.PartitionSpec(tuple(mesh.axis_names))
    run = jax.shard_map(run, in_specs=(spec,) * 3, out_specs=spec, check_vma=False)
  return run(q_BLHd, k_BLHd, v_BLHd)


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
  implementation: Optional[str] = 'auto'  # ATTN_IMPLEMENTATIONS (None = 'auto'), see the module doc
  patch_nums: Optional[Tuple[int, ...]] = None  # the scales of the block-causal mask (splash)

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
      logit_scale, logit_bound_H = 1.0, scale_H1[:, 0]  # |q·k| <= |q| |k| <= s_h
    else:
      logit_scale, logit_bound_H = 0.25 / math.sqrt(d), None
    proj = nn.Dense(c, dtype=self.dtype, name='proj',
                    kernel_init=trunc_normal(self.init_std, self.proj_init_factor))
    project = lambda o: nn.Dropout(self.proj_drop_rate)(
        proj(o.reshape(b, l, c)), deterministic=deterministic or self.proj_drop_rate == 0)

    if cache is not None:
      k_buf, v_buf, start, *group = cache
      groups = (1,) * len(group)  # a grouped cache has a leading group axis, indexed by `group`
      layout = ('(G, B, H, S, d) with a group index' if group else '(B, H, S, d)')
      bhd = (*k_buf.shape[len(group):len(group) + 2], k_buf.shape[-1])
      if k_buf.shape != v_buf.shape or k_buf.ndim != 4 + len(group) or bhd != (b, h, d) or \
          k_buf.shape[-2] < start + l:
        raise ValueError(f'KV cache buffers must be {layout}, (B, H, d) = ({b}, {h}, {d}) and '
                         f'S >= {start + l}; got keys {k_buf.shape} and values {v_buf.shape}')
      # In place, also under a loop over groups: only this group's prefix is read.
      write = lambda buf, a: jax.lax.dynamic_update_slice(
          buf, jnp.swapaxes(a, 1, 2).astype(buf.dtype).reshape(groups + (b, h, l, d)),
          (*group, 0, 0, start, 0))
      read = lambda buf: jax.lax.dynamic_slice(
          buf, (*group, 0, 0, 0, 0), groups + (b, h, start + l, d)).reshape(
              b, h, start + l, d).astype(q.dtype)
      k_buf, v_buf = write(k_buf, k), write(v_buf, v)
      k, v = read(k_buf), read(v_buf)
      impl = resolve_attention(self.implementation, attention_backend(), self.dtype, head_dim=d,
                               cached=True)
      if impl == 'cudnn':
        o = cudnn_attention(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask_LS, logit_scale,
                            cached=True)
      else:
        o = cached_attention(q, k, v, mask_LS, logit_scale, logit_bound_H)
      return project(o), (k_buf, v_buf, start + l, *group)

    impl = resolve_attention(self.implementation, attention_backend(), self.dtype, head_dim=d,
                             per_device=splash_runs_per_device(b))
    if impl == 'splash' and (mask_LS is None or self.patch_nums is None):
      impl = 'xla'  # the kernel's mask is the block-causal one of patch_nums
    if self.attn_drop_rate > 0 and not deterministic:
      logits = jnp.einsum('blhd,bshd->bhls', q, k).astype(jnp.float32) * logit_scale
      if mask_LS is not None:
        logits = jnp.where(mask_LS, logits, -jnp.inf)
      probs = nn.Dropout(self.attn_drop_rate)(jax.nn.softmax(logits, -1), deterministic=False)
      o = jnp.einsum('bhls,bshd->blhd', probs.astype(v.dtype), v)
    elif impl == 'splash':
      if not isinstance(mask_LS, jax.core.Tracer):  # a concrete mask must be the one splash assumes
        expected = splash_mask(self.patch_nums, l)[:l, :l]
        if np.shape(mask_LS) != expected.shape or not np.array_equal(np.asarray(mask_LS), expected):
          raise ValueError('splash attention takes the block-causal mask of patch_nums only')
      o = splash_attention(q, k, v, self.patch_nums, logit_scale)
    elif impl == 'cudnn':
      o = cudnn_attention(q, k, v, mask_LS, logit_scale)
    else:
      mask = None if mask_LS is None else mask_LS[None, None]
      o = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=logit_scale, implementation='xla')
    return project(o)


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
                         dtype=dtype, implementation=cfg.attn_implementation,
                         patch_nums=cfg.patch_nums, name='attn')
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
