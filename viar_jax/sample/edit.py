"""Inputs of image editing (in/out-painting): the source image and the keep-mask of token cells."""
from typing import Sequence

import numpy as np


def keep_mask(box: Sequence[float], mode: str, n: int) -> np.ndarray:
  """(n, n) float keep-mask at the finest token grid: 0 = regenerate. Box rounded to token cells.

  box: y0, y1, x0, x1 in relative units [0, 1]; mode: 'inpaint' regenerates inside the box,
  'outpaint' everything but the box.
  """
  if mode not in ('inpaint', 'outpaint'):
    raise ValueError(f"edit mode must be 'inpaint' or 'outpaint', got {mode!r}")
  if len(box) != 4:
    raise ValueError(f'--edit_box needs 4 values y0,y1,x0,x1, got {list(box)}')
  y0, y1, x0, x1 = (int(round(float(v) * n)) for v in box)
  if not (0 <= y0 < y1 <= n and 0 <= x0 < x1 <= n):
    raise ValueError(f'--edit_box {box} is empty or outside [0, 1] after rounding to {n} cells')
  inside = np.zeros((n, n), np.float32)
  inside[y0:y1, x0:x1] = 1
  return 1 - inside if mode == 'inpaint' else inside


def load_image(path: str, size: int) -> np.ndarray:
  """An .npy / .npz (first array) image, uint8 or float in [-1, 1] -> (size, size, 3) float32 [-1, 1]."""
  if path.endswith('.npz'):
    with np.load(path) as z:
      img = z[z.files[0]]
  else:
    img = np.load(path)
  img = img[0] if img.ndim == 4 else img
  if img.shape != (size, size, 3):
    raise ValueError(f'edit image must be ({size}, {size}, 3), got {img.shape}')
  return img.astype(np.float32) / 127.5 - 1 if img.dtype == np.uint8 else img.astype(np.float32)
