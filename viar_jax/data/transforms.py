"""The VAR reference image augmentation, in NumPy + PIL.

VAR (`utils/data.py`) trains with
  Resize(round(1.125 * R), LANCZOS) -> RandomCrop(R) -> [RandomHorizontalFlip] -> [0, 1] -> [-1, 1]
and evaluates with Resize -> CenterCrop(R). The host side here stops before the last step: it yields
uint8 pixels (4x fewer bytes to move to the device), and `to_model_range` maps them to [-1, 1] on the
device, inside the jitted step (x / 127.5 - 1, the same float32 values as the reference's). The same rule is applied at every size, including
upscaling tiny images (8x8 digits -> R = 16 resizes to 18x18 first).
"""
import io

import numpy as np
from PIL import Image

MID_RESO_RATIO = 1.125
_RESAMPLE = {'lanczos': Image.Resampling.LANCZOS, 'nearest': Image.Resampling.NEAREST}


def as_uint8_hwc(image) -> np.ndarray:
  """(H, W), (H, W, 1), (H, W, 3) uint8 or encoded image bytes -> (H, W, C) uint8, C in {1, 3}."""
  if isinstance(image, (bytes, np.bytes_)):
    # E.g. a TFDS source read with `decoders={'image': tfds.decode.SkipDecoding()}`.
    with Image.open(io.BytesIO(bytes(image))) as im:
      return np.asarray(im.convert('RGB'))
  img = np.asarray(image)
  if img.dtype != np.uint8:
    raise ValueError(f'expected a uint8 image, got {img.dtype} {img.shape}')
  if img.ndim == 2:
    img = img[..., None]
  if img.ndim != 3 or img.shape[2] not in (1, 3):
    raise ValueError(f'expected an (H, W), (H, W, 1) or (H, W, 3) image, got shape {img.shape}')
  return img


def resize_shorter_side(img_HWC: np.ndarray, size: int, resize_mode: str = 'lanczos') -> np.ndarray:
  """(H, W, C) uint8 -> (H', W', C) uint8 with min(H', W') = size.

  Like torchvision `Resize(int)`: the longer side becomes int(size * long / short) (truncated) and an
  image whose shorter side already equals `size` is returned unchanged.
  """
  if resize_mode not in _RESAMPLE:
    raise ValueError(f'resize_mode must be one of {sorted(_RESAMPLE)}, got {resize_mode!r}')
  h, w, c = img_HWC.shape
  if min(h, w) == size:
    return img_HWC
  if h <= w:
    new_h, new_w = size, int(size * w / h)
  else:
    new_h, new_w = int(size * h / w), size
  # PIL resizes 'L' and 'RGB' uint8 directly; a (H, W, 1) image goes through 'L'.
  pil = Image.fromarray(img_HWC[..., 0] if c == 1 else img_HWC)
  out = np.asarray(pil.resize((new_w, new_h), _RESAMPLE[resize_mode]))
  return out[..., None] if c == 1 else out


def _to_rgb(img_HWC: np.ndarray) -> np.ndarray:
  """(R, R, 1 or 3) uint8 -> (R, R, 3) uint8 (grey repeated)."""
  return np.repeat(img_HWC, 3, axis=2) if img_HWC.shape[2] == 1 else np.ascontiguousarray(img_HWC)


def to_model_range(images):
  """uint8 pixels (NumPy or jax) -> float32 in [-1, 1] (x / 127.5 - 1), as the models take them;
  float images pass through unchanged (already in range)."""
  if images.dtype != np.uint8:
    return images
  return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def _mid_size(image_size: int) -> int:
  return int(round(MID_RESO_RATIO * image_size))


def reference_train_transform(img_uint8_HWC, image_size: int, rng: np.random.Generator,
                              hflip: bool = False, resize_mode: str = 'lanczos') -> np.ndarray:
  """Resize shorter side to round(1.125 R), random R x R crop, optional flip.

  Args:
    img_uint8_HWC: (H, W), (H, W, 1) or (H, W, 3) uint8 (grey is repeated to RGB), or encoded bytes.
    image_size: R.
    rng: draws the crop offsets (and the flip coin when `hflip`).
    hflip: random horizontal flip with probability 1/2.
    resize_mode: 'lanczos' (reference) or 'nearest'.

  Returns:
    (R, R, 3) uint8 (`to_model_range` makes it the model's float32 in [-1, 1]).
  """
  img = resize_shorter_side(as_uint8_hwc(img_uint8_HWC), _mid_size(image_size), resize_mode)
  h, w = img.shape[:2]
  top = int(rng.integers(0, h - image_size + 1))
  left = int(rng.integers(0, w - image_size + 1))
  img = img[top:top + image_size, left:left + image_size]
  if hflip and rng.random() < 0.5:
    img = img[:, ::-1]
  return _to_rgb(img)


def exact_train_transform(img_uint8_HWC, image_size: int, rng: np.random.Generator,
                          hflip: bool = False) -> np.ndarray:
  """The image as it is (no resampling), optional flip: for datasets stored at the model's
  resolution, where the reference's resize to 1.125 R and crop back would resample every pixel
  (on the 8x8 digits a model would never see a real digit). -> (R, R, 3) uint8."""
  img = as_uint8_hwc(img_uint8_HWC)
  if img.shape[:2] != (image_size, image_size):
    raise ValueError(f'config.data.augment=False trains on images exactly {image_size}x{image_size}'
                     f', got {img.shape[0]}x{img.shape[1]}; use augment=True (resize and crop)')
  if hflip and rng.random() < 0.5:
    img = img[:, ::-1]
  return _to_rgb(img)


def reference_eval_transform(img_uint8_HWC, image_size: int,
                             resize_mode: str = 'lanczos') -> np.ndarray:
  """Resize shorter side to round(1.125 R), centre R x R crop -> (R, R, 3) uint8.

  The crop offset is int(round((H - R) / 2)) per axis, as in torchvision `CenterCrop`.
  """
  img = resize_shorter_side(as_uint8_hwc(img_uint8_HWC), _mid_size(image_size), resize_mode)
  h, w = img.shape[:2]
  top = int(round((h - image_size) / 2.0))
  left = int(round((w - image_size) / 2.0))
  return _to_rgb(img[top:top + image_size, left:left + image_size])
