"""Sampling to files (viar_jax.sample.generate, launch.sample's flags) on tiny random checkpoints."""
import json

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
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
  source, _ = edit.load_image(str(tmp_path / 'src.npy'), 16)
  mask = np.ones((4, 4), np.float32)
  res = generate.generate(vae_dir, model_dir, ['5'], 2, 2, sampler.SampleOptions(iters=(2, 2, 2)),
                            0, tmp_path / 'edit', (source, mask))
  recon = vqvae.VQVAE(VAE).apply({'params': vae_params}, jnp.asarray(source)[None],
                                 method=vqvae.VQVAE.reconstruct)
  with np.load(res['npz']) as z:
    diff = np.abs(z['arr_0'].astype(int) - png.to_uint8(np.asarray(recon))[0].astype(int))
  assert diff.max() <= 1
  # grid.png: the source and the marked source lead the row of 2 edits, 16px shown 4x (+2px gaps)
  assert Image.open(res['grid']).size == (4 * (64 + 2) + 2, 64 + 4)


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


def test_edit_sources_from_png_and_jpeg_of_any_size(tmp_path):
  """A 40x24 (W x H) photo: shorter side to round(1.125 R) = 18 with Lanczos, centre 16 x 16 crop,
  as the reference evaluates; a JPEG goes the same way; bad files are named."""
  rng = np.random.default_rng(0)
  photo = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
  Image.fromarray(photo).save(tmp_path / 'photo.png')
  image, hw = edit.load_image(str(tmp_path / 'photo.png'), 16)
  assert hw == (24, 40) and image.shape == (16, 16, 3) and image.dtype == np.float32
  resized = np.asarray(Image.fromarray(photo).resize((30, 18), Image.Resampling.LANCZOS))
  np.testing.assert_array_equal(image, resized[1:17, 7:23] / np.float32(127.5) - np.float32(1))
  smooth = np.broadcast_to(np.linspace(0, 255, 40, dtype=np.uint8)[None, :, None], (24, 40, 3))
  Image.fromarray(np.ascontiguousarray(smooth)).save(tmp_path / 'smooth.png')
  Image.fromarray(np.ascontiguousarray(smooth)).save(tmp_path / 'smooth.jpg', quality=95)
  jpeg, _ = edit.load_image(str(tmp_path / 'smooth.jpg'), 16)
  lossless, _ = edit.load_image(str(tmp_path / 'smooth.png'), 16)
  assert np.abs(jpeg - lossless).max() < 0.05  # the same picture, up to JPEG loss
  (tmp_path / 'broken.png').write_bytes(b'not a png')
  with pytest.raises(ValueError, match='cannot read the edit image .*broken.png'):
    edit.load_image(str(tmp_path / 'broken.png'), 16)
  with pytest.raises(ValueError, match='cannot read the edit image .*missing.npy'):
    edit.load_image(str(tmp_path / 'missing.npy'), 16)


def test_edit_mask_image_marks_token_cells(tmp_path):
  """White = regenerate, given at the photo's size and cropped as the photo: the left half of a
  32x32 mask regenerates the left two columns of a 4x4 token grid."""
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / 'photo.png')
  mask = np.zeros((32, 32), np.uint8)
  mask[:, :16] = 255
  Image.fromarray(mask).save(tmp_path / 'mask.png')
  keep = edit.mask_from_image(str(tmp_path / 'mask.png'), (32, 32), 16, 4)
  np.testing.assert_array_equal(keep, np.tile([0, 0, 1, 1], (4, 1)).astype(np.float32))
  with pytest.raises(ValueError, match=r'edit mask .* is 32x32 \(W x H\) but the edit image is 40x24'):
    edit.mask_from_image(str(tmp_path / 'mask.png'), (24, 40), 16, 4)
  Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / 'black.png')
  with pytest.raises(ValueError, match='marks no token cell'):
    edit.mask_from_image(str(tmp_path / 'black.png'), (32, 32), 16, 4)


@pytest.mark.slow
def test_images_do_not_depend_on_device_count_or_batch(ckpts, tmp_path):
  """Per-image keys: 1 device x 4 a call, 4 devices x 1, and 2 devices x 3 (the last call padded)
  give the same images for the same seed; another seed gives others. "The same" up to one level of
  8-bit rounding on a few pixels: XLA:CPU convolutions are not bitwise invariant to the batch size
  at every shape (a 3x3 conv at 4 x 4 x 32 differs by 2e-6 between batch 1 and 4), so a decoded
  value on a rounding boundary may land one level apart."""
  vae_dir, model_dir, _ = ckpts
  opts = sampler.SampleOptions(top_k=8, top_p=0.9, iters=(2, 2, 1))
  runs = {}
  for name, devices, batch, seed in (('1x4', 1, 4, 3), ('4x1', 4, 1, 3), ('2x3', 2, 3, 3),
                                     ('seed4', 4, 1, 4)):
    res = generate.generate(vae_dir, model_dir, ['0', '2'], 2, batch, opts, seed, tmp_path / name,
                            devices=jax.devices()[:devices])
    with np.load(res['npz']) as z:
      runs[name] = (z['arr_0'], z['arr_1'])
  difference = lambda name: np.abs(runs[name][0].astype(int) - runs['1x4'][0])
  for name in ('4x1', '2x3'):
    assert difference(name).max() <= 1 and np.mean(difference(name) > 0) < 1e-3, name
    np.testing.assert_array_equal(runs[name][1], [0, 0, 2, 2])
  assert difference('seed4').max() > 16
