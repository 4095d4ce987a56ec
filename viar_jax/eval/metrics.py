"""ADM-evaluator image metrics (FID, sFID, Inception Score, improved precision/recall) in numpy.

Reproduces `evaluations/evaluator.py` of openai/guided-diffusion (the "ADM evaluator" that VAR and
VIAR report with) on feature arrays; the features themselves come from `viar_jax.eval.inception`.
Everything is computed in float64 (ADM runs in float32, and its distances in float16 when finite).

Usage:
  embed = inception.make_embedder(inception.load_fid_inception(weights_path), resize_mode='tf1')
  pool, spatial, logits = embed(fake_images_uint8)
  ref = load_reference('VIRTUAL_imagenet256_labeled.npz')  # mu/sigma/mu_s/sigma_s and/or images
  ref_pool, ref_spatial, _ = embed(ref['images'])
  scores = adm_metrics(pool, spatial, logits, ref_pool=ref_pool, ref_spatial=ref_spatial,
                       ref_stats=ref)
  # {'fid', 'sfid', 'inception_score', 'inception_score_std', 'precision', 'recall'}

Semantics, against the ADM code:
  FID / sFID  `frechet_distance` is ADM's `FIDStatistics.frechet_distance`: scipy sqrtm of
              sigma1 @ sigma2, eps * I offsets if that is not finite, the real part if the
              imaginary diagonal is within 1e-3, else ValueError. Statistics: mean and
              np.cov(rowvar=False).
  IS          softmax of the 1008-way logits (ADM: pool_3 @ softmax weights, no bias), then per
              split exp(mean_i sum_k p_ik (log p_ik - log mean_i p_ik)); mean and std over splits.
              ADM uses fixed chunks of 5000 in input order; here `splits` chunks of N // splits
              (the same at N = 50000, splits = 10), the last N % splits samples left out. ADM does
              not shuffle: `seed=None` keeps that order; an int seed permutes the samples first
              (our rule: every random step is seeded, and the split assignment is one).
  Precision / ADM's `ManifoldEstimator` with its defaults: squared Euclidean distances; the radius
  recall      of a sample is the squared distance to its k-th nearest neighbour (k=3, itself
              excluded: index k of the sorted row that holds the zero self-distance); no
              percentile clamping (ADM's `clamp_to_percentile` defaults to None; when set, radii
              *above* that percentile become 0, as its code does). precision = fraction of fake
              samples inside some real sample's ball (distance <= radius), recall = fraction of
              real samples inside some fake ball. Computed in row x column blocks: 50k x 50k needs
              O(row_batch_size * col_batch_size) memory.
"""
import os
import warnings
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
from scipy import linalg

ADM_STAT_KEYS = ('mu', 'sigma', 'mu_s', 'sigma_s')


def _features_2d(x, name: str, min_rows: int = 1) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 2:
    raise ValueError(f'{name} must be a 2-D (N, D) array, got shape {x.shape}')
  if x.shape[0] < min_rows:
    raise ValueError(f'{name} needs at least {min_rows} rows, got {x.shape[0]}')
  if not np.all(np.isfinite(x)):
    raise ValueError(f'{name} contains NaN or Inf')
  return x


def feature_stats(features_ND) -> Tuple[np.ndarray, np.ndarray]:
  """(mean (D,), covariance (D, D)) of features (N, D), as ADM's `compute_statistics`."""
  x = _features_2d(features_ND, 'features', min_rows=2)
  return x.mean(axis=0), np.cov(x, rowvar=False)


def _sqrtm(a: np.ndarray) -> np.ndarray:
  # scipy >= 1.16 deprecates `disp` (ADM passes disp=False only to get the bare root back).
  out = linalg.sqrtm(a)
  return out[0] if isinstance(out, tuple) else out


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), ADM's `frechet_distance`."""
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.ndim != 1 or mu2.ndim != 1:
    raise ValueError(f'means must be 1-D, got shapes {mu1.shape} and {mu2.shape}')
  if mu1.shape != mu2.shape:
    raise ValueError(f'mean vectors have different lengths: {mu1.shape} vs {mu2.shape}')
  if sigma1.shape != sigma2.shape:
    raise ValueError(f'covariances have different shapes: {sigma1.shape} vs {sigma2.shape}')
  if sigma1.shape != (mu1.shape[0],) * 2:
    raise ValueError(f'covariance shape {sigma1.shape} does not fit mean shape {mu1.shape}')
  for name, a in (('mu1', mu1), ('sigma1', sigma1), ('mu2', mu2), ('sigma2', sigma2)):
    if not np.all(np.isfinite(a)):
      raise ValueError(f'{name} contains NaN or Inf')

  diff = mu1 - mu2
  covmean = _sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():  # product (almost) singular: ADM's eps offsets
    warnings.warn(f'sqrtm(sigma1 @ sigma2) is not finite; adding {eps} to the covariance diagonals')
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):  # numerical error can leave a small imaginary part
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f'sqrtm(sigma1 @ sigma2) has a large imaginary component '
                       f'{np.max(np.abs(covmean.imag)):.3g}; are the covariances PSD?')
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(feats_a, feats_b) -> float:
  """FID between two feature sets (N, D) and (M, D)."""
  return frechet_distance(*feature_stats(feats_a), *feature_stats(feats_b))


def _softmax(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(axis=1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=1, keepdims=True)


def inception_score(probs_or_logits_NK, splits: int = 10, seed: Optional[int] = 0,
                    from_logits: bool = False) -> Tuple[float, float]:
  """(mean, std) of the Inception Score over `splits` chunks of N // splits samples.

  `seed=None` keeps the input order (ADM); an int seed permutes the samples first.
  """
  x = _features_2d(probs_or_logits_NK, 'inception_score input')
  if int(splits) < 1:
    raise ValueError(f'splits must be >= 1, got {splits}')
  if x.shape[0] < splits:
    raise ValueError(f'inception_score needs at least `splits`={splits} samples, got {x.shape[0]}')
  if from_logits:
    p = _softmax(x)
  else:
    if np.any(x < 0) or not np.allclose(x.sum(axis=1), 1.0, atol=1e-3):
      raise ValueError('inception_score expects probabilities (rows >= 0 summing to 1); '
                       'pass from_logits=True for logits')
    p = x
  if seed is not None:
    p = p[np.random.default_rng(seed).permutation(p.shape[0])]
  size = p.shape[0] // splits
  scores = []
  for i in range(splits):
    part = p[i * size:(i + 1) * size]
    q = part.mean(axis=0, keepdims=True)
    with np.errstate(divide='ignore', invalid='ignore'):  # 0 * log 0 := 0
      kl = np.where(part > 0, part * (np.log(part) - np.log(q)), 0.0)
    scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
  return float(np.mean(scores)), float(np.std(scores))


def _sq_distances(u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """ADM's `_batch_pairwise_distances`: max(|u|^2 - 2 u.v + |v|^2, 0), built in place."""
  d = u @ v.T
  d *= -2.0
  d += np.einsum('ij,ij->i', u, u)[:, None]
  d += np.einsum('ij,ij->i', v, v)[None, :]
  return np.maximum(d, 0.0, out=d)


def _check_batch_sizes(row_batch_size: int, col_batch_size: int):
  if int(row_batch_size) < 1 or int(col_batch_size) < 1:
    raise ValueError(f'batch sizes must be positive, got row={row_batch_size}, '
                     f'col={col_batch_size}')


def manifold_radii(features, k: int = 3, row_batch_size: int = 10000,
                   col_batch_size: int = 10000,
                   clamp_to_percentile: Optional[float] = None) -> np.ndarray:
  """(N,) squared distance of each sample to its k-th nearest other sample (ADM's radii)."""
  x = _features_2d(features, 'features', min_rows=k + 1)
  _check_batch_sizes(row_batch_size, col_batch_size)
  if int(k) < 1:
    raise ValueError(f'k must be >= 1, got {k}')
  n = x.shape[0]
  radii = np.empty(n, np.float64)
  for r0 in range(0, n, row_batch_size):
    rows = x[r0:r0 + row_batch_size]
    best = None  # the k+1 smallest distances per row so far (self included)
    for c0 in range(0, n, col_batch_size):
      d = _sq_distances(rows, x[c0:c0 + col_batch_size])
      if d.shape[1] > k + 1:
        d.partition(k, axis=1)  # in place: the k+1 smallest move to the front
        d = d[:, :k + 1]
      best = d if best is None else np.concatenate([best, d], axis=1)
      if best.shape[1] > k + 1:
        best = np.partition(best, k, axis=1)[:, :k + 1]
    radii[r0:r0 + len(rows)] = np.partition(best, k, axis=1)[:, k]
  if clamp_to_percentile is not None:  # ADM's literal rule: radii above the percentile -> 0
    radii[radii > np.percentile(radii, clamp_to_percentile)] = 0
  return radii


def precision_recall(real_features, fake_features, k: int = 3, row_batch_size: int = 10000,
                     col_batch_size: int = 10000,
                     clamp_to_percentile: Optional[float] = None) -> Tuple[float, float]:
  """ADM's improved (precision, recall) of fake features against real ones (squared L2 balls)."""
  real = _features_2d(real_features, 'real_features', min_rows=k + 1)
  fake = _features_2d(fake_features, 'fake_features', min_rows=k + 1)
  if real.shape[1] != fake.shape[1]:
    raise ValueError(f'feature dims differ: real {real.shape} vs fake {fake.shape}')
  real_radii = manifold_radii(real, k, row_batch_size, col_batch_size, clamp_to_percentile)
  fake_radii = manifold_radii(fake, k, row_batch_size, col_batch_size, clamp_to_percentile)
  real_in_fake = np.zeros(real.shape[0], bool)
  fake_in_real = np.zeros(fake.shape[0], bool)
  for r0 in range(0, real.shape[0], row_batch_size):
    r1 = r0 + row_batch_size
    for c0 in range(0, fake.shape[0], col_batch_size):
      c1 = c0 + col_batch_size
      d = _sq_distances(real[r0:r1], fake[c0:c1])
      real_in_fake[r0:r1] |= np.any(d <= fake_radii[None, c0:c1], axis=1)
      fake_in_real[c0:c1] |= np.any(d <= real_radii[r0:r1, None], axis=0)
  return float(np.mean(fake_in_real)), float(np.mean(real_in_fake))


def load_reference(path: str, load_images: bool = True) -> Dict[str, np.ndarray]:
  """Reads an ADM reference batch `.npz`.

  Returns the keys present of: 'mu', 'sigma' (pool_3 statistics), 'mu_s', 'sigma_s' (spatial
  statistics), all float64 (the four come together, as ADM reads them), and 'images' (uint8
  (N, H, W, 3), from `arr_0`; only with `load_images`) for the caller to embed.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'reference batch not found: {path}')
  try:
    z = np.load(path, allow_pickle=False)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{path} is not a readable .npz file: {e}') from e
  if not hasattr(z, 'files'):
    raise ValueError(f'{path} holds a single array, not an .npz archive with ADM keys')
  with z:
    keys = set(z.files)
    out = {}
    present = [k for k in ADM_STAT_KEYS if k in keys]
    if present and len(present) != len(ADM_STAT_KEYS):
      missing = [k for k in ADM_STAT_KEYS if k not in keys]
      raise ValueError(f'{path} has statistics {present} but lacks {missing}')
    for mu_key, sigma_key in (('mu', 'sigma'), ('mu_s', 'sigma_s')):
      if mu_key in keys:
        mu, sigma = np.asarray(z[mu_key], np.float64), np.asarray(z[sigma_key], np.float64)
        if mu.ndim != 1 or sigma.shape != (mu.shape[0],) * 2:
          raise ValueError(f'{path}: {mu_key} {mu.shape} / {sigma_key} {sigma.shape} are not '
                           f'(D,) and (D, D)')
        out[mu_key], out[sigma_key] = mu, sigma
    if 'arr_0' in keys and load_images:
      images = z['arr_0']
      if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f'{path}: arr_0 must be uint8 (N, H, W, 3) images, got '
                         f'{images.dtype} {images.shape}')
      out['images'] = images
    if not present and 'arr_0' not in keys:
      raise ValueError(f'{path} has neither ADM statistics {ADM_STAT_KEYS} nor images `arr_0` '
                       f'(keys: {sorted(keys)})')
  return out


def adm_metrics(fake_pool, fake_spatial, fake_logits, *, ref_pool=None, ref_spatial=None,
                ref_stats: Optional[Mapping[str, np.ndarray]] = None, splits: int = 10,
                seed: Optional[int] = 0, k: int = 3,
                pr_batch_size: int = 10000) -> Dict[str, float]:
  """FID, sFID, IS (and its std), precision and recall, as ADM prints them.

  Reference statistics come from `ref_stats` ('mu', 'sigma', 'mu_s', 'sigma_s', e.g. from
  `load_reference`) when given, as ADM prefers them, else from `ref_pool` / `ref_spatial`.
  Precision/recall always need `ref_pool` (features, not statistics).
  """
  if ref_pool is None:
    raise ValueError('adm_metrics needs ref_pool (reference pool_3 features) for precision/recall')
  ref_stats = ref_stats or {}
  if 'mu' in ref_stats:
    ref_mu, ref_sigma = ref_stats['mu'], ref_stats['sigma']
  else:
    ref_mu, ref_sigma = feature_stats(ref_pool)
  if 'mu_s' in ref_stats:
    ref_mu_s, ref_sigma_s = ref_stats['mu_s'], ref_stats['sigma_s']
  elif ref_spatial is not None:
    ref_mu_s, ref_sigma_s = feature_stats(ref_spatial)
  else:
    raise ValueError('adm_metrics needs ref_spatial features, or ref_stats with mu_s/sigma_s, '
                     'for sFID')
  is_mean, is_std = inception_score(fake_logits, splits=splits, seed=seed, from_logits=True)
  precision, recall = precision_recall(ref_pool, fake_pool, k=k, row_batch_size=pr_batch_size,
                                       col_batch_size=pr_batch_size)
  return {
      'fid': frechet_distance(*feature_stats(fake_pool), ref_mu, ref_sigma),
      'sfid': frechet_distance(*feature_stats(fake_spatial), ref_mu_s, ref_sigma_s),
      'inception_score': is_mean,
      'inception_score_std': is_std,
      'precision': precision,
      'recall': recall,
  }
