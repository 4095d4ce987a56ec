"""KV-cached next-scale generation for VAR and VIAR (the reference `autoregressive_infer_cfg`).

    sample_fn = sampler.make_sampler(vae, model, sampler.SampleOptions(cfg=1.5, top_k=900, top_p=0.96))
    out = sample_fn(vae_params, params, key, labels)      # jitted; deterministic per key
    out.images  # (B, H, W, 3) in [0, 1]

The batch is doubled (conditional rows, then null-class rows); every block keeps a preallocated KV cache
of the full sequence length, written scale by scale at static offsets.

VIAR's implicit layer runs n_s iterations at scale s, with one of two KV-cache modes:
  per_iteration  the reference: the implicit block's cache is grouped by iteration index; iteration i
                 attends to what iteration i wrote at every earlier scale that ran more than i
                 iterations. Needed for parity with released weights. When a schedule increases,
                 iterations that no earlier scale reached see only the current scale (a warning says so).
  final_iterate  one cache group holding the keys/values of each earlier scale's equilibrium point z*
                 (one extra block evaluation per scale writes them): memory independent of the
                 iteration count, no lost context, any solver and early exit by tolerance.
"""
import dataclasses
import functools
import warnings
from typing import List, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from viar_jax.models import compat, resample, solvers, transformer, vqvae
from viar_jax.train import sharding

CACHE_MODES = ('per_iteration', 'final_iterate')


@dataclasses.dataclass(frozen=True)
class SampleOptions:
  cfg: float = 1.5  # guidance ramps linearly over scales: t_k = cfg·k/(K-1)
  top_k: int = 0  # 0 = off
  top_p: float = 0.0  # 0 = off
  more_smooth: bool = False  # the reference's soft Gumbel mixing of code vectors
  iters: Optional[Tuple[int, ...]] = None  # VIAR iterations per scale; None = eval_iters everywhere
  tol: Optional[float] = None  # VIAR early exit on the per-sample relative residual
  solver: str = 'picard'
  cache_mode: str = 'per_iteration'

  def __post_init__(self):
    if self.top_k < 0:
      raise ValueError(f'top_k must be >= 0, got {self.top_k}')
    if not 0.0 <= self.top_p <= 1.0:
      raise ValueError(f'top_p must lie in [0, 1], got {self.top_p}')
    if self.cache_mode not in CACHE_MODES:
      raise ValueError(f'unknown cache_mode {self.cache_mode!r}; expected one of {CACHE_MODES}')
    if self.solver not in solvers.METHODS:
      raise ValueError(f'unknown solver {self.solver!r}; expected one of {solvers.METHODS}')
    if self.cache_mode == 'per_iteration' and (self.tol is not None or self.solver != 'picard'):
      raise ValueError("cache_mode='per_iteration' replays the reference's fixed Picard iterations; "
                       "use cache_mode='final_iterate' for a tolerance or the Anderson solver")
    if self.tol is not None and self.tol <= 0:
      raise ValueError(f'tol must be > 0, got {self.tol}')
    if self.iters is not None:
      object.__setattr__(self, 'iters', tuple(int(n) for n in self.iters))
      if min(self.iters) < 1:
        raise ValueError(f'every scale needs >= 1 implicit iteration, got {self.iters}')


class SampleOutput(NamedTuple):
  tokens: List[jax.Array]  # per scale (B, pn²) int32
  f_hat: jax.Array  # (B, n, n, Cvae)
  images: jax.Array  # (B, H, W, 3) in [0, 1]
  guided_logits: List[jax.Array]  # per scale (B, pn², V): (1+t)·cond - t·null, before filtering
  iterations: jax.Array  # (K, B) int32 implicit iterations per scale and sample (0 for VAR)
  residuals: jax.Array  # (K, B) float32 final relative residual per scale and sample (0 for VAR)


def filter_logits(logits_BlV, top_k: int, top_p: float):
  """The reference `sample_with_top_k_top_p_` filtering, as one threshold on the logits, without a sort.

  top-k keeps every logit >= the k-th largest (ties kept). top-p then drops, in ascending order, the
  logits whose cumulative probability is <= 1 - p, never the largest: equivalently it keeps, in
  descending order, every token whose exclusive cumulative probability is < p, i.e. every logit >= the
  largest value t whose tokens >= t carry probability >= p. (At exact ties across the top-k boundary,
  the top-p mass is computed over the k largest values only.)

  Both thresholds are found by a 32-step bitwise search over order-preserving uint32 keys of the
  logits (`_largest_key`): a compare and a sum over the vocabulary per step. XLA:CPU lowers
  `lax.top_k` to a full comparator sort, 4.5x slower with top-p and 18x without at (1024, 4096). The
  masses are sums in another order than a sorted fp32 cumulative sum, so a token whose cumulative
  probability lies within float rounding of p may fall on the other side (either way; top-k alone is
  exact).
  """
  vocab = logits_BlV.shape[-1]
  use_k = 0 < top_k < vocab
  if not use_k and top_p <= 0:
    return logits_BlV
  x = logits_BlV.astype(jnp.float32)
  keys = _sortable_keys(x)
  count_ge = lambda key: jnp.sum(keys >= key, axis=-1, keepdims=True, dtype=jnp.int32)
  kth_key = _largest_key(lambda key: count_ge(key) >= top_k) if use_k else None
  threshold = _key_to_float(kth_key) if use_k else jnp.full_like(x[..., :1], -jnp.inf)
  if top_p > 0:
    e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    mass_ge = lambda key: jnp.sum(jnp.where(keys >= key, e, 0.0), axis=-1, keepdims=True)
    if use_k:  # the mass of the k largest values: those above the k-th, and copies of the k-th
      above = keys > kth_key
      total = (jnp.sum(jnp.where(above, e, 0.0), axis=-1, keepdims=True) + jnp.exp(threshold - jnp.max(
          x, axis=-1, keepdims=True)) * (top_k - jnp.sum(above, axis=-1, keepdims=True, dtype=jnp.int32)))
      mass_in_k = lambda key: jnp.where(key > kth_key, mass_ge(key), total)
    else:
      total, mass_in_k = jnp.sum(e, axis=-1, keepdims=True), mass_ge
    p_key = _largest_key(lambda key: mass_in_k(key) >= top_p * total)
    threshold = jnp.maximum(threshold, _key_to_float(p_key))
  return jnp.where(logits_BlV < threshold.astype(logits_BlV.dtype), -jnp.inf, logits_BlV)


def _sortable_keys(x):
  """uint32 keys in the order of the float32 values x (-0.0 read as +0.0, as `<` compares them)."""
  bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, jnp.float32(0), x), jnp.uint32)
  return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))


def _key_to_float(key):
  bits = jnp.where(key >> 31 == 1, key & jnp.uint32((1 << 31) - 1), ~key)
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _largest_key(holds):
  """The largest uint32 key (per row, shape (..., 1)) for which `holds` is true, for a predicate that
  is true up to some key and false above it: set the bits from the highest down, keeping each one
  under which `holds` still is."""
  def step(i, key):
    candidate = key | (jnp.uint32(1 << 31) >> i.astype(jnp.uint32))
    return jnp.where(holds(candidate), candidate, key)
  shape = jax.eval_shape(holds, jnp.uint32(0)).shape
  return jax.lax.fori_loop(0, 32, step, jnp.zeros(shape, jnp.uint32))


def categorical(key, logits):
  """`jax.random.categorical(key, logits, axis=-1)`: the same Gumbel draws and the same index (the
  first maximum of gumbel + logits), as a max then a min over matching indices: plain reductions that
  XLA:CPU vectorises, where argmax's (value, index) pair reduction is several times slower."""
  scores = jax.random.gumbel(key, logits.shape, logits.dtype) + logits
  is_max = scores == jnp.max(scores, axis=-1, keepdims=True)
  index = jax.lax.broadcasted_iota(jnp.int32, scores.shape, scores.ndim - 1)
  return jnp.min(jnp.where(is_max, index, scores.shape[-1]), axis=-1)


def iteration_counts(config: transformer.TransformerConfig, options: SampleOptions) -> Tuple[int, ...]:
  k = len(config.patch_nums)
  iters = options.iters or (config.eval_iters,) * k
  if len(iters) != k:
    raise ValueError(f'iters has {len(iters)} entries for {k} scales: {iters}')
  return iters


def per_iteration_key_mask(patch_nums, iters) -> np.ndarray:
  """(n_max, K, L) bool: at scale s, iteration i may attend position p (of an earlier scale) iff that
  scale ran more than i iterations; positions of scale s itself are always visible."""
  lvl = transformer.token_levels(patch_nums)
  n_max, k = max(iters), len(patch_nums)
  mask = np.zeros((n_max, k, len(lvl)), bool)
  for i in range(n_max):
    for s in range(k):
      mask[i, s] = ((lvl < s) & (np.asarray(iters)[lvl] > i)) | (lvl == s)
  return mask


def _warn_if_increasing(iters):
  lost = [(s, n) for s, n in enumerate(iters) if s and n > max(iters[:s])]
  if lost:
    warnings.warn(f'implicit iterations per scale {iters} increase; in per_iteration cache mode the '
                  f'iterations beyond every earlier scale\'s count see only the current scale (the '
                  f'reference behaviour). cache_mode="final_iterate" keeps the context.', stacklevel=3)


def make_sampler(vae: vqvae.VQVAE, model: transformer.Transformer, options: SampleOptions = SampleOptions(),
                 mesh: Optional[Mesh] = None):
  """-> jitted `sample(vae_params, params, key, labels, edit=None) -> SampleOutput`.

  key: one PRNG key for the batch, or one per image ((B, 2) uint32, e.g. `image_keys`): then each
    image's draws are its own, the same in any batch and on any number of devices.
  labels: (B,) int32 in [0, num_classes] (num_classes = null class).
  edit: optional `(source_tokens, keep_mask_Bhw)` for in/out-painting and class-conditional editing
    (VAR.md §5): source_tokens is the tokenizer's list of (B, pn²) maps of the source image,
    keep_mask_Bhw (B, n, n) float at the finest token grid, 1 = keep the source. At every scale the
    mask is resized bilinearly to pn x pn and thresholded at 0.5 (always all-ones when pn² <= 3); kept
    positions are teacher-forced with the source codes.
  mesh: split the batch over all the mesh's devices, on any number of processes (the batch must
    divide by `mesh.size`). Labels, per-image keys and edits may then be host arrays holding the
    same global values on every process; they are split by rows. Params not yet on the mesh are
    replicated; params already placed on it (FSDP-sharded in training) stay as they are and XLA
    gathers each where it is used. Every output is a global array split along the batch (iterations
    and residuals along their second axis); `process_rows` takes this process's rows.
  """
  c = model.config
  compat.check_pair(vae.config, c)
  iters = iteration_counts(c, options) if c.implicit else None
  if c.implicit and options.cache_mode == 'per_iteration':
    _warn_if_increasing(iters)
  sample = functools.partial(_sample, vae, model, options, iters)
  if mesh is None:
    return jax.jit(sample)
  rows = sharding.batch_sharding(mesh)
  columns = NamedSharding(mesh, P(None, *sharding.batch_spec()))
  out_shardings = SampleOutput(tokens=rows, f_hat=rows, images=rows, guided_logits=rows,
                               iterations=columns, residuals=columns)
  return functools.partial(_sample_on_mesh, jax.jit(sample, out_shardings=out_shardings), mesh)


def _sample_on_mesh(sample, mesh, vae_params, params, key, labels, edit=None):
  batch = np.shape(labels)[0]
  if batch % mesh.size:
    raise ValueError(f'a batch of {batch} images does not split over the {mesh.size} devices of the '
                     f'mesh; use a multiple of {mesh.size}')
  rows, whole = sharding.batch_sharding(mesh), NamedSharding(mesh, P())
  on_rows = lambda tree: jax.tree.map(lambda x: on_mesh(x, rows), tree)
  key = on_mesh(key, rows if np.ndim(key) == 2 else whole)
  vae_params, params = jax.tree.map(lambda x: on_mesh(x, whole), (vae_params, params))
  args = (vae_params, params, key, on_rows(labels))
  return sample(*args) if edit is None else sample(*args, on_rows(edit))


def on_mesh(x, target: NamedSharding) -> jax.Array:
  """x where it is if already on the target's devices, else `target`-placed from its host value
  (every process holds the same global value, so each takes its own devices' slices)."""
  if isinstance(x, jax.Array) and x.sharding.device_set == target.device_set:
    return x
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, target, lambda index: host[index])


def process_rows(x: jax.Array, axis: int = 0) -> Tuple[np.ndarray, np.ndarray]:
  """This process's part of an array split along `axis` (a `make_sampler(mesh=...)` output):
  (global indices (n,) ascending, values with n entries along `axis`), each index once."""
  parts = {}
  for shard in x.addressable_shards:
    parts.setdefault(shard.index[axis].start or 0, shard.data)
  starts = sorted(parts)
  indices = np.concatenate([np.arange(s, s + parts[s].shape[axis]) for s in starts])
  return indices, np.concatenate([np.asarray(parts[s]) for s in starts], axis=axis)


def image_keys(seed: int, indices) -> jax.Array:
  """(B, 2) uint32: image i's key is fold_in(PRNGKey(seed), i), whatever batch it is sampled in."""
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(indices, jnp.uint32))


def random_labels(key, batch: int, num_classes: int):
  return jax.random.randint(key, (batch,), 0, num_classes, dtype=jnp.int32)


def edit_masks(keep_mask_Bhw, patch_nums) -> List[jax.Array]:
  """Per-scale keep masks (B, pn², 1): bilinear resize, > 0.5, all-ones when pn² <= 3."""
  masks = []
  for pn in patch_nums:
    if pn * pn <= 3:
      masks.append(jnp.ones((keep_mask_Bhw.shape[0], pn * pn, 1), bool))
      continue
    m = resample.resize(keep_mask_Bhw[..., None].astype(jnp.float32), pn, 'bilinear')
    masks.append((m > 0.5).reshape(keep_mask_Bhw.shape[0], pn * pn, 1))
  return masks


def _sample(vae, model, options, iters, vae_params, params, key, labels, edit=None):
  c = model.config
  if edit is not None:
    source_tokens, keep_mask = edit
    n = c.patch_nums[-1]
    if tuple(keep_mask.shape) != (labels.shape[0], n, n):
      raise ValueError(f'edit keep mask must be (B, {n}, {n}) at the finest token grid, got '
                       f'{tuple(keep_mask.shape)}')
    if [tuple(t.shape) for t in source_tokens] != [(labels.shape[0], p * p) for p in c.patch_nums]:
      raise ValueError('edit source tokens must be one (B, pn²) map per scale')
    masks = edit_masks(keep_mask, c.patch_nums)
  b = labels.shape[0]
  num_scales = len(c.patch_nums)
  head_dim = c.embed_dim // c.num_heads
  dtype = jnp.dtype(c.dtype)
  call = lambda method, *a: model.apply({'params': params}, *a, method=method)
  vae_call = lambda method, *a: vae.apply({'params': vae_params}, *a, method=method)
  codebook = vae_call(vqvae.VQVAE.codebook)  # (V, Cvae)

  labels_2B = jnp.concatenate([labels, jnp.full_like(labels, c.num_classes)])
  x, cond_BD, cond = call(transformer.Transformer.sample_first, labels_2B)
  empty = lambda *lead: jnp.zeros(lead + (2 * b, c.num_heads, c.seq_len, head_dim), dtype)
  stacks = ('pre_blocks', 'post_blocks') if c.implicit else ('blocks',)
  depth_of = {'blocks': c.depth, 'pre_blocks': c.pre_depth, 'post_blocks': c.post_depth}
  caches = {s: [(empty(), empty()) for _ in range(depth_of[s])] for s in stacks}
  if c.implicit:
    groups = max(iters) if options.cache_mode == 'per_iteration' else 1
    implicit_cache = (empty(groups), empty(groups))
    implicit = transformer.implicit_layer(c)
    implicit_params = {'params': implicit.params_of(params)}
    key_mask = jnp.asarray(per_iteration_key_mask(c.patch_nums, iters))

  f_hat = jnp.zeros((b, c.patch_nums[-1], c.patch_nums[-1], c.z_channels), jnp.float32)
  tokens, guided, iterations, residuals = [], [], [], []
  for k, pn in enumerate(c.patch_nums):
    start = c.scale_bounds[k][0]
    if c.implicit:
      x, caches['pre_blocks'] = call(transformer.Transformer.sample_blocks, 'pre_blocks', x, cond,
                                     caches['pre_blocks'], start)
      run = _per_iteration if options.cache_mode == 'per_iteration' else _final_iterate
      # The equilibrium state is float32 under half-precision compute (as in training).
      x, implicit_cache, n_run, resid = run(implicit, implicit_params, x.astype(jnp.float32), cond,
                                            implicit_cache, start, k, iters[k], key_mask, options)
      x = x.astype(c.dtype)
      x, caches['post_blocks'] = call(transformer.Transformer.sample_blocks, 'post_blocks', x, cond,
                                      caches['post_blocks'], start)
      iterations.append(n_run[:b])
      residuals.append(resid[:b])
    else:
      x, caches['blocks'] = call(transformer.Transformer.sample_blocks, 'blocks', x, cond,
                                 caches['blocks'], start)
      iterations.append(jnp.zeros((b,), jnp.int32))
      residuals.append(jnp.zeros((b,), jnp.float32))
    logits = call(transformer.Transformer.sample_head, x, cond_BD)
    t = options.cfg * k / max(num_scales - 1, 1)
    logits = (1 + t) * logits[:b] - t * logits[b:]
    guided.append(logits)
    filtered = filter_logits(logits, options.top_k, options.top_p)
    if key.ndim == 2:  # one key per image: its draws do not depend on the batch it is in
      key, key_idx, key_gumbel = jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k, 3))(key), 1, 0)
      idx = jax.vmap(categorical)(key_idx, filtered)
      draw_gumbel = lambda: jax.vmap(lambda k, l: jax.random.gumbel(k, l.shape))(key_gumbel, filtered)
    else:
      key, key_idx, key_gumbel = jax.random.split(key, 3)
      idx = categorical(key_idx, filtered)
      draw_gumbel = lambda: jax.random.gumbel(key_gumbel, filtered.shape)
    idx = idx.astype(jnp.int32)
    if options.more_smooth:
      ratio = k / max(num_scales - 1, 1)
      tau = max(0.27 * (1 - ratio * 0.95), 0.005)
      gumbel = draw_gumbel()
      h = jax.nn.softmax((filtered * (1 + ratio) + gumbel) / tau, axis=-1) @ codebook
    else:
      h = codebook[idx]
    if edit is not None:  # kept positions take the source codes; the prediction there is discarded
      h = jnp.where(masks[k], codebook[source_tokens[k]], h)
      idx = jnp.where(masks[k][..., 0], source_tokens[k], idx)
    tokens.append(idx)
    f_hat, nxt = vae_call(vqvae.VQVAE.next_ar_input, k, f_hat, h.reshape(b, pn, pn, -1))
    if k + 1 < num_scales:
      nxt = nxt.reshape(b, -1, c.z_channels)
      x = call(transformer.Transformer.sample_next, jnp.concatenate([nxt, nxt]), k + 1)

  images = (vae_call(vqvae.VQVAE.fhat_to_img, f_hat) + 1) / 2
  return SampleOutput(tokens, f_hat, images, guided, jnp.stack(iterations), jnp.stack(residuals))


def _residual(new, old):
  diff = jnp.linalg.norm((new - old).reshape(new.shape[0], -1).astype(jnp.float32), axis=1)
  return diff / (jnp.linalg.norm(new.reshape(new.shape[0], -1).astype(jnp.float32), axis=1) + 1e-12)


def _per_iteration(implicit, variables, x, cond, cache, start, k, n, key_mask, options):
  """n Picard iterations; iteration i reads and writes cache group i (the reference semantics)."""
  del options
  k_all, v_all = cache
  l = x.shape[1]

  def body(i, state):
    z, _, k_all, v_all = state
    mask = jax.lax.dynamic_index_in_dim(key_mask, i, keepdims=False)[k, :start + l][None]
    z_new, (k_all, v_all, *_) = implicit.apply(variables, z, x, cond, mask, True,
                                               (k_all, v_all, start, i))
    return z_new, z, k_all, v_all

  z, z_prev, k_all, v_all = jax.lax.fori_loop(0, n, body, (x, x, k_all, v_all))
  return z, (k_all, v_all), jnp.full((x.shape[0],), n, jnp.int32), _residual(z, z_prev)


def _final_iterate(implicit, variables, x, cond, cache, start, k, n, key_mask, options):
  """Solve z = F(z) against the earlier scales' cached equilibria, then cache this scale's z*."""
  del key_mask, k
  k_buf, v_buf = cache[0][0], cache[1][0]

  def f(z):  # attends to the frozen prefix [0, start) and to its own tokens
    out, _ = implicit.apply(variables, z, x, cond, None, True, (k_buf, v_buf, start))
    return out

  z, stats = solvers.solve(f, x, max_iters=n, tol=options.tol, method=options.solver)
  _, (k_buf, v_buf, _) = implicit.apply(variables, z, x, cond, None, True, (k_buf, v_buf, start))
  return z, (k_buf[None], v_buf[None]), stats.iterations_per_sample, stats.residual
