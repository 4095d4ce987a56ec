"""PNG writing (Pillow) and image grids (uint8 RGB)."""

from etils import epath
import numpy as np
from PIL import Image


def to_uint8(img, value_range=(-1.0, 1.0)) -> np.ndarray:
  """Float image(s) in `value_range` -> uint8 (rounded, clipped)."""
  lo, hi = value_range
  x = (np.asarray(img, np.float32) - lo) / (hi - lo)
  return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def grid(images_NHWC: np.ndarray, cols: int, pad: int = 2, zoom: int = 1) -> np.ndarray:
  """(N, H, W, 3) uint8 -> one mosaic, row-major, each image enlarged `zoom` x (nearest)."""
  if zoom > 1:
    images_NHWC = np.repeat(np.repeat(images_NHWC, zoom, axis=1), zoom, axis=2)
  n, h, w, c = images_NHWC.shape
  rows = -(-n // cols)
  out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
  for i, im in enumerate(images_NHWC):
    r, q = divmod(i, cols)
    out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = im
  return out


def write_png(path, img_HWC: np.ndarray) -> epath.Path:
  """Writes an (H, W, 3) or (H, W) uint8 array as a PNG; creates parent directories."""
  img = np.asarray(img_HWC)
  if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
    raise ValueError(f'write_png expects uint8 (H, W, 3) or (H, W), got {img.dtype} {img.shape}')
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  # 'RGB' / 'L' are 8-bit truecolor / grayscale PNGs; zlib level 6 as before.
  with path.open('wb') as f:  # also a bucket URL
    Image.fromarray(np.ascontiguousarray(img)).save(f, format='PNG', compress_level=6)
  return path
