"""Inputs of image editing (in/out-painting): the source image and the keep-mask of token cells.

Source images: PNG / JPEG (any size: the reference's evaluation preprocessing, Lanczos resize of the
shorter side to round(1.125 R) and a centre R x R crop) or .npy / .npz arrays at the model's size.
Regions to regenerate: a box in relative units (`keep_mask`) or a mask image (`mask_from_image`).
"""
import os
from typing import Sequence, Tuple

import numpy as np
from PIL import Image

from viar_jax.data import transforms

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.webp', '.bmp')


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


def _read_picture(path: str, what: str) -> np.ndarray:
  """An image file -> (H, W, 3) uint8 RGB; a file PIL cannot read is a ValueError naming it."""
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert('RGB'))
  except (OSError, ValueError) as e:  # missing, truncated, not an image
    raise ValueError(f'cannot read the {what} {path}: {e}') from None


def load_image(path: str, size: int) -> Tuple[np.ndarray, Tuple[int, int]]:
  """The edit source -> ((size, size, 3) float32 in [-1, 1], its (H, W) before preprocessing).

  PNG / JPEG of any size go through the reference's evaluation preprocessing (resize the shorter
  side to round(1.125 size), centre crop); .npy / .npz (first array) must already be
  (size, size, 3), uint8 or float in [-1, 1].
  """
  if path.lower().endswith(IMAGE_SUFFIXES):
    picture = _read_picture(path, 'edit image')
    return (transforms.to_model_range(transforms.reference_eval_transform(picture, size)),
            picture.shape[:2])
  if not os.path.exists(path):
    raise ValueError(f'cannot read the edit image {path}: no such file')
  if path.endswith('.npz'):
    with np.load(path) as z:
      img = z[z.files[0]]
  else:
    img = np.load(path)
  img = img[0] if img.ndim == 4 else img
  if img.shape != (size, size, 3):
    raise ValueError(f'edit image must be ({size}, {size}, 3), got {img.shape} (or give a PNG / '
                     'JPEG of any size)')
  img = transforms.to_model_range(img) if img.dtype == np.uint8 else img.astype(np.float32)
  return img, img.shape[:2]


def mask_from_image(path: str, image_hw: Tuple[int, int], size: int, n: int) -> np.ndarray:
  """A mask image -> (n, n) keep-mask: white (>= 128 in grey) marks what to regenerate.

  The mask must have the edit image's (H, W); it gets the image's geometry (shorter side to
  round(1.125 size), centre crop; nearest-neighbour) and a token cell is regenerated when at least
  half of its pixels are white.
  """
  grey = _read_picture(path, 'edit mask').mean(axis=2)
  if grey.shape != tuple(image_hw):
    raise ValueError(f'edit mask {path} is {grey.shape[1]}x{grey.shape[0]} (W x H) but the edit '
                     f'image is {image_hw[1]}x{image_hw[0]}: they must match')
  white = np.where(grey >= 128, 255, 0).astype(np.uint8)[..., None]
  cropped = transforms.reference_eval_transform(white, size, resize_mode='nearest')[..., 0] > 127
  cells = cropped.reshape(n, size // n, n, size // n).mean(axis=(1, 3))
  if not (cells >= 0.5).any():
    raise ValueError(f'edit mask {path} marks no token cell to regenerate (white = regenerate)')
  return (cells < 0.5).astype(np.float32)
