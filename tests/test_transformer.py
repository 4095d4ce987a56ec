"""Transformer behaviour: sizes, initialisation, randomness, JFB training, memory, bad input."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from viar_jax import profiling
from viar_jax.io import convert
from viar_jax.models import factory, implicit, solvers, transformer

TINY = dict(depth=4, embed_dim=64, num_heads=1, num_classes=10, patch_nums=(1, 2, 3, 4),
            vocab_size=64, z_channels=8)


def abstract(cfg):
  return factory.abstract_params(cfg)


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('kwargs,expected', [
    (dict(depth=16), 310_283_520),
    (dict(depth=20), 600_917_136),
    (dict(depth=24), 1_033_399_360),
    (dict(depth=30), 2_010_020_356),
    (dict(depth=36, shared_aln=True, patch_nums=(1, 2, 3, 4, 6, 9, 13, 18, 24, 32)), 2_353_893_904),
    (dict(depth=30, implicit=True, pre_depth=5, post_depth=5), 770_884_426),
])
def test_parameter_counts_of_released_models(kwargs, expected):
  cfg = transformer.TransformerConfig(**kwargs)
  template = abstract(cfg)
  assert count(template) == expected
  # The key spec of a released config has the reference's key count (params, without buffers).
  spec = convert.reference_key_spec(template)
  if not cfg.implicit:
    per_block = 12 if cfg.shared_aln else 13
    buffers = 2 + cfg.depth  # lvl_1L, attn_bias_for_masking, zero_k_bias per block
    want = 8 + per_block * cfg.depth + 4 + (2 if cfg.shared_aln else 0) - buffers
    assert len(spec) == want


@pytest.fixture(scope='module')
def tiny_viar():
  cfg = transformer.TransformerConfig(**TINY, implicit=True, pre_depth=1, post_depth=1,
                                      with_grad_iters_range=(1, 3), no_grad_iters_range=(0, 4),
                                      drop_path_rate=0.2, aln_gamma_init=1e-3)
  model = transformer.Transformer(cfg)
  labels = jnp.array([1, 7], jnp.int32)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, cfg.seq_len - 1, cfg.z_channels))
  params = jax.jit(model.init)(jax.random.PRNGKey(1), labels, x)['params']
  return cfg, model, params, labels, x


def test_initialisation_matches_reference_recipe():
  cfg = transformer.TransformerConfig(depth=8, embed_dim=256, num_heads=4, num_classes=50,
                                      aln_gamma_init=1e-3)
  x = jnp.zeros((1, cfg.seq_len - 1, cfg.z_channels))
  p = jax.jit(transformer.Transformer(cfg).init)(jax.random.PRNGKey(0), jnp.zeros((1,), jnp.int32),
                                                   x)['params']
  std = math.sqrt(1 / (3 * cfg.embed_dim))
  close = lambda a, want: np.testing.assert_allclose(float(np.std(a)), want, rtol=0.1)
  close(p['word_embed']['kernel'], std)
  close(p['class_emb']['embedding'], std)
  close(p['pos_1LC'], std)
  close(p['head']['kernel'], std * 0.02)
  close(p['head_nm']['ada_lin']['kernel'], std * 0.5)
  blk = p['blocks_3']
  close(blk['attn']['mat_qkv']['kernel'], std)
  close(blk['attn']['proj']['kernel'], std / math.sqrt(2 * cfg.depth))
  close(blk['ffn']['fc2']['kernel'], std / math.sqrt(2 * cfg.depth))
  ada = np.asarray(blk['ada_lin']['kernel'])
  close(ada[:, :2 * cfg.embed_dim], std * 1e-3)  # gammas
  close(ada[:, 2 * cfg.embed_dim:], std * 0.5)  # scales and shifts
  np.testing.assert_allclose(blk['attn']['scale_mul_1H11'], math.log(4.0), rtol=1e-6)
  for leaf in (blk['attn']['q_bias'], blk['attn']['v_bias'], blk['ada_lin']['bias'], p['head']['bias']):
    assert not np.any(leaf)


def test_bad_inputs(tiny_viar):
  cfg, model, params, labels, x = tiny_viar
  apply = lambda l, v: model.apply({'params': params}, l, v)
  with pytest.raises(ValueError, match=r'class labels must lie in \[0, 10\]'):
    apply(jnp.array([3, 11], jnp.int32), x)
  with pytest.raises(ValueError, match='class labels must lie in'):
    apply(jnp.array([-1, 0], jnp.int32), x)
  with pytest.raises(ValueError, match='1-D integer'):
    apply(jnp.array([1.0, 2.0]), x)
  with pytest.raises(ValueError, match=r'\(B, L - 1, Cvae\) = \(2, 29, 8\)'):
    apply(labels, x[:, :-1])
  with pytest.raises(ValueError, match=r'\(B, L - 1, Cvae\)'):
    apply(labels, jnp.zeros((2, 29, 4)))
  with pytest.raises(ValueError, match='divisible by num_heads'):
    transformer.TransformerConfig(depth=2, embed_dim=100, num_heads=3)
  with pytest.raises(ValueError, match='pre_depth'):
    transformer.TransformerConfig(depth=4, implicit=True, pre_depth=3, post_depth=3)
  with pytest.raises(ValueError, match='cond_drop_rate'):
    transformer.TransformerConfig(depth=2, cond_drop_rate=1.5)


def test_null_class_is_accepted_and_changes_the_output(tiny_viar):
  cfg, model, params, labels, x = tiny_viar
  a = model.apply({'params': params}, labels, x, no_grad_iters=2)
  b = model.apply({'params': params}, jnp.full_like(labels, cfg.num_classes), x, no_grad_iters=2)
  assert a.shape == (2, cfg.seq_len, cfg.vocab_size) and a.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(a - b))) > 1e-4


def test_training_randomness_comes_from_keys_only(tiny_viar):
  cfg, model, params, labels, x = tiny_viar
  run = jax.jit(lambda key: model.apply({'params': params}, labels, x, deterministic=False,
                                        rngs={'dropout': key, 'jfb': key}))
  a, b, c = run(jax.random.PRNGKey(0)), run(jax.random.PRNGKey(0)), run(jax.random.PRNGKey(5))
  np.testing.assert_array_equal(a, b)
  assert float(jnp.max(jnp.abs(a - c))) > 1e-6
  det = model.apply({'params': params}, labels, x, no_grad_iters=3)
  np.testing.assert_array_equal(det, model.apply({'params': params}, labels, x, no_grad_iters=3))


def test_jit_grad_with_k_and_m_drawn_in_graph(tiny_viar):
  cfg, model, params, labels, x = tiny_viar
  targets = jnp.zeros((2, cfg.seq_len), jnp.int32)

  @jax.jit
  def grad_step(params, key):
    def loss(p):
      logits = model.apply({'params': p}, labels, x, deterministic=False,
                           rngs={'dropout': jax.random.fold_in(key, 0), 'jfb': key})
      return profiling.cross_entropy(logits, targets)
    return jax.grad(loss)(params)

  for seed in range(3):
    g = grad_step(params, jax.random.PRNGKey(seed))
    norms = {k: float(jnp.sqrt(sum(jnp.sum(v**2) for v in jax.tree.leaves(g[k]))))
             for k in ('pre_blocks_0', 'implicit_block', 'implicit_proj', 'post_blocks_0', 'head')}
    assert all(np.isfinite(list(norms.values())))
    assert norms['implicit_block'] > 0 and norms['pre_blocks_0'] > 0, norms


def test_implicit_layer_owns_its_top_level_param_names():
  """The layer is a real submodule, yet its params keep the reference's top-level names."""
  cfg = transformer.TransformerConfig(**TINY, implicit=True, pre_depth=1, post_depth=1)
  params = abstract(cfg)
  layer = transformer.implicit_layer(cfg)
  labels, x = factory.teacher_forcing_shapes(cfg, 1)
  z = jax.ShapeDtypeStruct(x.shape[:1] + (x.shape[1] + 1, cfg.embed_dim), jnp.float32)
  cond = jax.ShapeDtypeStruct((1, cfg.embed_dim), jnp.float32)
  own = factory.abstract_module_params(layer, z, z, cond)
  assert tuple(sorted(own)) == tuple(sorted(implicit.ImplicitLayer.PARAM_NAMES))
  assert set(params) == {'pre_blocks_0', 'post_blocks_0', *implicit.ImplicitLayer.PARAM_NAMES,
                         'class_emb', 'lvl_embed', 'word_embed', 'pos_start', 'pos_1LC', 'head_nm',
                         'head'}
  picked = implicit.ImplicitLayer.params_of(params)
  assert jax.tree.map(lambda a: a.shape, picked) == jax.tree.map(lambda a: a.shape, own)


def test_jfb_matches_explicit_unroll_of_the_implicit_block(tiny_viar):
  """K no-grad + m grad iterations give the logits of K + m plain iterations."""
  cfg, model, params, labels, x = tiny_viar
  a = model.apply({'params': params}, labels, x, no_grad_iters=2, with_grad_iters=3)
  b = model.apply({'params': params}, labels, x, no_grad_iters=5, with_grad_iters=0)
  c = model.apply({'params': params}, labels, x, no_grad_iters=4, with_grad_iters=0)
  np.testing.assert_allclose(a, b, atol=2e-5)
  assert float(jnp.max(jnp.abs(b - c))) > 1e-5


def test_bfloat16_compute_switch_runs():
  cfg = transformer.TransformerConfig(**TINY, dtype='bfloat16')
  model = transformer.Transformer(cfg)
  labels, x = jnp.array([0, 3], jnp.int32), jnp.ones((2, cfg.seq_len - 1, cfg.z_channels))
  params = jax.jit(model.init)(jax.random.PRNGKey(0), labels, x)['params']
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(params))
  logits = model.apply({'params': params}, labels, x)
  ref = transformer.Transformer(transformer.TransformerConfig(**TINY)).apply({'params': params},
                                                                             labels, x)
  assert logits.dtype == jnp.float32
  # Relative to the logits' own scale (~1e-2 here); measured 1.5e-3, bf16's epsilon is 3.9e-3.
  # The lower bound checks that the blocks really computed in bfloat16.
  rel = float(jnp.linalg.norm(logits - ref) / jnp.linalg.norm(ref))
  assert 1e-4 < rel < 1e-2, rel


def test_jfb_memory_is_constant_in_k_and_linear_in_m():
  """XLA temp bytes of loss + grad: K no-grad iterations cost nothing extra; m_max costs about one
  carry (B·L·C floats) per iteration thanks to the checkpointed scan."""
  def temp(k, m_max):
    cfg = transformer.TransformerConfig(**{**TINY, 'patch_nums': (1, 2, 3, 4, 6, 8)}, implicit=True,
                                        pre_depth=1, post_depth=1, with_grad_iters_range=(1, m_max))
    report = profiling.viar_grad_step_memory(cfg, batch=2, no_grad_iters=k, with_grad_iters=m_max)
    return report.temp_bytes, cfg

  t_k0, cfg = temp(0, 2)
  t_k20, _ = temp(20, 2)
  assert abs(t_k20 - t_k0) <= 0.05 * t_k0, (t_k0, t_k20)
  t_m8, _ = temp(0, 8)
  carry = 2 * cfg.seq_len * cfg.embed_dim * 4
  per_iteration = (t_m8 - t_k0) / 6
  assert per_iteration <= 3 * carry, (t_k0, t_m8, carry)


def test_remat_policies_keep_gradients(tiny_viar):
  cfg, _, params, labels, x = tiny_viar

  def grad_fn(remat):
    model = transformer.Transformer(transformer.TransformerConfig(**{**cfg.__dict__, 'remat': remat}))
    def loss(p):
      logits = model.apply({'params': p}, labels, x, deterministic=False, no_grad_iters=1,
                           with_grad_iters=2, rngs={'dropout': jax.random.PRNGKey(3)})
      return jnp.mean(jax.nn.log_softmax(logits)[..., 0])
    return jax.jit(jax.grad(loss))

  want = grad_fn('none')(params)
  for remat in ('dots_saveable', 'full'):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 grad_fn(remat)(params), want)
  # The policy reaches the program (XLA:CPU's memory analysis barely moves at test sizes, so the
  # memory effect is left to accelerator compile reports).
  jaxpr = lambda remat: str(jax.make_jaxpr(grad_fn(remat))(params))
  count = {r: jaxpr(r).count('remat') for r in ('none', 'dots_saveable', 'full')}
  assert count['none'] < count['dots_saveable'] == count['full'], count  # JFB's own checkpoint: 'none'
  with pytest.raises(ValueError, match='remat must be one of'):
    transformer.TransformerConfig(**TINY, remat='some')


def test_equilibrium_state_is_float32_under_bfloat16_compute():
  """bf16 compute, float32 state: F keeps the state's dtype, and Anderson's mix is not rounded back
  to bf16, so the solver gets closer to the fixed point than with a bf16 state."""
  cfg = transformer.TransformerConfig(**TINY, implicit=True, pre_depth=1, post_depth=1,
                                      dtype='bfloat16')
  params = implicit.ImplicitLayer.params_of(factory.random_params(cfg, std=0.05))
  layer = transformer.implicit_layer(cfg)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, cfg.seq_len, cfg.embed_dim)), jnp.float32)
  cond = jnp.asarray(rng.normal(size=(4, cfg.embed_dim)), jnp.float32)
  residual = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    f = lambda z, dtype=dtype: layer.apply({'params': params}, z, x.astype(dtype), cond)
    assert jax.eval_shape(f, x.astype(dtype)).dtype == dtype
    z, stats = jax.jit(lambda z0, f=f: solvers.solve(f, z0, max_iters=30, method='anderson'))(
        x.astype(dtype))
    residual[dtype] = float(jnp.max(stats.residual))
  assert residual[jnp.float32] < 0.8 * residual[jnp.bfloat16], residual
