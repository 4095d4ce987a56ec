"""LPIPS perceptual distance (Zhang et al. 2018) with the VGG16 trunk, Flax Linen, NHWC in [-1, 1].

The `lpips` package's `LPIPS(net='vgg', version='0.1')`, as taming-transformers' VQGAN loss uses it:
ScalingLayer -> torchvision VGG16 `features` tapped at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 ->
per-position unit-normalised channels -> squared difference -> 1x1 conv to one channel (`NetLinLayer`,
no bias; its dropout is off at inference) -> spatial mean -> summed over the five taps.

Weights are never downloaded; the user supplies two files (.pth, .npz or .safetensors):
  * torchvision's ImageNet VGG16 `vgg16-397923af.pth` (keys `features.N.{weight,bias}`; the
    `classifier.*` keys are ignored), and
  * the LPIPS linear layers `vgg.pth` (lpips package `lpips/weights/v0.1/vgg.pth`; taming's
    `vgg_lpips` download has the same `lin{0..4}.model.1.weight` layout).
A state dict of the whole LPIPS module (`net.sliceK.N.*`, `scaling_layer.*`, `lin*`) is accepted too.

    params = load_params('vgg16-397923af.pth', 'vgg.pth')        # strict: raises on any mismatch
    d_N = lpips_distance(params, x_NHWC, y_NHWC)                   # (N,), differentiable in x, y

Images need a side of at least MIN_IMAGE_SIZE (16) px: after VGG16's four 2x2 max-pools the relu5_3
map of a smaller image is empty.
"""
import os
import re
from typing import Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from viar_jax.models import factory
from viar_jax.io import convert

# ScalingLayer: ImageNet mean/std expressed for inputs in [-1, 1].
SHIFT = (-.030, -.088, -.188)
SCALE = (.458, .448, .450)
# torchvision VGG16 `features`: each slice's (feature index, out channels) of its 3x3 convs (each
# followed by ReLU); a 2x2 max-pool starts every slice but the first. Slice k ends at the LPIPS tap k.
VGG16_SLICES = (((0, 64), (2, 64)),
                ((5, 128), (7, 128)),
                ((10, 256), (12, 256), (14, 256)),
                ((17, 512), (19, 512), (21, 512)),
                ((24, 512), (26, 512), (28, 512)))
TAP_CHANNELS = tuple(s[-1][1] for s in VGG16_SLICES)  # 64, 128, 256, 512, 512
MIN_IMAGE_SIZE = 2 ** (len(VGG16_SLICES) - 1)  # 16: four max-pools must leave >= 1 px
EPS = 1e-10

VGG_SOURCE = ("torchvision's ImageNet VGG16 weights vgg16-397923af.pth "
              '(https://download.pytorch.org/models/vgg16-397923af.pth)')
LIN_SOURCE = ('the LPIPS linear layers vgg.pth (lpips/weights/v0.1/vgg.pth of the lpips package, '
              'github.com/richzhang/PerceptualSimilarity; taming-transformers\' vgg_lpips is the same)')


def check_image_size(height: int, width: int):
  """ValueError if VGG16's deepest LPIPS tap (1/16 of the side) would be empty."""
  if min(height, width) < MIN_IMAGE_SIZE:
    raise ValueError(f'LPIPS needs images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} px, got '
                     f'{height}x{width}: the VGG16 relu5_3 map (side // 16) would be empty')


def _normalize_channels(f):
  """x / (‖x‖_channels + eps), the reference's `normalize_tensor`.

  The norm goes through a `where` so its gradient stays finite where all channels are zero (a
  position every ReLU switched off): sqrt's derivative at 0 is inf and would turn into NaN.
  """
  sq = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
  positive = sq > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
  return f / (norm + EPS)


class NetLinLayer(nn.Module):
  """A 1x1 conv to one channel without bias; `model_1` mirrors the reference's `model.1` (after the
  dropout at `model.0`, which does nothing at inference)."""

  @nn.compact
  def __call__(self, x):
    return nn.Conv(1, (1, 1), use_bias=False, name='model_1')(x)


class LPIPS(nn.Module):
  """(x, y) NHWC in [-1, 1] -> (N,) LPIPS distances. Param names mirror the reference keys."""

  @nn.compact
  def __call__(self, x_NHWC, y_NHWC):
    if x_NHWC.ndim != 4 or x_NHWC.shape != y_NHWC.shape or x_NHWC.shape[-1] != 3:
      raise ValueError(f'LPIPS expects two NHWC RGB image batches of one shape, got '
                       f'{tuple(x_NHWC.shape)} and {tuple(y_NHWC.shape)}')
    check_image_size(*x_NHWC.shape[1:3])
    n = x_NHWC.shape[0]
    # Both batches through the trunk in one pass: one set of (larger) convs instead of two.
    h = jnp.concatenate([x_NHWC, y_NHWC]).astype(jnp.float32)
    h = (h - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)
    dist = jnp.zeros((n,), jnp.float32)
    for k, convs in enumerate(VGG16_SLICES):
      if k:
        h = nn.max_pool(h, (2, 2), strides=(2, 2))  # floor, as torch's MaxPool2d(2, 2)
      for index, features in convs:
        h = nn.relu(nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)),
                            name=f'features_{index}')(h))
      diff = jnp.square(_normalize_channels(h[:n]) - _normalize_channels(h[n:]))
      dist = dist + jnp.mean(NetLinLayer(name=f'lin{k}')(diff), axis=(1, 2, 3))
    return dist


def lpips_distance(params, x_NHWC, y_NHWC) -> jax.Array:
  """LPIPS distance per image pair, (N,); a pure function of (params, images)."""
  return LPIPS().apply({'params': params}, x_NHWC, y_NHWC)


def abstract_params():
  """Param shapes (ShapeDtypeStructs) of `LPIPS`, without allocating anything."""
  x = jax.ShapeDtypeStruct((1, MIN_IMAGE_SIZE, MIN_IMAGE_SIZE, 3), jnp.float32)
  return factory.abstract_module_params(LPIPS(), x, x)


def key_spec() -> Dict[str, Tuple[int, ...]]:
  """Every key the weight files must hold together, with its PyTorch shape.

  `features.N.weight` (O, I, 3, 3) and `features.N.bias` (O,) for the 13 VGG16 convs, and
  `linK.model.1.weight` (1, C, 1, 1) for the 5 linear layers.
  """
  return convert.reference_key_spec(abstract_params())


def _canonical_key(key: str) -> str:
  """The `lpips`/torchvision key for a key of a whole-LPIPS-module state dict, else the key itself."""
  m = re.fullmatch(r'net\.slice\d+\.(\d+\.(?:weight|bias))', key)
  return f'features.{m.group(1)}' if m else key


def convert_state_dict(state_dict: Mapping[str, np.ndarray]):
  """LPIPS + VGG16 state dict -> Flax params of `LPIPS`; strict.

  Raises `convert.CheckpointMismatchError` naming every unknown, missing or mis-shaped key (VGG16's
  `classifier.*` is ignored; `scaling_layer.*` buffers must hold the fixed constants).
  """
  sd, problems = {}, []
  for key, value in state_dict.items():
    if key.startswith('classifier.'):
      continue  # VGG16's fully connected head: LPIPS stops at relu5_3
    if key in ('scaling_layer.shift', 'scaling_layer.scale'):
      want = SHIFT if key.endswith('shift') else SCALE
      if not np.allclose(np.ravel(np.asarray(value, np.float64)), want, atol=1e-6):
        problems.append(f'{key}: {np.ravel(value)} differs from the fixed constants {want}')
      continue
    canonical = _canonical_key(key)
    if canonical in sd:
      problems.append(f'duplicate key {canonical} (given as {key} too)')
    sd[canonical] = value
  if problems:
    raise convert.CheckpointMismatchError(f'{len(problems)} problem(s) converting the LPIPS '
                                          f'weights:\n  ' + '\n  '.join(problems))
  return convert.convert_state_dict(sd, abstract_params())


def _load(path: str, what: str, source: str) -> Dict[str, np.ndarray]:
  if not os.path.exists(path):
    raise FileNotFoundError(f'LPIPS {what} file not found: {path}. Supply {source}.')
  return convert.load_reference_state_dict(path)


def load_params(vgg_path: Optional[str], lin_path: str):
  """Loads and strictly converts user-supplied LPIPS weights (nothing is downloaded).

  Args:
    vgg_path: torchvision's `vgg16-397923af.pth` (or its .npz / .safetensors export). May be empty
      only when `lin_path` is a whole-LPIPS-module state dict that holds the VGG16 trunk too.
    lin_path: the LPIPS linear layers `vgg.pth` (lpips package v0.1, or taming's `vgg_lpips`).
  Returns:
    Params of `LPIPS` (a plain nested dict of float32 arrays) for `lpips_distance`.
  Raises:
    ValueError: no linear-layer file, or no VGG16 weights in any file.
    FileNotFoundError: a given path does not exist (the message says where the file comes from).
    convert.CheckpointMismatchError: a missing, unknown, duplicated or mis-shaped key.
  """
  if not lin_path:
    raise ValueError(f'no LPIPS linear-layer file given: supply {LIN_SOURCE}')
  sd = _load(lin_path, 'linear-layer', LIN_SOURCE)
  if vgg_path:
    lin_keys = {_canonical_key(k) for k in sd}
    for key, value in _load(vgg_path, 'VGG16', VGG_SOURCE).items():
      if _canonical_key(key) in lin_keys:
        raise convert.CheckpointMismatchError(
            f'{key} is in both {vgg_path} and {lin_path}: give the VGG16 trunk in one file only')
      sd[key] = value
  elif not any(_canonical_key(k).startswith('features.') for k in sd):
    raise ValueError(f'{lin_path} holds no VGG16 trunk weights: also supply {VGG_SOURCE}')
  return convert_state_dict(sd)
