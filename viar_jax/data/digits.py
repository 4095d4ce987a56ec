"""TFDS builder for the 8x8 handwritten digits embedded in scikit-learn (no download).

`sklearn.datasets.load_digits()` ships 1,797 grey 8x8 images with values 0..16 and labels 0..9.
They are stored as `array_record` with `Tensor` features so that preparing and reading need no
TensorFlow (encoding `tfds.features.Image` would).

Split rule (fixed, seeded, stratified; 1,500 train + 297 test):
  for class c = 0..9 in order, with ONE generator `rng = np.random.default_rng(0)`:
    idx_c  = np.flatnonzero(target == c)                  # sklearn order
    n_c    = round(len(idx_c) * 297 / 1797)               # 29 or 30 per class, sums to 297
    test  += rng.choice(idx_c, n_c, replace=False)
  test = sorted(test); train = the remaining indices in sklearn order.
Records are written in that (ascending sklearn index) order; shuffling is the loader's job.
"""
import os
import pathlib

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

NUM_CLASSES = 10
NUM_TOTAL = 1797
NUM_TEST = 297
NUM_TRAIN = NUM_TOTAL - NUM_TEST
DATA_DIR_ENV = 'VIAR_JAX_DATA_DIR'


def default_data_dir() -> pathlib.Path:
  """`$VIAR_JAX_DATA_DIR` if set, else `~/.cache/viar_jax/tfds`."""
  return pathlib.Path(os.environ.get(DATA_DIR_ENV) or '~/.cache/viar_jax/tfds').expanduser()


def to_uint8(images_0_16: np.ndarray) -> np.ndarray:
  """(N, 8, 8) values 0..16 -> (N, 8, 8, 1) uint8 0..255 via round(v * 255 / 16)."""
  return np.round(np.asarray(images_0_16, np.float64) * 255.0 / 16.0).astype(np.uint8)[..., None]


def split_indices(target: np.ndarray) -> dict[str, np.ndarray]:
  """The module docstring's split rule -> {'train': (1500,), 'test': (297,)} sorted int64 indices."""
  target = np.asarray(target)
  rng = np.random.default_rng(0)
  test = []
  for c in range(NUM_CLASSES):
    idx_c = np.flatnonzero(target == c)
    test.append(rng.choice(idx_c, int(round(len(idx_c) * NUM_TEST / len(target))), replace=False))
  test = np.sort(np.concatenate(test))
  # Rounding per class happens to sum to exactly 297 on this fixed data; fail loudly if it changes.
  if len(test) != NUM_TEST or len(target) != NUM_TOTAL:
    raise RuntimeError(f'digits split drifted: {len(target)} images, {len(test)} test')
  train = np.setdiff1d(np.arange(len(target)), test)
  return {'train': train, 'test': test}


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """8x8 sklearn digits as uint8 (8, 8, 1) `Tensor` images in array_record files."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: 1500 train / 297 test, stratified, seed 0.'}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # The base class probes `importlib_resources` (not installed here) to find this file.
    return epath.Path(__file__)

  def __init__(self, **kwargs):
    kwargs.setdefault('file_format', 'array_record')
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # Built directly (not via `dataset_info_from_configs`, which needs package metadata files).
    return tfds.core.DatasetInfo(
        builder=self,
        description='sklearn.datasets.load_digits: 8x8 handwritten digits, scaled 0..16 -> 0..255.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            # The sklearn index, so splits can be audited for overlap.
            'index': tfds.features.Tensor(shape=(), dtype=np.int32),
        }),
        supervised_keys=('image', 'label'),
        # Keep generation order (ascending sklearn index) instead of TFDS's hash shuffle.
        disable_shuffling=True,
        homepage='https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Embedded data: nothing to download.
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    digits = load_digits()
    images = to_uint8(digits.images)
    target = np.asarray(digits.target)
    return {name: self._generate_examples(images, target, idx)
            for name, idx in split_indices(target).items()}

  def _generate_examples(self, images, target, indices):
    for i in indices:
      yield int(i), {'image': images[i], 'label': int(target[i]), 'index': np.int32(i)}


def load_digits_source(split: str = 'train', data_dir=None):
  """Random-access source of one split, preparing it into `data_dir` on first use.

  Args:
    split: 'train' (1,500 records) or 'test' (297 records); TFDS slicing ('train[:10%]') works too.
    data_dir: TFDS data dir; default `default_data_dir()`.

  Returns:
    A `tfds` array_record data source: `len()`, and `[i]` -> {'image': (8, 8, 1) uint8,
    'label': int64 scalar, 'index': int32 scalar}.
  """
  data_dir = pathlib.Path(data_dir) if data_dir is not None else default_data_dir()
  builder = SklearnDigits(data_dir=str(data_dir))
  builder.download_and_prepare()
  return builder.as_data_source(split=split)
