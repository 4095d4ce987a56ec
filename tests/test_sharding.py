"""Sharding on 8 simulated CPU devices: mesh, FSDP rule, a sharded forward, optax states."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from viar_jax.models import factory, transformer
from viar_jax.train import optim, sharding

SMALL = dict(embed_dim=128, num_heads=1, num_classes=10, patch_nums=(1, 2), vocab_size=16,
             z_channels=4)


def config(**kwargs):
  return transformer.TransformerConfig(**{**SMALL, 'depth': 2, **kwargs})


def by_name(tree):
  return {optim.param_name(p): v
          for p, v in jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: isinstance(x, P))}


@pytest.fixture(scope='module')
def mesh():
  return sharding.make_mesh(4, 2)


def test_make_mesh(mesh):
  assert jax.device_count() == 8
  assert dict(mesh.shape) == {'data': 4, 'fsdp': 2}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  with pytest.raises(ValueError, match=r'data=3 x fsdp=2 needs 6 devices, but there are 8'):
    sharding.make_mesh(3, 2)
  assert dict(sharding.make_mesh(2, 2, jax.devices()[:4]).shape) == {'data': 2, 'fsdp': 2}


def test_fsdp_rule_on_shapes(mesh):
  tree = {'tall': np.zeros((256, 96)), 'tie': np.zeros((128, 128)),
          'odd_first': np.zeros((257, 128)), 'indivisible': np.zeros((129, 255)),
          'small': np.zeros((8, 8)), 'count': np.zeros((), np.int32)}
  specs = sharding.tree_specs(tree, mesh)
  assert specs == {'tall': P('fsdp', None), 'tie': P(None, 'fsdp'), 'odd_first': P(None, 'fsdp'),
                   'indivisible': P(), 'small': P(), 'count': P()}
  assert sharding.tree_specs(tree, mesh, min_fsdp_size=2**20)['tall'] == P()
  assert sharding.tree_specs(tree, sharding.make_mesh(8, 1))['tall'] == P()


def test_param_specs_of_var_and_viar(mesh):
  cfg = config()
  specs = by_name(sharding.param_specs(factory.abstract_params(cfg), mesh))
  assert specs['blocks_0/attn/mat_qkv/kernel'] == P(None, 'fsdp')  # (128, 384)
  assert specs['blocks_1/ffn/fc2/kernel'] == P('fsdp', None)  # (512, 128)
  assert specs['blocks_0/ada_lin/kernel'] == P(None, 'fsdp')  # (128, 768)
  for name in ('pos_1LC', 'pos_start', 'class_emb/embedding', 'head/kernel', 'blocks_0/attn/q_bias',
               'blocks_0/ffn/fc1/bias', 'blocks_0/attn/scale_mul_1H11'):
    assert specs[name] == P(), name

  cfg = config(depth=4, implicit=True, pre_depth=1, post_depth=1)
  params = factory.abstract_params(cfg)
  plain = by_name(sharding.param_specs(params, mesh))
  kept = by_name(sharding.param_specs(params, mesh, replicate=sharding.IMPLICIT_MODULES))
  implicit = [n for n in plain if n.startswith(('implicit_block/', 'implicit_proj/'))]
  assert plain['implicit_block/attn/mat_qkv/kernel'] == P(None, 'fsdp')
  assert plain['implicit_proj/fc1/kernel'] == P(None, 'fsdp')  # (256, 256): tie -> last dim
  assert all(kept[n] == P() for n in implicit)
  assert all(kept[n] == plain[n] for n in plain if n not in implicit)
  assert kept['pre_blocks_0/attn/mat_qkv/kernel'] == P(None, 'fsdp')


def test_sharded_forward_and_optimizer_state(mesh):
  cfg = config()
  model = transformer.Transformer(cfg)
  rng = np.random.default_rng(0)
  labels = jnp.asarray(rng.integers(0, cfg.num_classes, 8), jnp.int32)
  x = jnp.asarray(rng.standard_normal((8, cfg.seq_len - 1, cfg.z_channels)), jnp.float32)
  # Random values of the right shapes: cheaper than compiling `init`, and sharding must not care.
  params = factory.random_params(cfg, std=0.05)
  forward = lambda p, y, xx: model.apply({'params': p}, y, xx)
  want = jax.jit(forward)(params, labels, x)

  specs = sharding.param_specs(params, mesh)
  param_sh, batch_sh = sharding.named_shardings(specs, mesh), sharding.batch_sharding(mesh)
  sharded = jax.device_put(params, param_sh)
  kernel = sharded['blocks_0']['attn']['mat_qkv']['kernel']
  assert kernel.addressable_shards[0].data.shape == (128, 192)
  got = jax.jit(forward, in_shardings=(param_sh, batch_sh, batch_sh), out_shardings=batch_sh)(
      sharded, jax.device_put(labels, batch_sh), jax.device_put(x, batch_sh))
  assert got.sharding.spec == sharding.batch_spec()
  assert got.addressable_shards[0].data.shape[0] == 1  # 8 examples over 8 devices
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)

  # Optimizer state: mu / nu follow the params' specs, counts are replicated.
  opt = optim.make_optimizer(peak_lr=1e-3, total_steps=10, warmup_steps=1)
  state_specs = sharding.tree_specs(jax.eval_shape(opt.init, params), mesh)
  assert optax.tree.get(state_specs, 'mu') == specs and optax.tree.get(state_specs, 'nu') == specs
  counts = [s for n, s in by_name(state_specs).items() if n.endswith('count')]
  assert counts and all(s == P() for s in counts)
  state = jax.jit(opt.init, out_shardings=sharding.named_shardings(state_specs, mesh))(sharded)
  assert optax.tree.get(state, 'mu')['blocks_0']['attn']['mat_qkv']['kernel'].sharding.spec == \
      P(None, 'fsdp')

  summary = sharding.describe(params, specs, mesh)
  assert 'data=4 x fsdp=2' in summary and 'leaves sharded' in summary
  print(summary)
