"""VQ-VAE parity with the reference PyTorch code, for every fixture set under tests/fixtures/."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fixture_sets
from viar_jax.models import resample, vqvae

SETS = fixture_sets.discover()


@pytest.fixture(scope='module', params=SETS, ids=[s.name for s in SETS])
def run(request):
  """Converts a set's state dict and runs every tokenizer method once (jitted)."""
  set_dir = request.param
  data = fixture_sets.arrays(set_dir, 'vqvae')
  model, params = fixture_sets.tokenizer(set_dir)
  img = jnp.asarray(fixture_sets.nchw_to_nhwc(data['in/img']))
  variables = {'params': params}
  call = lambda method, *a: jax.jit(functools.partial(model.apply, method=method))(variables, *a)
  out = {'f': call(vqvae.VQVAE.encode, img),
         'idx': call(vqvae.VQVAE.img_to_idx, img),
         'fhats': call(vqvae.VQVAE.img_to_fhats, img)}
  out['fhats_from_idx'] = call(vqvae.VQVAE.idx_to_fhats, out['idx'])
  out['var_input'] = call(vqvae.VQVAE.idx_to_var_input, out['idx'])
  out['idx_one_pass'], out['var_input_one_pass'] = call(vqvae.VQVAE.img_to_idx_and_var_input, img)
  out['recon'] = call(vqvae.VQVAE.fhat_to_img, out['fhats'][-1])
  return data, model.config, jax.tree.map(np.asarray, out)


def max_err(a, b):
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def test_resize_operators_match_reference(run):
  data, cfg, _ = run
  n = cfg.latent_size
  for pn in cfg.patch_nums:
    assert max_err(resample.resize_matrix('area', n, pn), data[f'op/area_{pn}']) <= 1e-6
    assert max_err(resample.resize_matrix('bicubic', pn, n), data[f'op/bicubic_{pn}']) <= 1e-6


def test_latent_matches(run):
  data, _, out = run
  assert max_err(out['f'], fixture_sets.nchw_to_nhwc(data['out/f'])) <= 1e-4


def test_tokens_identical(run):
  data, cfg, out = run
  assert len(out['idx']) == len(cfg.patch_nums)
  for k, idx in enumerate(out['idx']):
    assert idx.dtype == np.int32
    np.testing.assert_array_equal(idx, data[f'out/idx_{k}'], err_msg=f'scale {k}')


def test_fhat_per_scale_matches(run):
  data, _, out = run
  for k, (from_img, from_idx) in enumerate(zip(out['fhats'], out['fhats_from_idx'])):
    want = fixture_sets.nchw_to_nhwc(data[f'out/fhat_{k}'])
    assert max_err(from_img, want) <= 1e-4, f'scale {k}'
    assert max_err(from_idx, want) <= 1e-4, f'scale {k} (from tokens)'


def test_teacher_forcing_input_matches(run):
  data, _, out = run
  assert max_err(out['var_input'], data['out/var_input']) <= 1e-4
  assert max_err(out['var_input_one_pass'], data['out/var_input']) <= 1e-4  # the training path
  for k, idx in enumerate(out['idx_one_pass']):
    np.testing.assert_array_equal(idx, data[f'out/idx_{k}'])


def test_decoded_image_matches(run):
  data, _, out = run
  assert max_err(out['recon'], fixture_sets.nchw_to_nhwc(data['out/recon'])) <= 1e-4


def test_fixture_discovery_finds_the_public_set():
  assert 'reference_small' in fixture_sets.set_ids()
