"""Random-access source over a folder of class subfolders: root/<class_name>/<image file>.

Class ids are the positions of the subfolder names in sorted order. Only files directly inside a
class folder with an image extension (case-insensitive) count; hidden files and folders are ignored.
A file that PIL cannot decode (corrupt, truncated, empty) yields an `Unreadable` marker (warned once
per file) instead of raising, so the pipeline can drop it and keep going. A class folder without
image files keeps its class id (ids must not shift) and is reported as a warning and in
`empty_classes`; a folder with no image file at all is an error.
"""
import pathlib
import threading

from absl import logging
import numpy as np
from PIL import Image

from viar_jax.data.skips import Unreadable

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp')


def _is_visible(path: pathlib.Path) -> bool:
  return not path.name.startswith('.')


class FolderSource:
  """root/<class>/*.{png,jpg,jpeg,webp,bmp} as a grain-compatible random-access source.

  Attributes:
    root: the dataset folder.
    class_names: sorted class folder names; label i is class_names[i].
    paths: (N,) file paths, ordered by (class name, file name).
    labels: (N,) int32 class ids.
    empty_classes: names of class folders without image files (no examples of those ids).

  `source[i]` -> {'image': (H, W, 3) uint8 RGB, 'label': int} or `Unreadable(path, error)`.
  """

  def __init__(self, root, extensions=IMAGE_EXTENSIONS):
    self.root = pathlib.Path(root).expanduser()
    if not self.root.is_dir():
      raise FileNotFoundError(f'image folder dataset: directory {str(self.root)!r} does not exist')
    exts = tuple(e.lower() for e in extensions)
    self.class_names = sorted(d.name for d in self.root.iterdir() if d.is_dir() and _is_visible(d))
    if not self.class_names:
      raise ValueError(f'image folder dataset {str(self.root)!r}: no class subfolders '
                       '(expected root/<class_name>/<image files>)')
    paths, labels = [], []
    for label, name in enumerate(self.class_names):
      for f in sorted((self.root / name).iterdir()):
        if f.is_file() and _is_visible(f) and f.suffix.lower() in exts:
          paths.append(str(f))
          labels.append(label)
    if not paths:
      raise ValueError(f'image folder dataset {str(self.root)!r}: no files with extensions {exts} '
                       f'in its class folders {self.class_names}')
    counts = np.bincount(labels, minlength=len(self.class_names))
    self.empty_classes = [n for n, k in zip(self.class_names, counts) if k == 0]
    if self.empty_classes:
      logging.warning('image folder dataset %r: %d class folder(s) hold no image files and give no '
                      'examples (their class ids are kept): %s', str(self.root),
                      len(self.empty_classes), ', '.join(self.empty_classes))
    self.paths = paths
    self.labels = np.asarray(labels, np.int32)
    self._warned: set[str] = set()
    self._lock = threading.Lock()  # Grain reads records from several threads.

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index):
    path = self.paths[index]
    try:
      with Image.open(path) as im:
        image = np.asarray(im.convert('RGB'))
    except Exception as e:  # pylint: disable=broad-exception-caught
      # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ... on bad files.
      error = f'{type(e).__name__}: {e}'
      with self._lock:
        first = path not in self._warned
        self._warned.add(path)
      if first:
        logging.warning('Skipping unreadable image %s (%s)', path, error)
      return Unreadable(path, error)
    return {'image': image, 'label': int(self.labels[index])}

  def __getstate__(self):
    state = self.__dict__.copy()
    del state['_lock']  # Locks do not pickle (grain sends the source to worker processes).
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __repr__(self) -> str:
    # Grain compares repr(source) when restoring an iterator state, so keep it stable.
    return (f'FolderSource(root={str(self.root)!r}, num_records={len(self)}, '
            f'num_classes={len(self.class_names)})')
