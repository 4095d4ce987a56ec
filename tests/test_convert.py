"""Strict checkpoint conversion: every problem is reported, nothing is silently dropped."""
import numpy as np
import pytest

import fixture_sets
from viar_jax.io import convert
from viar_jax.models import factory, vqvae
import jax.numpy as jnp

SET = fixture_sets.discover()[0]


@pytest.fixture(scope='module')
def template():
  cfg = fixture_sets.vqvae_config(SET)
  return factory.abstract_module_params(vqvae.VQVAE(cfg), jnp.zeros((1, cfg.image_size, cfg.image_size, 3)))


def test_key_spec_covers_the_reference_state_dict(template):
  sd = fixture_sets.state_dict(SET, 'vqvae')
  spec = convert.reference_key_spec(template)
  assert set(sd) - set(spec) == {'quantize.ema_vocab_hit_SV'}
  assert set(spec) <= set(sd)
  for key, shape in spec.items():
    assert tuple(sd[key].shape) == shape, key


def test_all_problems_listed_at_once(template):
  sd = dict(fixture_sets.state_dict(SET, 'vqvae'))
  del sd['encoder.conv_in.weight']
  del sd['decoder.mid.attn_1.qkv.bias']
  sd['encoder.extra.weight'] = np.zeros(3)
  sd['quant_conv.weight'] = np.zeros((8, 8, 1, 1), np.float32)
  with pytest.raises(convert.CheckpointMismatchError) as e:
    convert.convert_state_dict(sd, template)
  msg = str(e.value)
  assert '4 problem(s)' in msg
  assert 'missing key encoder.conv_in.weight' in msg
  assert 'missing key decoder.mid.attn_1.qkv.bias' in msg
  assert 'unknown key encoder.extra.weight' in msg
  assert 'shape mismatch quant_conv.weight: checkpoint (8, 8, 1, 1) vs model (8, 8, 3, 3)' in msg


def test_key_mapping_round_trips():
  for key in ['encoder.down.0.block.1.norm1.weight', 'encoder.mid.block_1.conv1.bias',
              'decoder.up.4.attn.2.qkv.weight', 'quantize.quant_resi.qresi_ls.3.bias',
              'blocks.7.ada_lin.1.weight', 'implicit_block_projection.2.bias',
              'shared_ada_lin.1.weight', 'head_nm.ada_lin.1.bias']:
    path = convert.reference_key_to_path(key)
    assert convert.path_to_reference_key(path) == key


def test_npz_loader_strips_prefix(tmp_path):
  np.savez(tmp_path / 'x.npz', **{'sd/a.weight': np.ones(2), 'in/img': np.zeros(1)})
  assert list(convert.load_reference_state_dict(str(tmp_path / 'x.npz'))) == ['a.weight']
  with pytest.raises(FileNotFoundError, match='checkpoint not found'):
    convert.load_reference_state_dict(str(tmp_path / 'missing.pth'))


def test_pth_loader_uses_weights_only(tmp_path):
  torch = pytest.importorskip('torch')
  sd = {'a.weight': torch.ones(2, 3), 'b.bias': torch.zeros(2)}
  torch.save(sd, tmp_path / 'm.pth')
  out = convert.load_reference_state_dict(str(tmp_path / 'm.pth'))
  np.testing.assert_array_equal(out['a.weight'], np.ones((2, 3)))

  class Evil:
    def __reduce__(self):
      return (print, ('unpickled!',))
  torch.save({'x': Evil()}, tmp_path / 'evil.pth')
  with pytest.raises(convert.UnsafeCheckpointError, match='refusing to load it: its pickle imports '
                     'builtins.print'):
    convert.load_reference_state_dict(str(tmp_path / 'evil.pth'))
