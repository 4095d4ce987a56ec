"""Opening a random-access source by dataset name, with errors that name what is missing.

  'digits' / 'sklearn_digits'  the embedded sklearn digits (prepared on first use into data_dir)
  'folder'                     data_dir/<split>/<class>/<images> if that folder exists, else
                               data_dir/<class>/<images> (one folder, the same for every split)
  any other name               an array_record TFDS dataset already prepared under data_dir
                               (e.g. 'imagenet2012' prepared by the user); nothing is downloaded
"""
import pathlib

from viar_jax.data import digits
from viar_jax.data import folder

DIGITS_NAMES = ('digits', digits.SklearnDigits.name)


def open_tfds_source(name: str, split: str, data_dir):
  """`tfds.data_source(name, split=split, data_dir=data_dir)` for a dataset already prepared there.

  Raises:
    FileNotFoundError: `data_dir` does not exist.
    ValueError: no prepared `name` under `data_dir`, or the split is unknown.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if data_dir is None:
    raise ValueError(f'dataset {name!r}: a data_dir holding the prepared TFDS dataset is required')
  data_dir = pathlib.Path(data_dir).expanduser()
  if not data_dir.is_dir():
    raise FileNotFoundError(f'dataset {name!r}: data_dir {str(data_dir)!r} does not exist')
  base = name.split(':')[0].split('/')[0]  # 'imagenet2012:5.1.0' / 'name/config:version'
  if not (data_dir / base).is_dir():
    found = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and p.name != 'downloads')
    raise ValueError(f'unknown dataset {name!r}: no prepared TFDS dataset {base!r} in data_dir '
                     f'{str(data_dir)!r} (found: {found}); prepare it there first (array_record '
                     'format), nothing is downloaded at run time')
  try:
    return tfds.data_source(name, split=split, data_dir=str(data_dir), download=False)
  except Exception as e:  # TFDS raises assorted types (AssertionError, KeyError, ...).
    raise ValueError(f'dataset {name!r} split {split!r} in data_dir {str(data_dir)!r} could not '
                     f'be opened: {type(e).__name__}: {e}') from e


def open_source(dataset: str, split: str = 'train', data_dir=None):
  """Random-access source for `dataset` (see the module docstring): len() and [i] -> dict."""
  if dataset in DIGITS_NAMES:
    return digits.load_digits_source(split, data_dir)
  if dataset == 'folder':
    if data_dir is None:
      raise ValueError("dataset 'folder': data_dir (the folder of class subfolders) is required")
    root = pathlib.Path(data_dir).expanduser()
    return folder.FolderSource(root / split if (root / split).is_dir() else root)
  return open_tfds_source(dataset, split, data_dir)
