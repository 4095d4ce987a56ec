"""The digits harness: classifier accuracy, caching, class accuracy and digits-FID sanity."""
import numpy as np
import pytest

from viar_jax.eval import digits_eval


def classifier_cache_dir(request, tmp_path_factory):
  """pytest's persistent cache dir when available: test_evaluate reuses the params trained here."""
  cache = getattr(request.config, 'cache', None)
  return cache.mkdir('viar_jax_digits_classifier') if cache else tmp_path_factory.mktemp('clf')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


@pytest.fixture(scope='module')
def trained(request, tmp_path_factory, data_dir):
  """Trains the classifier once for the module (seed 0) and stores it where load_classifier looks."""
  params = digits_eval.train_classifier(seed=0, data_dir=data_dir)
  cache_dir = classifier_cache_dir(request, tmp_path_factory)
  digits_eval.save_params(digits_eval.cache_path(0, cache_dir), params)
  return params, cache_dir


@pytest.fixture(scope='module')
def evaluator(trained, data_dir):
  return digits_eval.DigitsEvaluator(trained[0], data_dir, seed=0)


@pytest.fixture(scope='module')
def splits(data_dir):
  return {s: digits_eval.load_split(s, data_dir) for s in ('train', 'test')}


def test_splits_are_8x8_rgb_uint8(splits):
  images, labels = splits['test']
  assert images.shape == (297, 8, 8, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(images[..., 0], images[..., 2])  # grey repeated to RGB
  assert sorted(set(labels.tolist())) == list(range(10)) and len(splits['train'][0]) == 1500


def test_classifier_reaches_97_percent_and_round_trips_the_cache(trained, evaluator, splits,
                                                                 tmp_path):
  images, labels = splits['test']
  assert evaluator.class_accuracy(images, labels) >= 0.97
  # Loading from the cache gives the same params (no retraining: the file is already there).
  loaded = digits_eval.load_classifier(0, cache_dir=trained[1])
  np.testing.assert_array_equal(digits_eval.classify(loaded, images[:5])[0],
                                digits_eval.classify(trained[0], images[:5])[0])
  bad = digits_eval.save_params(tmp_path / 'bad.npz', {'Dense_0': {'kernel': np.zeros((2, 2))}})
  with pytest.raises(ValueError, match='delete it to retrain'):
    digits_eval.load_params(bad)


def test_class_accuracy_follows_the_labels(evaluator, splits):
  images, labels = splits['test']
  assert digits_eval.class_accuracy(images, labels, evaluator) >= 0.97
  shuffled = np.random.default_rng(0).permutation(labels)
  assert 0.03 <= digits_eval.class_accuracy(images, shuffled, evaluator) <= 0.2
  # One channel or three: the classifier looks at the luminance only.
  assert evaluator.class_accuracy(images[..., :1], labels) == evaluator.class_accuracy(images, labels)


def test_digits_fid_real_vs_real_and_vs_noise(evaluator, splits):
  test_images = splits['test'][0]
  assert abs(digits_eval.digits_fid(test_images, evaluator)) < 1e-6
  floor = digits_eval.reference_fid(evaluator)
  noise = np.random.default_rng(0).integers(0, 256, test_images.shape, dtype=np.uint8)
  noise_fid = evaluator.fid(noise)
  assert 0 < floor < 10 and noise_fid > 20 * floor
  # Only one class is far from the (balanced) test distribution too.
  train_images, train_labels = splits['train']
  assert evaluator.fid(train_images[train_labels == 3]) > 10 * floor


def test_inputs_are_checked(evaluator, splits):
  images, labels = splits['test']
  with pytest.raises(ValueError, match='uint8'):
    evaluator.fid(images.astype(np.float32) / 255)
  with pytest.raises(ValueError, match=r'\(N, 8, 8, 3\)'):
    evaluator.fid(np.zeros((4, 16, 16, 3), np.uint8))
  with pytest.raises(ValueError, match='outside the digit classes'):
    evaluator.class_accuracy(images[:2], [3, 10])
  with pytest.raises(ValueError, match='one per image'):
    evaluator.class_accuracy(images[:2], [3])
  with pytest.raises(ValueError, match='seed'):
    digits_eval.train_classifier(seed=-1)
