"""Resampling matrices: structure checks everywhere, PyTorch comparison when torch is installed."""
import jax.numpy as jnp
import numpy as np
import pytest

from viar_jax.models import resample


@pytest.mark.parametrize('n_in,n_out', [(16, 13), (16, 5), (16, 1), (13, 16), (7, 3), (4, 4)])
def test_area_windows_overlap_like_adaptive_pooling(n_in, n_out):
  m = resample.resize_matrix('area', n_in, n_out)
  np.testing.assert_allclose(m.sum(1), 1.0, rtol=1e-6)
  for o in range(n_out):
    start, end = (o * n_in) // n_out, -(-(o + 1) * n_in // n_out)
    np.testing.assert_allclose(m[o, start:end], 1 / (end - start), rtol=1e-6)
    assert np.all(m[o, :start] == 0) and np.all(m[o, end:] == 0)


def test_area_16_to_13_windows_overlap():
  m = resample.resize_matrix('area', 16, 13)
  assert sorted({int(np.count_nonzero(row)) for row in m}) == [2, 3]
  assert np.count_nonzero(m.sum(0) > 1 / 2 + 1e-6)  # some inputs feed two outputs


@pytest.mark.parametrize('mode', resample.MODES)
def test_rows_sum_to_one_and_identity_at_equal_size(mode):
  for n_in, n_out in [(1, 16), (2, 16), (5, 16), (13, 16), (16, 8), (3, 7)]:
    np.testing.assert_allclose(resample.resize_matrix(mode, n_in, n_out).sum(1), 1.0, atol=1e-6)
  np.testing.assert_array_equal(resample.resize_matrix(mode, 9, 9), np.eye(9, dtype=np.float32))


def test_bicubic_known_values():
  # 2 -> 4: s = (o + 0.5)/2 - 0.5 = -0.25, 0.25, 0.75, 1.25; Keys A = -0.75 with clamped taps.
  m = resample.resize_matrix('bicubic', 2, 4)
  a = -0.75
  c1 = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1
  c2 = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  t = 0.25  # o = 1: i0 = 0, taps -1,0,1,2 -> clamped 0,0,1,1
  np.testing.assert_allclose(m[1], [c2(t + 1) + c1(t), c1(1 - t) + c2(2 - t)], rtol=1e-6)
  np.testing.assert_allclose(resample.resize_matrix('bicubic', 1, 5), np.ones((5, 1)), rtol=1e-6)


def test_resize_applies_separably():
  x = np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype(np.float32)
  y = resample.resize(jnp.asarray(x), (4, 9), 'bicubic')
  mh, mw = resample.resize_matrix('bicubic', 5, 4), resample.resize_matrix('bicubic', 7, 9)
  np.testing.assert_allclose(y, np.einsum('oh,bhwc,pw->bopc', mh, x, mw), rtol=1e-5, atol=1e-6)


def test_bad_arguments():
  with pytest.raises(ValueError, match='unknown resize mode'):
    resample.resize_matrix('nearest-exact', 4, 2)
  with pytest.raises(ValueError, match='positive'):
    resample.resize_matrix('area', 0, 2)
  with pytest.raises(ValueError, match=r'\(B, H, W, C\)'):
    resample.resize(jnp.zeros((4, 4, 3)), 2, 'area')


@pytest.mark.parametrize('mode', resample.MODES)
def test_matches_torch_interpolate(mode):
  # torch computes source coordinates in float32, we in float64: a few 1e-6 of difference.

  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(1)
  for n_in, n_out in [(16, 13), (16, 10), (16, 1), (1, 16), (2, 16), (13, 16), (32, 24), (9, 32),
                      (5, 3), (64, 4)]:
    x = rng.normal(size=(2, 3, n_in, n_in)).astype(np.float32)
    kw = {} if mode == 'area' else {'align_corners': False}
    want = torch.nn.functional.interpolate(torch.from_numpy(x), size=(n_out, n_out), mode=mode,
                                           **kw).numpy()
    got = resample.resize(jnp.asarray(x.transpose(0, 2, 3, 1)), n_out, mode)
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, atol=1e-5,
                               err_msg=f'{mode} {n_in}->{n_out}')
