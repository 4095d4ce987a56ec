"""Tokenizer behaviour beyond the parity numbers: configs, bad input, Φ selection, training forward."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from viar_jax.io import convert
from viar_jax.models import factory, quantizer, vae_nets, vqvae

TINY = vqvae.VQVAEConfig(vocab_size=32, z_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                         image_size=8, patch_nums=(1, 2, 4))


@pytest.fixture(scope='module')
def tiny():
  model = vqvae.VQVAE(TINY)
  img = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 3), minval=-1, maxval=1)
  params = jax.jit(model.init)(jax.random.PRNGKey(1), img)['params']
  return model, {'params': params}, img


def test_phi_index_tables():
  assert quantizer.phi_index_table(10, 4) == (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)
  assert quantizer.phi_index_table(14, 4) == (0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3)
  assert quantizer.phi_index_table(4, 4) == (0, 1, 2, 3)
  assert quantizer.phi_index_table(5, 1) == (0,) * 5


def test_released_tokenizer_shapes_and_parameter_count():
  cfg = vqvae.VQVAEConfig()
  template = factory.abstract_module_params(vqvae.VQVAE(cfg), jnp.zeros((1, 256, 256, 3)))
  count = lambda t: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t))
  assert round(count(template['encoder']) / 1e6, 2) == 44.11
  assert round(count(template['decoder']) / 1e6, 2) == 64.65
  assert round(count(template['quantize']) / 1e6, 3) == 0.168
  spec = convert.reference_key_spec(template)
  assert len(spec) == 323  # 324 reference keys minus the skipped `quantize.ema_vocab_hit_SV`
  assert spec['encoder.down.2.block.0.nin_shortcut.weight'] == (320, 160, 1, 1)
  assert spec['decoder.up.4.attn.2.qkv.weight'] == (1920, 640, 1, 1)
  assert spec['quantize.quant_resi.qresi_ls.3.weight'] == (32, 32, 3, 3)
  assert spec['quantize.embedding.weight'] == (4096, 32)
  assert 'decoder.up.0.upsample.conv.weight' not in spec
  assert 'encoder.mid.block_1.conv1.weight' in spec


@pytest.mark.parametrize('share,keys', [
    (0, ['quantize.quant_resi.0.weight', 'quantize.quant_resi.2.bias']),
    (1, ['quantize.quant_resi.qresi.weight']),
    (2, ['quantize.quant_resi.qresi_ls.1.weight']),
])
def test_share_quant_resi_variants_round_trip(share, keys):
  cfg = vqvae.VQVAEConfig(**{**TINY.__dict__, 'share_quant_resi': share})
  model = vqvae.VQVAE(cfg)
  rng = np.random.default_rng(share)
  params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32),
                        factory.abstract_module_params(model, jnp.zeros((1, 8, 8, 3))))
  spec = convert.reference_key_spec(params)
  for k in keys:
    assert k in spec
  n_phi = sum(1 for k in spec if k.startswith('quantize.quant_resi') and k.endswith('weight'))
  assert n_phi == {0: 3, 1: 1, 2: 2}[share]
  # Export to reference layout and back: identical params.
  flat = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  sd = {}
  for path, leaf in flat.items():
    names = tuple(p.key for p in path)
    sd[convert.path_to_reference_key(names)] = convert.to_reference_layout(names[-1], np.asarray(leaf))
  back = convert.convert_state_dict(sd, params)
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))


def test_zero_quant_resi_means_identity_phi():
  cfg = vqvae.VQVAEConfig(**{**TINY.__dict__, 'quant_resi': 0.0})
  params = factory.abstract_module_params(vqvae.VQVAE(cfg), jnp.zeros((1, 8, 8, 3)))
  assert 'quant_resi' not in params['quantize']


@pytest.mark.parametrize('kwargs,match', [
    ({'patch_nums': (1, 2, 3)}, 'must equal the latent side'),
    ({'patch_nums': (1, 3, 2, 4)}, 'strictly increasing'),
    ({'patch_nums': (2, 2, 4)}, 'strictly increasing'),
    ({'patch_nums': ()}, 'must not be empty'),
    ({'ch': 16}, 'multiple of 32'),
    ({'image_size': 9}, 'not divisible'),
    ({'vocab_size': 0}, 'vocab_size must be positive'),
])
def test_bad_config_values(kwargs, match):
  with pytest.raises(ValueError, match=match):
    vqvae.VQVAEConfig(**{**TINY.__dict__, **kwargs})


def test_bad_inputs(tiny):
  model, variables, img = tiny
  apply = functools.partial(model.apply, variables)
  with pytest.raises(ValueError, match=r'expected images of shape \(B, 8, 8, 3\)'):
    apply(jnp.zeros((2, 16, 16, 3)), method=vqvae.VQVAE.img_to_idx)
  with pytest.raises(ValueError, match=r'expected images of shape'):
    apply(jnp.zeros((2, 8, 8, 1)), method=vqvae.VQVAE.encode)
  with pytest.raises(ValueError, match=r'expected images of shape'):
    apply(jnp.zeros((2, 3, 8, 8)), method=vqvae.VQVAE.encode)  # NCHW by mistake
  idx = apply(img, method=vqvae.VQVAE.img_to_idx)
  bad = list(idx)
  bad[1] = bad[1].at[0, 0].set(TINY.vocab_size)
  with pytest.raises(ValueError, match=r'token ids of scale 1 must lie in \[0, 32\)'):
    apply(bad, method=vqvae.VQVAE.idx_to_fhats)
  bad[1] = -jnp.ones_like(idx[1])
  with pytest.raises(ValueError, match='must lie in'):
    apply(bad, method=vqvae.VQVAE.idx_to_var_input)
  with pytest.raises(ValueError, match=r'scale 2 must be \(B, 16\)'):
    apply(idx[:2] + [idx[2][:, :9]], method=vqvae.VQVAE.idx_to_fhats)
  with pytest.raises(ValueError, match=r'latent of shape'):
    apply(jnp.zeros((2, 4, 4, 3)), method=vqvae.VQVAE.fhat_to_img)


def test_methods_are_consistent_and_jittable(tiny):
  model, variables, img = tiny
  call = lambda m, *a: jax.jit(functools.partial(model.apply, method=m))(variables, *a)
  idx = call(vqvae.VQVAE.img_to_idx, img)
  assert [i.shape for i in idx] == [(2, 1), (2, 4), (2, 16)]
  fhats = call(vqvae.VQVAE.idx_to_fhats, idx)
  np.testing.assert_allclose(fhats[-1], call(vqvae.VQVAE.img_to_fhats, img)[-1], atol=1e-6)
  var_in = call(vqvae.VQVAE.idx_to_var_input, idx)
  assert var_in.shape == (2, 4 + 16, TINY.z_channels)
  # The one-pass training path gives the same tokens and teacher-forcing input.
  idx_one, var_one = call(vqvae.VQVAE.img_to_idx_and_var_input, img)
  for a, b in zip(idx_one, idx):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(var_one, var_in, atol=1e-6)
  # The autoregressive step rebuilds the same f̂ and next-scale inputs from the codes.
  codebook = model.apply(variables, method=vqvae.VQVAE.codebook)
  assert codebook.shape == (TINY.vocab_size, TINY.z_channels)
  f_hat = jnp.zeros_like(fhats[0])
  for k, pn in enumerate(TINY.patch_nums):
    h = codebook[idx[k]].reshape(2, pn, pn, -1)
    f_hat, nxt = model.apply(variables, k, f_hat, h, method=vqvae.VQVAE.next_ar_input)
    np.testing.assert_allclose(f_hat, fhats[k], atol=1e-5)
    if k + 1 < len(TINY.patch_nums):
      start = sum(p * p for p in TINY.patch_nums[1:k + 1])
      np.testing.assert_allclose(nxt.reshape(2, -1, TINY.z_channels),
                                 var_in[:, start:start + TINY.patch_nums[k + 1]**2], atol=1e-5)
  rec = call(vqvae.VQVAE.reconstruct, img)
  assert rec.shape == img.shape and float(jnp.max(jnp.abs(rec))) <= 1.0


def test_one_residual_pass_from_latent_or_tokens(tiny):
  """The quantizer's single loop gives the same f̂ and teacher-forcing input from f or from tokens."""
  model, variables, img = tiny
  f = model.apply(variables, img, method=vqvae.VQVAE.encode)
  quantize = lambda m, *a, **kw: m.quantize.residual_pass(*a, **kw)
  from_f = model.apply(variables, f, method=quantize)
  from_idx = model.apply(variables, indices=from_f.indices, method=quantize)
  for a, b in zip(from_f.f_hats, from_idx.f_hats, strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6)
  np.testing.assert_allclose(from_f.var_input, from_idx.var_input, atol=1e-6)
  np.testing.assert_array_equal(from_f.code_hits, from_idx.code_hits)
  assert float(from_f.vq_loss) > 0 and float(from_idx.vq_loss) == 0
  # All scales but the last suffice for the teacher-forcing input.
  partial = model.apply(variables, indices=from_f.indices[:-1], method=quantize)
  np.testing.assert_allclose(partial.var_input, from_f.var_input, atol=1e-6)
  for kwargs in ({}, {'f_BhwC': f, 'indices': from_f.indices}):
    with pytest.raises(ValueError, match='exactly one'):
      model.apply(variables, method=quantize, **kwargs)


def test_training_forward_straight_through_and_gradients(tiny):
  model, variables, img = tiny

  def loss_fn(params):
    rec, vq_loss, hits = model.apply({'params': params}, img)
    return jnp.mean((rec - img)**2) + vq_loss, (vq_loss, hits)

  grads, (vq_loss, hits) = jax.jit(jax.grad(loss_fn, has_aux=True))(variables['params'])
  assert hits.shape == (3, TINY.vocab_size)
  np.testing.assert_array_equal(hits.sum(1), [2 * p * p for p in TINY.patch_nums])
  assert np.isfinite(float(vq_loss)) and float(vq_loss) > 0
  for part in ('encoder', 'decoder', 'quant_conv', 'post_quant_conv'):
    assert float(optax_global_norm(grads[part])) > 0, part
  assert float(jnp.abs(grads['quantize']['embedding']['embedding']).sum()) > 0
  # The straight-through output carries f̂'s value.
  f_hat_st, _, _ = model.apply(variables, model.apply(variables, img, method=vqvae.VQVAE.encode),
                               method=lambda m, f: m.quantize(f))
  np.testing.assert_allclose(f_hat_st, model.apply(variables, img, method=vqvae.VQVAE.img_to_fhats)[-1],
                             atol=1e-5)


def optax_global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree)))


def test_upsample_is_nearest_x2_then_the_3x3_conv():
  """The sub-pixel form: same parameters (names, shapes, initial values) as nn.Conv, same outputs up
  to fp32 rounding, on a non-square input with channels in != out."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 7, 6))
  conv = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)))
  sub = vae_nets.UpsampledConv3x3(4)
  params = sub.init(jax.random.PRNGKey(1), x)
  reference_params = conv.init(jax.random.PRNGKey(1), jnp.zeros((2, 10, 14, 6)))
  jax.tree.map(np.testing.assert_array_equal, params, reference_params)
  params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias too
  want = conv.apply(params, jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
  got = sub.apply(params, x)
  assert got.shape == (2, 10, 14, 4)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
