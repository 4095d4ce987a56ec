"""Attention implementations (blocks.resolve_attention): what 'auto' picks per backend, bad values,
and every implementation this machine can run against XLA on the block-causal mask (teacher forcing)
and with the KV cache (scale by scale, as the sampler calls it).

Here (CPU): XLA; the padding of the fused paths (with XLA inside); the splash kernel in Pallas
interpret mode (`blocks.splash_interpret`), alone, in a model, and under a mesh (shard_map). Marked
`gpu`: cuDNN in bfloat16 (skipped without a GPU). A real TPU runs the splash tests in compiled mode.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from viar_jax.models import blocks, transformer

VAR_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
SMALL = (1, 2, 3, 4, 5, 6, 8)  # L = 155: odd, and not a multiple of the splash block
HEADS, HEAD_DIM = 2, 64


def _on_tpu():
  try:
    return bool(jax.devices('tpu'))
  except RuntimeError:
    return False


# --- resolution ------------------------------------------------------------------------------------

@pytest.mark.parametrize('implementation,backend,dtype,kwargs,expected', [
    ('auto', 'cpu', 'float32', {}, 'xla'),
    ('auto', 'cpu', 'bfloat16', {}, 'xla'),
    (None, 'cpu', 'float32', {}, 'xla'),
    ('auto', 'gpu', 'bfloat16', dict(head_dim=64), 'cudnn'),
    ('auto', 'cuda', 'float16', dict(head_dim=128), 'cudnn'),
    ('auto', 'gpu', 'float32', dict(head_dim=64), 'xla'),
    ('auto', 'gpu', 'bfloat16', dict(head_dim=60), 'xla'),  # not a multiple of 8
    ('auto', 'gpu', 'bfloat16', dict(head_dim=256), 'xla'),  # past pre-Hopper cuDNN
    ('auto', 'rocm', 'bfloat16', dict(head_dim=64), 'xla'),
    ('auto', 'gpu', 'bfloat16', dict(head_dim=64, cached=True), 'xla'),
    ('auto', 'tpu', 'bfloat16', dict(head_dim=64), 'splash'),
    ('auto', 'tpu', 'float32', {}, 'splash'),
    ('auto', 'tpu', 'bfloat16', dict(cached=True), 'xla'),
    ('auto', 'tpu', 'bfloat16', dict(per_device=False), 'xla'),  # would gather a sharded batch
    ('splash', 'tpu', 'bfloat16', dict(per_device=False), 'splash'),
    ('xla', 'gpu', 'bfloat16', {}, 'xla'),
    ('xla', 'tpu', 'float32', {}, 'xla'),
    ('cudnn', 'gpu', 'bfloat16', dict(head_dim=64), 'cudnn'),
    ('cudnn', 'gpu', 'float16', dict(head_dim=64, cached=True), 'cudnn'),
    ('splash', 'tpu', 'bfloat16', {}, 'splash'),
    ('splash', 'tpu', 'bfloat16', dict(cached=True), 'xla'),
])
def test_resolution_per_backend(implementation, backend, dtype, kwargs, expected):
  assert blocks.resolve_attention(implementation, backend, dtype, **kwargs) == expected


@pytest.mark.parametrize('implementation,backend,dtype,kwargs,match', [
    ('flash', 'gpu', 'bfloat16', {}, r"one of \('auto', 'xla', 'cudnn', 'splash'\)"),
    ('cudnn', 'cpu', 'bfloat16', {}, 'needs a CUDA GPU'),
    ('cudnn', 'tpu', 'bfloat16', {}, 'needs a CUDA GPU'),
    ('cudnn', 'rocm', 'bfloat16', {}, 'needs a CUDA GPU'),
    ('cudnn', 'gpu', 'float32', {}, 'bfloat16 or float16'),
    ('cudnn', 'gpu', 'bfloat16', dict(head_dim=60), 'multiple of 8'),
    ('splash', 'cpu', 'float32', {}, 'TPU'),
    ('splash', 'gpu', 'bfloat16', {}, 'TPU'),
])
def test_bad_choices_are_clear_errors(implementation, backend, dtype, kwargs, match):
  with pytest.raises(ValueError, match=match):
    blocks.resolve_attention(implementation, backend, dtype, **kwargs)


def test_config_validation():
  assert transformer.TransformerConfig().attn_implementation == 'auto'
  for ok in ('auto', 'xla', 'splash', None):
    transformer.TransformerConfig(depth=2, attn_implementation=ok)
  transformer.TransformerConfig(depth=2, dtype='bfloat16', attn_implementation='cudnn')
  with pytest.raises(ValueError, match=r"attn_implementation must be one of \('auto', 'xla'"):
    transformer.TransformerConfig(depth=2, attn_implementation='flash')
  with pytest.raises(ValueError, match='bfloat16 or float16'):
    transformer.TransformerConfig(depth=2, attn_implementation='cudnn')  # float32
  with pytest.raises(ValueError, match='multiple of 8'):
    transformer.TransformerConfig(depth=2, embed_dim=24, num_heads=2, dtype='bfloat16',
                                  attn_implementation='cudnn')


def test_the_backend_is_read_from_the_trace_context():
  assert blocks.attention_backend() == jax.default_backend()
  with blocks.splash_interpret():
    assert blocks.attention_backend() == 'tpu'
  mesh = jax.make_mesh((1,), ('x',), devices=jax.devices('cpu')[:1],
                       axis_types=(jax.sharding.AxisType.Auto,))
  with jax.set_mesh(mesh):
    assert blocks.attention_backend() == 'cpu'
    assert blocks.splash_runs_per_device(3)  # a one-device mesh
  four = jax.make_mesh((4,), ('data',), devices=jax.devices('cpu')[:4],
                       axis_types=(jax.sharding.AxisType.Auto,))
  with jax.set_mesh(four):
    assert blocks.splash_runs_per_device(8) and not blocks.splash_runs_per_device(6)
  assert blocks.splash_runs_per_device(8) == (jax.device_count() == 1)


# --- the splash mask -------------------------------------------------------------------------------

def test_splash_mask_is_the_block_causal_mask_padded():
  full = transformer.block_causal_mask(VAR_256)
  assert full.shape == (680, 680)
  ends = [e for _, e in transformer.TransformerConfig(patch_nums=VAR_256).scale_bounds]
  for end in ends:
    m = blocks.splash_mask(VAR_256, end)
    lp = -(-end // blocks.SPLASH_BLOCK) * blocks.SPLASH_BLOCK
    assert m.shape == (lp, lp) and m.dtype == np.bool_
    np.testing.assert_array_equal(m[:end, :end], full[:end, :end])
    assert not m[:end, end:].any()  # no real query sees a padded key
    assert m[end:, :end].all() and not m[end:, end:].any()  # padded rows: not empty, real keys
  assert blocks.splash_mask(VAR_256, 680).shape == (768, 768)
  with pytest.raises(ValueError, match='not a scale end'):
    blocks.splash_mask(VAR_256, 600)
  # The kernel's mask object holds the same array for every head.
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  kernel = blocks._splash_kernel(VAR_256, 680, 2, blocks.SPLASH_BLOCK, True)  # pylint: disable=protected-access
  assert kernel is not None
  head = sm.NumpyMask(blocks.splash_mask(VAR_256, 680))
  np.testing.assert_array_equal(sm.MultiHeadMask([head] * 2)[0, :680, :680], full)


# --- numerics against XLA ----------------------------------------------------------------------------

def _qkv(key, b, l, dtype=jnp.float32):
  q, k, v = jax.random.normal(key, (3, b, l, HEADS, HEAD_DIM), jnp.float32)
  q = q / jnp.linalg.norm(q, axis=-1, keepdims=True) * 4  # VAR's l2-normalised, scaled q and k
  k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def _xla(q, k, v, mask, scale=1.0):
  return jax.nn.dot_product_attention(q, k, v, mask=mask[None, None], scale=scale,
                                      implementation='xla')


def _close(a, b, tol):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  assert np.all(np.isfinite(a))
  np.testing.assert_allclose(a, b, atol=tol * max(1.0, float(np.abs(b).max())), rtol=0)


@pytest.mark.parametrize('multiple', [2, 128])
def test_padding_of_the_fused_paths_keeps_values_and_gradients(multiple):
  q, k, v = _qkv(jax.random.PRNGKey(0), 2, 155)
  mask = jnp.asarray(transformer.block_causal_mask(SMALL))
  loss = lambda f: lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v)))
  padded = lambda q, k, v: blocks.padded_attention(q, k, v, mask, 0.7, multiple, 'xla')
  plain = lambda q, k, v: _xla(q, k, v, mask, 0.7)
  _close(padded(q, k, v), plain(q, k, v), 1e-6)
  for g, want in zip(jax.grad(loss(padded), (0, 1, 2))(q, k, v),
                     jax.grad(loss(plain), (0, 1, 2))(q, k, v)):
    _close(g, want, 1e-5)


def _attention_module(implementation, dtype='float32'):
  return blocks.SelfAttention(num_heads=HEADS, dtype=jnp.dtype(dtype), implementation=implementation,
                              patch_nums=SMALL)


def _attention_params(b=2):
  mod = _attention_module('xla')
  x = jax.random.normal(jax.random.PRNGKey(1), (b, 155, HEADS * HEAD_DIM))
  params = mod.init(jax.random.PRNGKey(2), x)['params']
  params['q_bias'] = 0.1 * jax.random.normal(jax.random.PRNGKey(3), params['q_bias'].shape)
  params['v_bias'] = 0.1 * jax.random.normal(jax.random.PRNGKey(4), params['v_bias'].shape)
  params['scale_mul_1H11'] = params['scale_mul_1H11'] + jnp.array([0.0, 0.5]).reshape(1, 2, 1, 1)
  return params, x


def _teacher_forced(implementation, params, x, dtype='float32'):
  mod = _attention_module(implementation, dtype)
  mask = jnp.asarray(transformer.block_causal_mask(SMALL))
  return jax.jit(lambda p, x: mod.apply({'params': p}, x, mask))(params, x)


def _cached(implementation, params, x, dtype='float32'):
  """Scale by scale against a preallocated KV cache, as the sampler runs the blocks."""
  mod = _attention_module(implementation, dtype)
  b, l, _ = x.shape
  bufs = [jnp.zeros((b, HEADS, l, HEAD_DIM), jnp.dtype(dtype))] * 2
  outs = []
  for begin, end in transformer.TransformerConfig(patch_nums=SMALL).scale_bounds:
    o, (bufs[0], bufs[1], _) = mod.apply({'params': params}, x[:, begin:end], None, True,
                                         (bufs[0], bufs[1], begin))
    outs.append(o)
  return jnp.concatenate(outs, axis=1)


def _grads(implementation, params, x, dtype='float32'):
  mod = _attention_module(implementation, dtype)
  mask = jnp.asarray(transformer.block_causal_mask(SMALL))
  loss = lambda p: jnp.sum(jnp.sin(mod.apply({'params': p}, x, mask).astype(jnp.float32)))
  return jax.jit(jax.grad(loss))(params)


def test_xla_with_the_kv_cache_matches_teacher_forcing():
  params, x = _attention_params()
  want = _teacher_forced('xla', params, x)
  _close(_cached('xla', params, x), want, 1e-5)
  _close(_cached('auto', params, x), want, 1e-5)  # 'auto' is XLA on the CPU
  _close(_teacher_forced('auto', params, x), want, 0)


def test_cached_attention_is_jaxs_attention_on_a_head_major_cache():
  """With a key mask (VIAR's per-iteration cache) and unscaled logits, fp32 and bf16."""
  q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, s, HEADS, HEAD_DIM))
             for i, s in ((0, 5), (1, 9), (2, 9)))
  mask = jnp.arange(9)[None] % 3 != 1  # (1, S): every third key hidden
  for dtype, tol in (('float32', 1e-5), ('bfloat16', 2e-2)):
    q_, k_, v_ = (a.astype(dtype) for a in (q, k, v))
    want = jax.nn.dot_product_attention(q_, k_, v_, mask=mask[None, None], scale=0.3,
                                        implementation='xla')
    got = blocks.cached_attention(q_, jnp.swapaxes(k_, 1, 2), jnp.swapaxes(v_, 1, 2), mask, 0.3)
    assert got.dtype == want.dtype
    _close(got.astype(jnp.float32), want.astype(jnp.float32), tol)


def test_softmax_shifted_by_the_logit_bound_equals_the_row_max_shift():
  """l2-normalised attention (|logit| <= the head's scale): shifting by the bound gives the row-max
  result; with a bound above MAX_SOFTMAX_SHIFT the row max is used, where the bound would underflow
  every weight of a row (q opposite to every key: logits -90, exp(-90 - 90) = 0 in fp32)."""
  unit = lambda a: a / jnp.linalg.norm(a, axis=-1, keepdims=True)
  q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, s, HEADS, HEAD_DIM))
             for i, s in ((0, 5), (1, 9), (2, 9)))
  mask = jnp.arange(9)[None] % 3 != 1
  scale_H = jnp.linspace(2.0, 30.0, HEADS)
  q, k_BHSd, v_BHSd = unit(q) * scale_H[:, None], jnp.swapaxes(unit(k), 1, 2), jnp.swapaxes(v, 1, 2)
  want = blocks.cached_attention(q, k_BHSd, v_BHSd, mask, 1.0)
  _close(jax.jit(blocks.cached_attention, static_argnums=4)(q, k_BHSd, v_BHSd, mask, 1.0, scale_H),
         want, 1e-6)
  opposite = jnp.broadcast_to(-k_BHSd[:, :, :1], k_BHSd.shape)  # every key = -q / |q|
  q_far = jnp.broadcast_to(jnp.swapaxes(k_BHSd[:, :, :1], 1, 2), q.shape) * 90.0
  bound_H = jnp.full((HEADS,), 90.0)
  assert float(jnp.exp(jnp.float32(-90.0) - 90.0)) == 0.0  # what the bound shift would give
  got = blocks.cached_attention(q_far, opposite, v_BHSd, None, 1.0, bound_H)
  _close(got, blocks.cached_attention(q_far, opposite, v_BHSd, None, 1.0), 1e-6)
  assert np.isfinite(np.asarray(got)).all()
  # The bound is what the softmax is shifted by where it is <= MAX_SOFTMAX_SHIFT: a (wrong) bound of
  # 0 under logits of +90 overflows exp, so the fast path is the one taken, not the row max.
  aligned = jnp.broadcast_to(k_BHSd[:, :, :1], k_BHSd.shape)
  overflow = blocks.cached_attention(q_far, aligned, v_BHSd, None, 1.0, jnp.zeros((HEADS,)))
  assert not np.isfinite(np.asarray(overflow)).any()
  with pytest.raises(ValueError, match=rf'one bound per head, shape \({HEADS},\); got \(1,\)'):
    blocks.cached_attention(q, k_BHSd, v_BHSd, mask, 1.0, scale_H[:1])


def test_a_grouped_cache_is_one_group_updated_in_place():
  """(G, B, H, S, d) buffers with a traced group index (VIAR's per-iteration caches in a loop): the
  same outputs as that group alone, and the other groups untouched."""
  params, x = _attention_params()
  mod = _attention_module('xla', 'float32')
  b, l, _ = x.shape
  rng = np.random.default_rng(0)
  bufs = [jnp.asarray(rng.normal(size=(3, b, HEADS, l, HEAD_DIM)), jnp.float32) for _ in range(2)]
  step = jax.jit(lambda p, x, k, v, g: mod.apply({'params': p}, x, None, True, (k, v, 4, g)))
  o, (k_all, v_all, start, group) = step(params, x[:, 4:9], *bufs, 1)
  want, (k_1, v_1, _) = mod.apply({'params': params}, x[:, 4:9], None, True,
                                  (bufs[0][1], bufs[1][1], 4))
  _close(o, want, 1e-6)
  assert start == 9 and int(group) == 1
  for got, before, group_1 in ((k_all, bufs[0], k_1), (v_all, bufs[1], v_1)):
    np.testing.assert_array_equal(got[1], group_1)
    others = lambda a: np.delete(np.asarray(a), 1, axis=0)
    np.testing.assert_array_equal(others(got), others(before))


def test_a_cache_in_the_wrong_layout_is_an_error():
  params, x = _attention_params()
  mod = _attention_module('xla', 'float32')
  b, l, _ = x.shape
  sequence_major = jnp.zeros((b, l, HEADS, HEAD_DIM))
  with pytest.raises(ValueError, match=r'KV cache buffers must be \(B, H, S, d\)'):
    mod.apply({'params': params}, x[:, :1], None, True, (sequence_major, sequence_major, 0))
  with pytest.raises(ValueError, match=r'must be \(G, B, H, S, d\) with a group index'):
    mod.apply({'params': params}, x[:, :1], None, True, (sequence_major, sequence_major, 0, 0))


def test_splash_matches_xla_on_the_block_causal_mask():
  """The splash kernel (interpret mode off TPU), forward and gradients, and the KV-cache path that
  'splash' leaves to XLA."""
  params, x = _attention_params()
  want = _teacher_forced('xla', params, x)
  want_grads = _grads('xla', params, x)
  context = blocks.splash_interpret() if not _on_tpu() else _nullcontext()
  with context:
    _close(_teacher_forced('splash', params, x), want, 1e-5)
    _close(_teacher_forced('auto', params, x), want, 1e-5)
    for g, want_g in zip(jax.tree.leaves(_grads('splash', params, x)), jax.tree.leaves(want_grads)):
      _close(g, want_g, 1e-4)
    _close(_cached('splash', params, x), want, 1e-5)


def test_splash_in_a_model_matches_xla():
  """Through TransformerConfig.attn_implementation, VAR and VIAR (the implicit layer's loop passes the
  mask as a traced value)."""
  common = dict(depth=2, embed_dim=HEADS * HEAD_DIM, num_heads=HEADS, num_classes=10,
                patch_nums=(1, 2, 3, 4), vocab_size=32, z_channels=8)
  for extra in (dict(), dict(implicit=True, pre_depth=0, post_depth=1, eval_iters=2)):
    cfg = transformer.TransformerConfig(**common, **extra, attn_implementation='xla')
    labels = jnp.array([1, 7], jnp.int32)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, cfg.seq_len - 1, cfg.z_channels))
    params = transformer.Transformer(cfg).init(jax.random.PRNGKey(1), labels, x)['params']
    run = lambda c: jax.jit(transformer.Transformer(c).apply)({'params': params}, labels, x)
    want = run(cfg)
    with blocks.splash_interpret() if not _on_tpu() else _nullcontext():
      got = run(transformer.TransformerConfig(**common, **extra, attn_implementation='splash'))
    _close(got, want, 1e-4)


def test_splash_under_a_mesh_runs_per_batch_shard():
  devices = jax.devices('cpu')[:4] if not _on_tpu() else jax.devices('tpu')
  mesh = jax.make_mesh((len(devices),), ('data',), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))
  params, x = _attention_params(b=len(devices))
  want = _teacher_forced('xla', params, x)
  with blocks.splash_interpret() if not _on_tpu() else _nullcontext(), jax.set_mesh(mesh):
    mod = _attention_module('splash')
    mask = jnp.asarray(transformer.block_causal_mask(SMALL))
    fn = jax.jit(lambda p, x: mod.apply({'params': p}, x, mask))
    assert 'shard_map' in str(jax.make_jaxpr(fn)(params, x))
    got = fn(params, x)
  _close(got, want, 1e-5)


def test_splash_refuses_another_mask():
  params, x = _attention_params()
  with blocks.splash_interpret():
    with pytest.raises(ValueError, match='block-causal mask of patch_nums'):
      _attention_module('splash').apply({'params': params}, x, jnp.ones((155, 155), bool))


class _nullcontext:  # pylint: disable=invalid-name
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


# --- cuDNN (GPU) -----------------------------------------------------------------------------------

@pytest.mark.gpu
def test_cudnn_matches_xla_in_bfloat16(gpu):
  """cuDNN vs XLA, both bfloat16 on the GPU: teacher forcing (odd length: padded), gradients, and the
  KV cache; 'auto' picks cuDNN there."""
  with jax.default_device(gpu):
    assert blocks.attention_backend() == 'gpu'
    params, x = _attention_params()
    x = x.astype(jnp.bfloat16)
    want = _teacher_forced('xla', params, x, 'bfloat16')
    _close(_teacher_forced('cudnn', params, x, 'bfloat16'), want, 2e-2)
    _close(_teacher_forced('auto', params, x, 'bfloat16'), want, 2e-2)
    _close(_cached('cudnn', params, x, 'bfloat16'), want, 2e-2)
    want_grads = _grads('xla', params, x, 'bfloat16')
    got_grads = _grads('cudnn', params, x, 'bfloat16')
    for g, want_g in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
      _close(g, want_g, 5e-2)
