"""Sampling to files (viar_jax.sample.generate, launch.sample's flags) on tiny random checkpoints."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from viar_jax.io import checkpoint, png
from viar_jax.models import factory, transformer, vqvae
from viar_jax.sample import edit, generate, sampler, sampling_flags, schedule

pytestmark = pytest.mark.usefixtures('fast_compiles')  # plumbing, not numerics

VAE = vqvae.VQVAEConfig(vocab_size=32, z_channels=4, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                        image_size=16, patch_nums=(1, 2, 4))
VIAR = transformer.TransformerConfig(depth=4, embed_dim=64, num_heads=1, num_classes=5,
                                     patch_nums=(1, 2, 4), vocab_size=32, z_channels=4,
                                     implicit=True, pre_depth=1, post_depth=1)


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
  root = tmp_path_factory.mktemp('ckpt')
  vae_params, model_params = factory.random_params(VAE), factory.random_params(VIAR)
  return (checkpoint.save(root / 'vae', vae_params, VAE),
          checkpoint.save(root / 'viar', model_params, VIAR), vae_params)


@pytest.mark.slow
def test_generate_writes_grid_pngs_and_adm_npz(ckpts, tmp_path):
  vae_dir, model_dir, _ = ckpts
  opts = sampler.SampleOptions(top_k=8, top_p=0.9, iters=schedule.parse(['3', '1'], 3))
  assert opts.iters == (3, 2, 1)
  res = generate.generate(vae_dir, model_dir, ['1', '4'], 3, 4, opts, 0, tmp_path)
  with np.load(res['npz']) as z:
    assert z['arr_0'].shape == (6, 16, 16, 3) and z['arr_0'].dtype == np.uint8
    np.testing.assert_array_equal(z['arr_1'], [1, 1, 1, 4, 4, 4])
  assert res['grid'].read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert len(list((tmp_path / 'images').glob('*.png'))) == 6
  stats = json.loads((tmp_path / 'stats.json').read_text())
  assert stats['mean_iterations_per_scale'] == [3.0, 2.0, 1.0]
  with pytest.raises(ValueError, match=r'outside \[0, 5\]'):
    generate.generate(vae_dir, model_dir, ['6'], 1, 1, opts, 0, tmp_path / 'x')


@pytest.mark.slow
def test_edit_keep_everything_reproduces_the_source(ckpts, tmp_path):
  vae_dir, model_dir, vae_params = ckpts
  img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  np.save(tmp_path / 'src.npy', img)
  source = edit.load_image(str(tmp_path / 'src.npy'), 16)
  mask = np.ones((4, 4), np.float32)
  res = generate.generate(vae_dir, model_dir, ['5'], 2, 2, sampler.SampleOptions(iters=(2, 2, 2)),
                            0, tmp_path / 'edit', (source, mask))
  recon = vqvae.VQVAE(VAE).apply({'params': vae_params}, jnp.asarray(source)[None],
                                 method=vqvae.VQVAE.reconstruct)
  with np.load(res['npz']) as z:
    diff = np.abs(z['arr_0'].astype(int) - png.to_uint8(np.asarray(recon))[0].astype(int))
  assert diff.max() <= 1


def test_argument_helpers(ckpts):
  fv = flags.FlagValues()  # launch.sample's and launch.evaluate's shared flags, parsed apart
  sampling_flags.define(fv)
  vae_dir, model_dir, _ = ckpts
  fv(['sample', f'--vae_ckpt={vae_dir}', f'--model_ckpt={model_dir}', '--iters=10,2', '--top_k=5',
      '--cache=final_iterate', '--tol=1e-3', '--classes=1,2'])
  options = sampling_flags.options(10, fv)
  assert options.iters == (10, 9, 8, 7, 6, 5, 4, 3, 2, 2) and options.top_k == 5
  assert options.cache_mode == 'final_iterate' and options.tol == 1e-3
  args = sampling_flags.generate_args(options, fv)
  assert args['classes'] == ['1', '2'] and args['options'] is options and args['per_class'] == 4
  fv.unparse_flags()
  fv(['sample'])
  assert sampling_flags.options(10, fv).iters is None  # the model's eval_iters
  with pytest.raises(ValueError, match='one count per scale'):
    schedule.parse(['1', '2', '3'], 4)
  mask = edit.keep_mask(['0.25', '0.75', '0', '0.5'], 'inpaint', 4)
  np.testing.assert_array_equal(mask[1:3, 0:2], 0)
  assert mask.sum() == 12
  np.testing.assert_array_equal(edit.keep_mask(['0.25', '0.75', '0', '0.5'], 'outpaint', 4),
                                1 - mask)
  with pytest.raises(ValueError, match='empty'):
    edit.keep_mask(['0.5', '0.5', '0', '1'], 'inpaint', 4)
  with pytest.raises(ValueError, match='4 values'):
    edit.keep_mask(['0.5', '1'], 'inpaint', 4)
  with pytest.raises(ValueError, match='viar holds a TransformerConfig, not a tokenizer'):
    generate.generate(model_dir, model_dir, [], 1, 1, sampler.SampleOptions(), 0, 'unused')
