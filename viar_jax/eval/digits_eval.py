"""Digits quality harness: a small CNN classifier for class accuracy and a digits-FID.

    from viar_jax.eval import digits_eval
    acc = digits_eval.class_accuracy(images_N88x3_uint8, requested_labels)  # classifier agreement
    fid = digits_eval.digits_fid(images_N88x3_uint8)  # vs the 297 held-out test digits
    floor = digits_eval.reference_fid()  # train split vs test split (real vs real)

Images are uint8 (N, 8, 8, 3) (or (N, 8, 8, 1)), exactly what `launch.sample` writes to samples.npz
(`arr_0`); convert sampler outputs in [0, 1] with `png.to_uint8(images, (0.0, 1.0))` first.

The classifier (3x3 convs of 16 and 32 channels, max-pool, a 128-unit hidden layer) trains on the
train split (400 Adam steps of 64 digits shifted by up to 1 px) with a fixed seed in a few seconds
on CPU, bit-reproducibly, to 98.7-99.7 % on the 297 test digits (seeds 0-4). It is cached as an .npz
under `$VIAR_JAX_CLASSIFIER_DIR` (default `~/.cache/viar_jax/digits_classifier/`), keyed by `VERSION`
and the seed, so later calls load it; `train_classifier(seed)` retrains explicitly. The digits-FID is
the Fréchet distance between Gaussians fitted to the hidden layer's pre-activations
(`metrics.feature_stats` / `metrics.frechet_distance`): comparable only between runs with the same
classifier version and seed, and, like any FID, biased upwards at small sample counts (1000 train
digits score ~5.5, all 1500 ~4.3; fewer than 129 images give a singular covariance).
"""
import functools
import os
import pathlib
import tempfile
from typing import Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from viar_jax.eval import metrics
from viar_jax import data as data_lib

VERSION = 'cnn-v1'  # bump whenever the architecture or the training recipe changes
NUM_CLASSES = 10
IMAGE_SIZE = 8
FEATURE_DIM = 128
CACHE_ENV = 'VIAR_JAX_CLASSIFIER_DIR'
TRAIN_STEPS = 400
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
_CHUNK = 256  # fixed inference batch (inputs are padded to it): one compile for any N


class DigitsClassifier(nn.Module):
  """(N, 8, 8, C) float in [-1, 1] -> (logits (N, 10), penultimate pre-activations (N, 128))."""

  @nn.compact
  def __call__(self, x_NHWC):
    # Real digits are grey repeated to RGB; generated ones can drift apart per channel. Averaging the
    # channels makes the classifier see only the luminance it was trained on.
    x = jnp.mean(x_NHWC, axis=-1, keepdims=True)
    x = nn.relu(nn.Conv(16, (3, 3))(x))
    x = nn.relu(nn.Conv(32, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    # The features are taken before the ReLU: a third of the units never fire on digits, and their
    # constant zeros would make every feature covariance singular.
    features = nn.Dense(FEATURE_DIM)(x.reshape(x.shape[0], -1))
    return nn.Dense(NUM_CLASSES)(nn.relu(features)), features


_MODEL = DigitsClassifier()


# --- data -----------------------------------------------------------------------------------------


def load_split(split: str, data_dir=None) -> Tuple[np.ndarray, np.ndarray]:
  """-> (images uint8 (N, 8, 8, 3), labels int32 (N,)) of the digits 'train' or 'test' split.

  Read once per process and (split, data_dir); the arrays are read-only.
  """
  key = None if data_dir is None else str(pathlib.Path(data_dir).expanduser().absolute())
  return _read_split(split, key)


@functools.lru_cache(maxsize=None)
def _read_split(split: str, data_dir: Optional[str]) -> Tuple[np.ndarray, np.ndarray]:
  source = data_lib.open_source('digits', split, data_dir)
  records = [source[i] for i in range(len(source))]
  images = np.stack([np.asarray(r['image'], np.uint8) for r in records])
  images = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
  labels = np.asarray([int(r['label']) for r in records], np.int32)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def check_images(images) -> np.ndarray:
  """Validates the harness input: uint8 (N, 8, 8, 1 or 3). Returns it as a numpy array."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f'digits metrics take uint8 images (N, 8, 8, 3), got dtype {images.dtype}; '
                     'convert sampler outputs in [0, 1] with png.to_uint8(images, (0.0, 1.0))')
  if (images.ndim != 4 or images.shape[1:3] != (IMAGE_SIZE, IMAGE_SIZE)
      or images.shape[3] not in (1, 3)):
    raise ValueError(f'digits metrics take (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3) images, got shape '
                     f'{images.shape}')
  if len(images) == 0:
    raise ValueError('digits metrics need at least one image, got an empty array')
  return images


def check_labels(labels, num_images: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape != (num_images,) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be ({num_images},) integers, one per image; got {labels.dtype} '
                     f'{labels.shape}')
  bad = np.unique(labels[(labels < 0) | (labels >= NUM_CLASSES)])
  if bad.size:
    raise ValueError(f'labels {bad.tolist()} outside the digit classes [0, {NUM_CLASSES}) (the null '
                     'class has no requested digit)')
  return labels.astype(np.int32)


def to_float(images_uint8: np.ndarray) -> np.ndarray:
  """uint8 -> float32 in [-1, 1], the training pipeline's mapping (uint8 / 127.5 - 1)."""
  return images_uint8.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def shift_images(images_BHWC, dy_B, dx_B):
  """Shifts float [-1, 1] images (B, H, W, C) by (dy - 1, dx - 1) px, dy and dx (B,) in {0, 1, 2}.

  Vacated pixels become the background, -1.
  """
  b, h, w, _ = images_BHWC.shape
  padded = np.pad(images_BHWC, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-1.0)
  rows = dy_B[:, None] + np.arange(h)[None]  # (B, H)
  cols = dx_B[:, None] + np.arange(w)[None]  # (B, W)
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


# --- training and caching -------------------------------------------------------------------------


def _optimizer(steps: int) -> optax.GradientTransformation:
  return optax.adamw(optax.cosine_decay_schedule(LEARNING_RATE, steps), weight_decay=1e-4)


def train_classifier(seed: int = 0, steps: int = TRAIN_STEPS, data_dir=None) -> Dict:
  """Trains the classifier on the train split, reproducibly for a given seed. -> params.

  Batches (sampled without replacement within a batch) and the ±1 px shifts come from
  `np.random.default_rng(seed)`. A Python loop over a jitted step: XLA:CPU runs the convs several
  times slower inside a `lax.scan`.
  """
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f'seed must be a non-negative int, got {seed!r}')
  if steps < 1:
    raise ValueError(f'steps must be >= 1, got {steps}')
  images, labels = load_split('train', data_dir)
  images = to_float(images)
  rng = np.random.default_rng(seed)
  params = init_params(seed)
  opt_state = _init_opt_state(params, steps)
  for _ in range(steps):
    idx = rng.choice(len(images), BATCH_SIZE, replace=False)
    dy, dx = rng.integers(0, 3, (2, BATCH_SIZE))
    params, opt_state = _step(params, opt_state, shift_images(images[idx], dy, dx), labels[idx],
                              steps)
  return jax.tree.map(np.asarray, params)


def _param_shapes():
  return jax.eval_shape(_MODEL.init, jax.random.PRNGKey(0),
                        jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)))['params']


def init_params(seed: int) -> Dict:
  """LeCun-normal kernels, zero biases, drawn with NumPy: jitting the threefry draws of
  `_MODEL.init` takes seconds to compile on CPU, longer than the whole training run."""
  rng = np.random.default_rng(seed)
  shapes = _param_shapes()

  def draw(path, s):
    if path[-1].key == 'bias':
      return np.zeros(s.shape, np.float32)
    fan_in = int(np.prod(s.shape[:-1]))
    return (rng.standard_normal(s.shape) / np.sqrt(fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.partial(jax.jit, static_argnums=1)
def _init_opt_state(params, steps: int):
  return _optimizer(steps).init(params)


@functools.partial(jax.jit, static_argnums=4)
def _step(params, opt_state, x, y, steps: int):
  def loss_fn(p):
    logits, _ = _MODEL.apply({'params': p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  updates, opt_state = _optimizer(steps).update(jax.grad(loss_fn)(params), opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def default_cache_dir() -> pathlib.Path:
  """`$VIAR_JAX_CLASSIFIER_DIR` if set, else `~/.cache/viar_jax/digits_classifier`."""
  return pathlib.Path(os.environ.get(CACHE_ENV) or '~/.cache/viar_jax/digits_classifier').expanduser()


def cache_path(seed: int = 0, cache_dir=None) -> pathlib.Path:
  return pathlib.Path(cache_dir or default_cache_dir()) / f'{VERSION}_seed{seed}.npz'


def save_params(path, params) -> pathlib.Path:
  """Flattens params to '/'-joined keys in an .npz, written atomically (concurrent workers)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  flat = {'/'.join(k.key for k in keys): np.asarray(v)
          for keys, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  fd, tmp = tempfile.mkstemp(dir=path.parent, suffix='.npz.tmp')
  with os.fdopen(fd, 'wb') as f:
    np.savez(f, **flat)
  os.replace(tmp, path)
  return path


def load_params(path) -> Dict:
  params = {}
  with np.load(path) as z:
    for key in z.files:
      *parents, leaf = key.split('/')
      node = params
      for p in parents:
        node = node.setdefault(p, {})
      node[leaf] = z[key]
  expected = _param_shapes()
  if jax.tree.structure(expected) != jax.tree.structure(params) or any(
      e.shape != p.shape for e, p in zip(jax.tree.leaves(expected), jax.tree.leaves(params))):
    raise ValueError(f'{path} does not hold {VERSION} classifier params; delete it to retrain')
  return params


def load_classifier(seed: int = 0, cache_dir=None, data_dir=None) -> Dict:
  """Cached params for `seed`, training (and caching) them on first use."""
  path = cache_path(seed, cache_dir)
  if path.exists():
    return load_params(path)
  params = train_classifier(seed, data_dir=data_dir)
  save_params(path, params)
  return params


# --- inference and metrics ------------------------------------------------------------------------


@jax.jit
def _apply(params, x):
  return _MODEL.apply({'params': params}, x)


def classify(params, images) -> Tuple[np.ndarray, np.ndarray]:
  """uint8 (N, 8, 8, C) -> (logits (N, 10), features (N, 128)) as float numpy arrays."""
  images = check_images(images)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  logits, features = [], []
  for i in range(0, len(images), _CHUNK):
    chunk = images[i:i + _CHUNK]
    padded = np.pad(chunk, ((0, _CHUNK - len(chunk)), (0, 0), (0, 0), (0, 0)))
    out_logits, out_features = _apply(params, to_float(padded))
    logits.append(np.asarray(out_logits)[:len(chunk)])
    features.append(np.asarray(out_features)[:len(chunk)])
  return np.concatenate(logits), np.concatenate(features)


class DigitsEvaluator:
  """A classifier's params plus the test split's feature statistics (computed once, on demand)."""

  def __init__(self, params, data_dir=None, seed: Optional[int] = None):
    self.params = params
    self.data_dir = data_dir
    self.seed = seed  # the classifier's training seed, for reports

  def features(self, images) -> np.ndarray:
    """(N, 128) float64 penultimate features of uint8 (N, 8, 8, C) images."""
    return classify(self.params, images)[1].astype(np.float64)

  def predict(self, images) -> np.ndarray:
    return np.argmax(classify(self.params, images)[0], axis=-1).astype(np.int32)

  def class_accuracy(self, images, labels) -> float:
    """Fraction of images the classifier assigns to their requested class."""
    images = check_images(images)
    labels = check_labels(labels, len(images))
    return float(np.mean(self.predict(images) == labels))

  @functools.cached_property
  def test_stats(self) -> Tuple[np.ndarray, np.ndarray]:
    return metrics.feature_stats(self.features(load_split('test', self.data_dir)[0]))

  def fid(self, images) -> float:
    """digits-FID of the images against the test split."""
    mu, sigma = metrics.feature_stats(self.features(images))
    return float(metrics.frechet_distance(mu, sigma, *self.test_stats))

  def reference_fid(self) -> float:
    """digits-FID of the real train split against the test split: the floor a generator can reach."""
    return self.fid(load_split('train', self.data_dir)[0])


@functools.lru_cache(maxsize=None)
def _cached_evaluator(seed: int, cache_dir: Optional[str],
                      data_dir: Optional[str]) -> DigitsEvaluator:
  return DigitsEvaluator(load_classifier(seed, cache_dir, data_dir), data_dir, seed)


def get_evaluator(seed: int = 0, cache_dir=None, data_dir=None) -> DigitsEvaluator:
  """The (process-wide cached) evaluator with the cached classifier of `seed`."""
  as_key = lambda p: None if p is None else str(pathlib.Path(p).expanduser().absolute())
  return _cached_evaluator(int(seed), as_key(cache_dir), as_key(data_dir))


def class_accuracy(images, labels, evaluator: Optional[DigitsEvaluator] = None) -> float:
  return (evaluator or get_evaluator()).class_accuracy(images, labels)


def digits_fid(images, evaluator: Optional[DigitsEvaluator] = None) -> float:
  return (evaluator or get_evaluator()).fid(images)


def reference_fid(evaluator: Optional[DigitsEvaluator] = None) -> float:
  return (evaluator or get_evaluator()).reference_fid()
