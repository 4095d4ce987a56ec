"""launch/sample.py end to end on tiny random checkpoints."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fast_init
from launch import sample as sample_cli
from viar_jax.io import checkpoint, png
from viar_jax.models import transformer, vqvae
from viar_jax.sample import sampler

pytestmark = pytest.mark.usefixtures('fast_compiles')  # plumbing, not numerics

VAE = vqvae.VQVAEConfig(vocab_size=32, z_channels=4, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                        image_size=16, patch_nums=(1, 2, 4))
VIAR = transformer.TransformerConfig(depth=4, embed_dim=64, num_heads=1, num_classes=5,
                                     patch_nums=(1, 2, 4), vocab_size=32, z_channels=4,
                                     implicit=True, pre_depth=1, post_depth=1)


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
  root = tmp_path_factory.mktemp('ckpt')
  vae_params, model_params = fast_init.random_params(VAE), fast_init.random_params(VIAR)
  return (checkpoint.save(root / 'vae', vae_params, VAE),
          checkpoint.save(root / 'viar', model_params, VIAR), vae_params)


def test_generate_writes_grid_pngs_and_adm_npz(ckpts, tmp_path):
  vae_dir, model_dir, _ = ckpts
  opts = sampler.SampleOptions(top_k=8, top_p=0.9, iters=sample_cli.parse_iters(['3', '1'], 3))
  assert opts.iters == (3, 2, 1)
  res = sample_cli.generate(vae_dir, model_dir, ['1', '4'], 3, 4, opts, 0, tmp_path)
  with np.load(res['npz']) as z:
    assert z['arr_0'].shape == (6, 16, 16, 3) and z['arr_0'].dtype == np.uint8
    np.testing.assert_array_equal(z['arr_1'], [1, 1, 1, 4, 4, 4])
  assert res['grid'].read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert len(list((tmp_path / 'images').glob('*.png'))) == 6
  stats = json.loads((tmp_path / 'stats.json').read_text())
  assert stats['mean_iterations_per_scale'] == [3.0, 2.0, 1.0]
  with pytest.raises(ValueError, match=r'outside \[0, 5\]'):
    sample_cli.generate(vae_dir, model_dir, ['6'], 1, 1, opts, 0, tmp_path / 'x')


def test_edit_keep_everything_reproduces_the_source(ckpts, tmp_path):
  vae_dir, model_dir, vae_params = ckpts
  img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  np.save(tmp_path / 'src.npy', img)
  source = sample_cli.load_image(str(tmp_path / 'src.npy'), 16)
  mask = np.ones((4, 4), np.float32)
  res = sample_cli.generate(vae_dir, model_dir, ['5'], 2, 2, sampler.SampleOptions(iters=(2, 2, 2)),
                            0, tmp_path / 'edit', (source, mask))
  recon = vqvae.VQVAE(VAE).apply({'params': vae_params}, jnp.asarray(source)[None],
                                 method=vqvae.VQVAE.reconstruct)
  with np.load(res['npz']) as z:
    diff = np.abs(z['arr_0'].astype(int) - png.to_uint8(np.asarray(recon))[0].astype(int))
  assert diff.max() <= 1


def test_argument_helpers():
  assert sample_cli.parse_iters([], 10) is None
  assert sample_cli.parse_iters(['10', '2'], 10) == (10, 9, 8, 7, 6, 5, 4, 3, 2, 2)
  with pytest.raises(ValueError, match='one per scale'):
    sample_cli.parse_iters(['1', '2', '3'], 4)
  mask = sample_cli.keep_mask(['0.25', '0.75', '0', '0.5'], 'inpaint', 4)
  np.testing.assert_array_equal(mask[1:3, 0:2], 0)
  assert mask.sum() == 12
  np.testing.assert_array_equal(sample_cli.keep_mask(['0.25', '0.75', '0', '0.5'], 'outpaint', 4),
                                1 - mask)
  with pytest.raises(ValueError, match='empty'):
    sample_cli.keep_mask(['0.5', '0.5', '0', '1'], 'inpaint', 4)
