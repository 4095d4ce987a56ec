"""ADM metrics against independent computations: closed forms, brute force, known distributions."""
import numpy as np
import pytest
from scipy import special

from viar_jax.eval import metrics


def _random_spd(rng, d, scale=1.0):
  a = rng.standard_normal((d, d))
  return scale * (a @ a.T / d + 0.1 * np.eye(d))


def _sym_sqrt(s):
  w, v = np.linalg.eigh(s)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


# ------------------------------------------------------------------------------------------ FID


def test_fid_commuting_covariances_closed_form():
  rng = np.random.default_rng(0)
  d = 6
  q, _ = np.linalg.qr(rng.standard_normal((d, d)))
  a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  # Common eigenvectors: tr(S1 + S2 - 2 (S1 S2)^1/2) = sum (sqrt(a) - sqrt(b))^2.
  want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = metrics.frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
  np.testing.assert_allclose(got, want, rtol=1e-9)


def test_fid_general_covariances_closed_form():
  rng = np.random.default_rng(1)
  d = 8
  s1, s2 = _random_spd(rng, d), _random_spd(rng, d, 2.0)
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  # tr (S1 S2)^1/2 = tr (S1^1/2 S2 S1^1/2)^1/2, the latter symmetric: eigendecompositions only.
  r1 = _sym_sqrt(s1)
  want = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(_sym_sqrt(r1 @ s2 @ r1))
  np.testing.assert_allclose(metrics.frechet_distance(mu1, s1, mu2, s2), want, rtol=1e-9)
  assert abs(metrics.frechet_distance(mu1, s1, mu1, s1)) < 1e-9


def test_fid_of_samples_same_and_shifted_distribution():
  rng = np.random.default_rng(2)
  d, n = 4, 20000
  chol = np.linalg.cholesky(_random_spd(rng, d))
  a = rng.standard_normal((n, d)) @ chol.T
  b = rng.standard_normal((n, d)) @ chol.T
  assert 0 <= metrics.fid_from_features(a, b) < 0.01
  shift = np.array([1.0, -2.0, 0.5, 0.0])
  np.testing.assert_allclose(metrics.fid_from_features(a, b + shift), np.sum(shift ** 2), rtol=0.02)


def test_feature_stats_mean_and_unbiased_covariance():
  x = np.random.default_rng(3).standard_normal((50, 5))
  mu, sigma = metrics.feature_stats(x)
  xc = x - x.sum(0) / 50
  np.testing.assert_allclose(mu, x.sum(0) / 50, rtol=1e-12)
  np.testing.assert_allclose(sigma, xc.T @ xc / 49, rtol=1e-12)


def test_fid_non_finite_root_retries_with_eps_offsets(monkeypatch):
  calls = []

  def flaky_sqrtm(a):  # the first root fails, as scipy's may on a singular product
    calls.append(a.copy())
    return np.full_like(a, np.nan) if len(calls) == 1 else _sym_sqrt(a)

  monkeypatch.setattr(metrics, '_sqrtm', flaky_sqrtm)
  s1, s2 = np.diag([1.0, 0.0]), np.diag([4.0, 0.0])
  with pytest.warns(UserWarning, match='adding 0.001'):
    got = metrics.frechet_distance(np.zeros(2), s1, np.ones(2), s2, eps=1e-3)
  np.testing.assert_allclose(calls[1], (s1 + 1e-3 * np.eye(2)) @ (s2 + 1e-3 * np.eye(2)))
  # ADM offsets only the root: 2 + tr(S1) + tr(S2) - 2 (sqrt(1.001 * 4.001) + 0.001)
  np.testing.assert_allclose(got, 2 + 5 - 2 * (np.sqrt(1.001 * 4.001) + 1e-3), rtol=1e-12)


@pytest.mark.parametrize('args,match', [
    ((np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)), 'different lengths'),
    ((np.zeros(3), np.eye(3), np.zeros(3), np.eye(2)), 'different shapes'),
    ((np.zeros(3), np.eye(2), np.zeros(3), np.eye(2)), 'does not fit'),
    ((np.full(3, np.nan), np.eye(3), np.zeros(3), np.eye(3)), 'NaN'),
])
def test_fid_errors(args, match):
  with pytest.raises(ValueError, match=match):
    metrics.frechet_distance(*args)


def test_feature_stats_errors():
  with pytest.raises(ValueError, match='2-D'):
    metrics.feature_stats(np.zeros(5))
  with pytest.raises(ValueError, match='at least 2'):
    metrics.feature_stats(np.zeros((1, 5)))


# ------------------------------------------------------------------------------------------- IS


def _is_by_entropy(p, splits):
  """IS = exp(H(mean p) - mean H(p)) per consecutive split: the entropy form of the KL mean."""
  size = len(p) // splits
  scores = []
  for i in range(splits):
    part = p[i * size:(i + 1) * size]
    scores.append(np.exp(special.entr(part.mean(0)).sum() - special.entr(part).sum(1).mean()))
  return np.mean(scores), np.std(scores)


def test_is_uniform_one_hot_equals_number_of_classes():
  k = 10
  p = np.tile(np.eye(k), (100, 1))  # every consecutive split of 100 holds each class 10 times
  mean, std = metrics.inception_score(p, splits=10, seed=None)
  np.testing.assert_allclose([mean, std], [k, 0], atol=1e-9)
  # one split: order does not matter, any seed
  np.testing.assert_allclose(metrics.inception_score(p, splits=1, seed=5)[0], k, rtol=1e-12)


def test_is_identical_predictions_is_one():
  p = np.tile(special.softmax(np.random.default_rng(4).standard_normal(7)), (40, 1))
  np.testing.assert_allclose(metrics.inception_score(p, splits=4), (1.0, 0.0), atol=1e-12)


def test_is_matches_entropy_form_and_logits_path():
  logits = 3 * np.random.default_rng(5).standard_normal((103, 12))
  p = special.softmax(logits, axis=1)
  want = _is_by_entropy(p, 5)  # 103 // 5 = 20 per split, last 3 left out
  np.testing.assert_allclose(metrics.inception_score(p, splits=5, seed=None), want, rtol=1e-10)
  np.testing.assert_allclose(metrics.inception_score(logits, splits=5, seed=None, from_logits=True),
                             want, rtol=1e-10)


def test_is_seeded_split_is_reproducible_permutation():
  p = special.softmax(2 * np.random.default_rng(6).standard_normal((200, 9)), axis=1)
  a = metrics.inception_score(p, splits=4, seed=3)
  assert a == metrics.inception_score(p, splits=4, seed=3)
  assert a != metrics.inception_score(p, splits=4, seed=4)
  perm = np.random.default_rng(3).permutation(200)
  np.testing.assert_allclose(a, _is_by_entropy(p[perm], 4), rtol=1e-10)


def test_is_errors():
  with pytest.raises(ValueError, match='from_logits'):
    metrics.inception_score(np.ones((20, 4)))
  with pytest.raises(ValueError, match='at least'):
    metrics.inception_score(np.full((5, 2), 0.5), splits=10)


# ----------------------------------------------------------------------------- precision/recall


def _brute_pr(real, fake, k, clamp=None):
  """O(N^2) improved precision/recall: direct squared differences, full sorts."""
  def radii(x):
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    r = np.sort(d, axis=1)[:, k]  # column 0 is the sample itself
    if clamp is not None:
      r = np.where(r > np.percentile(r, clamp), 0.0, r)
    return r
  r_real, r_fake = radii(real), radii(fake)
  d = ((real[:, None, :] - fake[None, :, :]) ** 2).sum(-1)  # (real, fake)
  precision = np.mean([np.any(d[:, j] <= r_real) for j in range(len(fake))])
  recall = np.mean([np.any(d[i, :] <= r_fake) for i in range(len(real))])
  return (precision, recall), r_real


@pytest.mark.parametrize('clamp', [None, 60])
def test_pr_batched_equals_brute_force_exactly(clamp):
  rng = np.random.default_rng(7)
  # Small integers: every squared distance is exact in float64 whatever the summation order, and
  # ties (duplicates included) are frequent.
  real = rng.integers(-3, 4, (37, 5)).astype(np.float64)
  fake = rng.integers(-2, 5, (29, 5)).astype(np.float64)
  want, want_radii = _brute_pr(real, fake, 3, clamp)
  got = metrics.precision_recall(real, fake, k=3, row_batch_size=7, col_batch_size=5,
                                 clamp_to_percentile=clamp)
  assert got == want
  np.testing.assert_array_equal(
      metrics.manifold_radii(real, 3, row_batch_size=4, col_batch_size=6,
                             clamp_to_percentile=clamp), want_radii)
  assert got == metrics.precision_recall(real, fake, clamp_to_percentile=clamp)  # one block


def test_pr_identical_disjoint_and_nested_clouds():
  rng = np.random.default_rng(8)
  x = rng.standard_normal((200, 8))
  assert metrics.precision_recall(x, x.copy()) == (1.0, 1.0)
  assert metrics.precision_recall(x, x + 1000.0) == (0.0, 0.0)
  real = rng.uniform(0, 1, (2000, 2))
  fake = rng.uniform(0, 0.5, (500, 2))  # a quarter of the real support
  precision, recall = metrics.precision_recall(real, fake, row_batch_size=300, col_batch_size=700)
  assert precision > 0.95 and recall < 0.5


def test_pr_errors():
  with pytest.raises(ValueError, match='feature dims'):
    metrics.precision_recall(np.zeros((10, 3)), np.zeros((10, 4)))
  with pytest.raises(ValueError, match='at least 4'):
    metrics.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
  with pytest.raises(ValueError, match='batch sizes'):
    metrics.precision_recall(np.zeros((10, 2)), np.zeros((10, 2)), row_batch_size=0)


# ------------------------------------------------------------------------------ reference / all


def test_load_reference_roundtrip_and_errors(tmp_path):
  rng = np.random.default_rng(9)
  images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
  stats = dict(mu=np.ones(4, np.float32), sigma=np.eye(4), mu_s=np.zeros(2), sigma_s=np.eye(2))
  np.savez(tmp_path / 'ref.npz', arr_0=images, **stats)
  ref = metrics.load_reference(str(tmp_path / 'ref.npz'))
  assert set(ref) == {'mu', 'sigma', 'mu_s', 'sigma_s', 'images'}
  assert ref['mu'].dtype == np.float64
  np.testing.assert_array_equal(ref['images'], images)
  assert 'images' not in metrics.load_reference(str(tmp_path / 'ref.npz'), load_images=False)

  with pytest.raises(FileNotFoundError, match='nope.npz'):
    metrics.load_reference(str(tmp_path / 'nope.npz'))
  cases = {
      'partial': (dict(mu=stats['mu'], sigma=stats['sigma']), r"lacks \['mu_s', 'sigma_s'\]"),
      'shape': (dict(stats, sigma=np.eye(3)), 'not'),
      'dtype': (dict(arr_0=images.astype(np.float32)), 'uint8'),
      'empty': (dict(foo=np.zeros(2)), 'neither'),
  }
  for name, (arrays, match) in cases.items():
    np.savez(tmp_path / f'{name}.npz', **arrays)
    with pytest.raises(ValueError, match=match):
      metrics.load_reference(str(tmp_path / f'{name}.npz'))


def test_adm_metrics_composes_the_parts():
  rng = np.random.default_rng(10)
  ref_pool, fake_pool = rng.standard_normal((60, 5)), rng.standard_normal((50, 5)) + 0.3
  ref_sp, fake_sp = rng.standard_normal((60, 3)), rng.standard_normal((50, 3))
  logits = rng.standard_normal((50, 7))
  out = metrics.adm_metrics(fake_pool, fake_sp, logits, ref_pool=ref_pool, ref_spatial=ref_sp,
                            splits=5)
  assert out['fid'] == metrics.fid_from_features(fake_pool, ref_pool)
  assert out['sfid'] == metrics.fid_from_features(fake_sp, ref_sp)
  assert (out['inception_score'], out['inception_score_std']) == metrics.inception_score(
      logits, splits=5, from_logits=True)
  assert (out['precision'], out['recall']) == metrics.precision_recall(ref_pool, fake_pool)
  # Stored statistics take precedence over reference features, as in ADM.
  stats = dict(mu=np.zeros(5), sigma=np.eye(5), mu_s=np.zeros(3), sigma_s=np.eye(3))
  out2 = metrics.adm_metrics(fake_pool, fake_sp, logits, ref_pool=ref_pool, ref_stats=stats,
                             splits=5)
  assert out2['fid'] == metrics.frechet_distance(*metrics.feature_stats(fake_pool), np.zeros(5),
                                                 np.eye(5))
  with pytest.raises(ValueError, match='sFID'):
    metrics.adm_metrics(fake_pool, fake_sp, logits, ref_pool=ref_pool)
