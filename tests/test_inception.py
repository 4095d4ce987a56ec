"""FID Inception-v3: strict weight conversion, shapes end to end, preprocessing, torch parity.

The network compiles once (module-scoped embedder at batch 2); other inputs only recompile the
small preprocessing jit.
"""
import numpy as np
import pytest

from viar_jax.eval import inception
from viar_jax.io import convert


def _fabricated_state_dict(spec, seed=0):
  """Random pytorch-fid-layout weights; He-scaled convs keep activations O(1) through 94 layers."""
  rng = np.random.default_rng(seed)
  sd = {}
  for key, shape in spec.items():
    if key.endswith('conv.weight'):
      x = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / np.prod(shape[1:])))
    elif key.endswith(('bn.weight', 'running_var')):
      x = rng.random(shape, np.float32) + np.float32(0.5)
    else:
      x = rng.standard_normal(shape, np.float32) * np.float32(0.1)
    sd[key] = x.astype(np.float32)
  return sd


@pytest.fixture(scope='module')
def spec():
  return inception.state_dict_spec()


@pytest.fixture(scope='module')
def state_dict(spec):
  return _fabricated_state_dict(spec)


@pytest.fixture(scope='module')
def params(state_dict):
  return inception.convert_state_dict(state_dict)


@pytest.fixture(scope='module')
def embed(params):
  return inception.make_embedder(params, batch_size=2)


@pytest.fixture(scope='module')
def images_299():
  return np.random.default_rng(1).integers(0, 256, (2, 299, 299, 3), dtype=np.uint8)


@pytest.fixture(scope='module')
def outputs_299(embed, images_299):
  return embed(images_299)


# ------------------------------------------------------------------------------------- weights


def test_state_dict_spec_matches_pytorch_fid_layout(spec):
  assert len(spec) == 94 * 5 + 2  # 94 BasicConv2d (conv.weight + 4 bn tensors) + fc
  assert spec['Conv2d_1a_3x3.conv.weight'] == (32, 3, 3, 3)
  assert spec['Mixed_6d.branch1x1.conv.weight'] == (192, 768, 1, 1)
  assert spec['Mixed_6b.branch7x7_2.conv.weight'] == (128, 128, 1, 7)
  assert spec['Mixed_7c.branch3x3dbl_3b.conv.weight'] == (384, 384, 3, 1)
  assert spec['Mixed_7c.branch_pool.bn.running_var'] == (192,)
  assert spec['fc.weight'] == (1008, 2048) and spec['fc.bias'] == (1008,)
  assert not any('num_batches_tracked' in k or 'AuxLogits' in k for k in spec)


def test_conversion_round_trips_layouts(state_dict, params):
  key = 'Mixed_6d.branch7x7_2.conv.weight'
  np.testing.assert_array_equal(params['Mixed_6d']['branch7x7_2']['conv']['kernel'],
                                state_dict[key].transpose(2, 3, 1, 0))  # OIHW -> HWIO
  np.testing.assert_array_equal(params['fc']['kernel'], state_dict['fc.weight'].T)
  bn = params['Mixed_5b']['branch_pool']['bn']
  for leaf, torch_leaf in (('scale', 'weight'), ('bias', 'bias'), ('mean', 'running_mean'),
                           ('var', 'running_var')):
    np.testing.assert_array_equal(bn[leaf], state_dict[f'Mixed_5b.branch_pool.bn.{torch_leaf}'])
  assert isinstance(params, dict) and isinstance(params['fc'], dict)


def test_conversion_is_strict(state_dict):
  sd = dict(state_dict)
  sd['Mixed_5b.branch1x1.bn.num_batches_tracked'] = np.array(0)  # a BN counter: ignored
  inception.convert_state_dict(sd)

  def fails(sd, *fragments):
    with pytest.raises(convert.CheckpointMismatchError) as e:
      inception.convert_state_dict(sd)
    for fragment in fragments:
      assert fragment in str(e.value)

  missing = {k: v for k, v in state_dict.items() if k != 'Mixed_6e.branch_pool.bn.running_mean'}
  fails(missing, 'missing key Mixed_6e.branch_pool.bn.running_mean')
  fails(dict(state_dict, **{'AuxLogits.fc.weight': np.zeros((1000, 768))}),
        'unknown key AuxLogits.fc.weight')
  fails(dict(state_dict, **{'fc.num_batches_tracked': np.array(0)}), 'unknown key fc.num_batches')
  fails(dict(state_dict, **{'fc.weight': np.zeros((1000, 2048), np.float32)}),
        'shape mismatch fc.weight: checkpoint (1000, 2048) vs model (1008, 2048)')


def test_load_from_npz_and_missing_file(tmp_path, state_dict, params):
  with pytest.raises(FileNotFoundError, match='releases/download/fid_weights/pt_inception'):
    inception.load_fid_inception(str(tmp_path / 'pt_inception-2015-12-05-6726825d.pth'))
  path = tmp_path / 'w.npz'
  few = {k: v for k, v in state_dict.items() if not k.startswith('Mixed_7')}
  np.savez(path, **few)
  with pytest.raises(convert.CheckpointMismatchError, match='missing key Mixed_7a'):
    inception.load_fid_inception(str(path))
  np.savez(path, **state_dict)
  loaded = inception.load_fid_inception(str(path))
  np.testing.assert_array_equal(loaded['Mixed_7b']['branch3x3_2a']['conv']['kernel'],
                                params['Mixed_7b']['branch3x3_2a']['conv']['kernel'])


def test_load_legacy_torch_file(tmp_path, state_dict, params):
  torch = pytest.importorskip('torch')
  path = tmp_path / 'pt_inception.pth'
  sd = {k: torch.from_numpy(v) for k, v in state_dict.items()}
  sd['Conv2d_1a_3x3.bn.num_batches_tracked'] = torch.tensor(0)
  torch.save(sd, path, _use_new_zipfile_serialization=False)  # pre-1.6 format: cannot be mmapped
  loaded = inception.load_fid_inception(str(path))
  np.testing.assert_array_equal(loaded['fc']['kernel'], params['fc']['kernel'])


# ------------------------------------------------------------------------------- preprocessing


def test_tf1_bilinear_matrix_known_values():
  # TF1 legacy: source = o * in / out (no half-pixel shift), upper tap clamped.
  np.testing.assert_allclose(inception.tf1_bilinear_matrix(2, 4),
                             [[1, 0], [0.5, 0.5], [0, 1], [0, 1]])
  np.testing.assert_allclose(inception.tf1_bilinear_matrix(4, 2), [[1, 0, 0, 0], [0, 0, 1, 0]])
  np.testing.assert_array_equal(inception.tf1_bilinear_matrix(5, 5), np.eye(5))


def test_preprocess_normalisation_at_299(images_299):
  x = images_299.astype(np.float32)
  np.testing.assert_allclose(inception.preprocess(images_299, 'pytorch_fid'), 2 * x / 255 - 1,
                             atol=1e-6)
  np.testing.assert_allclose(inception.preprocess(x / 255, 'pytorch_fid'), 2 * x / 255 - 1,
                             atol=1e-6)
  np.testing.assert_allclose(inception.preprocess(images_299), (x - 128) / 128, atol=1e-6)
  with pytest.raises(ValueError, match='resize_mode'):
    inception.preprocess(images_299, 'area')
  with pytest.raises(ValueError, match=r'\(N, H, W, 3\)'):
    inception.preprocess(images_299[..., :1])


def test_preprocess_resize_matches_torch_interpolate():
  torch = pytest.importorskip('torch')
  img = np.random.default_rng(2).integers(0, 256, (1, 37, 45, 3), dtype=np.uint8)
  x = torch.from_numpy(img.astype(np.float32) / 255).permute(0, 3, 1, 2)
  want = torch.nn.functional.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)
  want = (2 * want - 1).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(inception.preprocess(img, 'pytorch_fid'), want, atol=1e-5)


# ------------------------------------------------------------------------------------- network


def test_forward_shapes_and_values(outputs_299):
  pool, spatial, logits = outputs_299
  assert pool.shape == (2, 2048) and spatial.shape == (2, 2023) and logits.shape == (2, 1008)
  for y in outputs_299:
    assert y.dtype == np.float32 and np.all(np.isfinite(y))
  assert pool.min() >= 0 and spatial.min() >= 0  # means of ReLU outputs / a ReLU output
  assert np.std(pool) > 0 and np.std(spatial) > 0
  assert not np.allclose(pool[0], pool[1])


def test_any_size_input_is_resized_and_batched(embed, params, images_299, outputs_299):
  small = np.random.default_rng(3).integers(0, 256, (3, 37, 45, 3), dtype=np.uint8)
  pool, spatial, logits = embed(small)  # 3 images in batches of 2: the last one padded
  assert pool.shape == (3, 2048) and spatial.shape == (3, 2023) and logits.shape == (3, 1008)
  assert np.all(np.isfinite(pool))
  again = embed(small[2:3])  # same image alone in a padded batch: same features
  np.testing.assert_allclose(again[0], pool[2:3], rtol=1e-5, atol=1e-5)
  as_float = embed(images_299.astype(np.float32) / 255)  # float [0, 1] == uint8 [0, 255]
  for a, b in zip(as_float, outputs_299):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    embed(images_299.astype(np.float32))
  with pytest.raises(ValueError, match='dtype'):
    embed(images_299.astype(np.int32))
  assert [y.shape for y in embed(images_299[:0])] == [(0, 2048), (0, 2023), (0, 1008)]


def _torch_fid_inception(sd, x):
  """pytorch-fid's FID Inception forward written with torch.nn.functional on the state dict."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  w = {k: torch.from_numpy(v) for k, v in sd.items()}

  def cbr(name, x, stride=1, pad=None):
    kernel = w[f'{name}.conv.weight']
    if pad is None:
      pad = (kernel.shape[2] // 2, kernel.shape[3] // 2)
    x = F.conv2d(x, kernel, stride=stride, padding=pad)
    x = F.batch_norm(x, w[f'{name}.bn.running_mean'], w[f'{name}.bn.running_var'],
                     w[f'{name}.bn.weight'], w[f'{name}.bn.bias'], False, 0.0, 1e-3)
    return F.relu(x)

  avg = lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
  cat = lambda *xs: torch.cat(xs, 1)

  def block_a(n, x):
    b3 = cbr(f'{n}.branch3x3dbl_2', cbr(f'{n}.branch3x3dbl_1', x))
    return cat(cbr(f'{n}.branch1x1', x), cbr(f'{n}.branch5x5_2', cbr(f'{n}.branch5x5_1', x)),
               cbr(f'{n}.branch3x3dbl_3', b3), cbr(f'{n}.branch_pool', avg(x)))

  def block_c(n, x):
    b7 = x
    for i in (1, 2, 3):
      b7 = cbr(f'{n}.branch7x7_{i}', b7)
    bd = x
    for i in (1, 2, 3, 4, 5):
      bd = cbr(f'{n}.branch7x7dbl_{i}', bd)
    b1 = cbr(f'{n}.branch1x1', x)
    return cat(b1, b7, bd, cbr(f'{n}.branch_pool', avg(x))), b1

  def block_e(n, x, pool):
    b3 = cbr(f'{n}.branch3x3_1', x)
    bd = cbr(f'{n}.branch3x3dbl_2', cbr(f'{n}.branch3x3dbl_1', x))
    return cat(cbr(f'{n}.branch1x1', x),
               cbr(f'{n}.branch3x3_2a', b3), cbr(f'{n}.branch3x3_2b', b3),
               cbr(f'{n}.branch3x3dbl_3a', bd), cbr(f'{n}.branch3x3dbl_3b', bd),
               cbr(f'{n}.branch_pool', pool(x)))

  x = cbr('Conv2d_1a_3x3', x, 2, 0)
  x = cbr('Conv2d_2a_3x3', x, 1, 0)
  x = F.max_pool2d(cbr('Conv2d_2b_3x3', x), 3, 2)
  x = F.max_pool2d(cbr('Conv2d_4a_3x3', cbr('Conv2d_3b_1x1', x), 1, 0), 3, 2)
  for n in ('Mixed_5b', 'Mixed_5c', 'Mixed_5d'):
    x = block_a(n, x)
  bd = cbr('Mixed_6a.branch3x3dbl_2', cbr('Mixed_6a.branch3x3dbl_1', x))
  x = cat(cbr('Mixed_6a.branch3x3', x, 2, 0), cbr('Mixed_6a.branch3x3dbl_3', bd, 2, 0),
          F.max_pool2d(x, 3, 2))
  x, _ = block_c('Mixed_6b', x)
  x, _ = block_c('Mixed_6c', x)
  x, mixed_6_conv = block_c('Mixed_6d', x)
  x, _ = block_c('Mixed_6e', x)
  b3 = cbr('Mixed_7a.branch3x3_2', cbr('Mixed_7a.branch3x3_1', x), 2, 0)
  b7 = x
  for i in (1, 2, 3):
    b7 = cbr(f'Mixed_7a.branch7x7x3_{i}', b7)
  x = cat(b3, cbr('Mixed_7a.branch7x7x3_4', b7, 2, 0), F.max_pool2d(x, 3, 2))
  x = block_e('Mixed_7b', x, avg)
  x = block_e('Mixed_7c', x, lambda x: F.max_pool2d(x, 3, 1, 1))
  pool = x.mean((2, 3))
  spatial = mixed_6_conv[:, :7].permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # TF's (h, w, c)
  return pool.numpy(), spatial.numpy(), (pool @ w['fc.weight'].T).numpy()


def test_matches_functional_torch_reference(state_dict, images_299, outputs_299):
  torch = pytest.importorskip('torch')
  # The embedder's default 'tf1' preprocessing at 299 x 299 (no resize): (x - 128) / 128.
  x = (torch.from_numpy(images_299.astype(np.float32)).permute(0, 3, 1, 2) - 128) / 128
  with torch.no_grad():
    want = _torch_fid_inception(state_dict, x)
  for name, got, ref in zip(('pool', 'spatial', 'logits'), outputs_299, want):
    scale = np.abs(ref).max()
    np.testing.assert_allclose(got / scale, ref / scale, atol=2e-5, err_msg=name)
