"""Released checkpoints: exact key sets and shapes, and the conversion CLI end to end."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from viar_jax.io import checkpoint, convert, released
from viar_jax.models import factory, transformer, vqvae
from viar_jax.sample import sampler

pytestmark = pytest.mark.usefixtures('fast_compiles')  # plumbing, not numerics

# Key counts of the reference state dicts (VAR.md §3): VQ-VAE 324, VAR 8 + 13·depth + 4, shared-AdaLN
# 8 + 2 + 12·depth + 4, VIAR: 8 + (5 + 1 + 5)·13 + 4 projection keys + 4.
KEY_COUNTS = {'vae_ch160v4096z32': 324, 'var_d16': 220, 'var_d20': 272, 'var_d24': 324,
              'var_d30': 402, 'var_d36': 446, 'viar_d30': 8 + 11 * 13 + 4 + 4}


def synthetic_state_dict(name):
  """The exact key set and shapes of a released file, as zero-stride arrays (no memory)."""
  spec = convert.reference_key_spec(factory.abstract_params(released.config(name)))
  sd = {k: np.broadcast_to(np.float32(0.01), shape) for k, shape in spec.items()}
  sd.update({k: np.zeros(shape, np.float32) for k, shape in released.reference_buffers(name).items()})
  return sd


@pytest.mark.parametrize('name', released.NAMES)
def test_released_key_sets_convert_strictly(name):
  sd = synthetic_state_dict(name)
  assert len(sd) == KEY_COUNTS[name]
  params = convert.convert_state_dict(sd, factory.abstract_params(released.config(name)))
  assert len(jax.tree.leaves(params)) == KEY_COUNTS[name] - len(released.reference_buffers(name))
  # One stray key, one missing key: both reported, nothing converted.
  bad = dict(sd)
  bad.pop(next(iter(sd)))
  bad['head.extra'] = np.zeros(1)
  with pytest.raises(convert.CheckpointMismatchError, match='2 problem'):
    convert.convert_state_dict(bad, factory.abstract_params(released.config(name)))


def test_one_table_of_presets():
  assert released.NAMES == ('vae_ch160v4096z32', 'var_d16', 'var_d20', 'var_d24', 'var_d30',
                            'var_d36', 'viar_d30')
  assert released.RECIPES == ('var_d16', 'var_d20', 'var_d24', 'var_d30', 'viar_d30', 'viar_d16')
  assert released.config('viar_d16').implicit and 'viar_d16' not in released.FILES  # not released
  assert released.recipe('var_d30').twde == 0.08 and released.recipe('var_d16').twde is None
  with pytest.raises(ValueError, match='no training recipe'):
    released.recipe('var_d36')
  with pytest.raises(ValueError, match='unknown model'):
    released.config('var_d99')


def test_file_names():
  assert released.name_from_file('/x/viar.pth') == 'viar_d30'
  assert released.name_from_file('var_d36.pth') == 'var_d36'
  with pytest.raises(ValueError, match='pass --model'):
    released.name_from_file('model.pth')


def test_convert_cli_round_trip_and_sampling(tmp_path):
  """A small VIAR state dict in reference layout -> CLI -> orbax -> load -> identical params, sampler runs."""
  cfg = transformer.TransformerConfig(depth=4, embed_dim=64, num_heads=1, num_classes=10,
                                      patch_nums=(1, 2, 4), vocab_size=32, z_channels=4,
                                      implicit=True, pre_depth=1, post_depth=1)
  released.PRESETS['test_tiny'] = released.Preset(cfg, 'tiny.npz')  # as a new release would be
  try:
    rng = np.random.default_rng(0)
    template = factory.abstract_params(cfg)
    sd = {k: rng.normal(size=s).astype(np.float32) * 0.05
          for k, s in convert.reference_key_spec(template).items()}
    np.savez(tmp_path / 'tiny.npz', **{f'sd/{k}': v for k, v in sd.items()})
    info = released.convert_file(str(tmp_path / 'tiny.npz'), str(tmp_path / 'ckpt'), 'test_tiny')
    assert info['parameters'] == sum(int(np.prod(s)) for s in convert.reference_key_spec(template).values())
    with pytest.raises(FileExistsError):
      released.convert_file(str(tmp_path / 'tiny.npz'), str(tmp_path / 'ckpt'), 'test_tiny')
    loaded_cfg, params = checkpoint.load(tmp_path / 'ckpt')
    assert loaded_cfg == cfg
    np.testing.assert_array_equal(params['implicit_proj']['fc1']['kernel'],
                                  sd['implicit_block_projection.0.weight'].T)
    vae_cfg = vqvae.VQVAEConfig(vocab_size=32, z_channels=4, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                                image_size=16, patch_nums=(1, 2, 4))
    vae, vae_params = vqvae.VQVAE(vae_cfg), factory.random_params(vae_cfg)
    out = sampler.make_sampler(vae, transformer.Transformer(loaded_cfg),
                               sampler.SampleOptions(top_k=5, iters=(2, 2, 1)))(
                                   vae_params, params, jax.random.PRNGKey(0), jnp.array([1, 10]))
    assert out.images.shape == (2, 16, 16, 3)
  finally:
    released.PRESETS.pop('test_tiny')
