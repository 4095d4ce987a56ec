"""Inception-v3, FID variant (pytorch-fid's `fid_inception_v3`), in Flax Linen, NHWC.

The network of the TF "inception-2015-12-05" graph that FID, sFID, IS and the ADM evaluator use,
as pytorch-fid ports it: torchvision's Inception3 without aux head, 1008 classes, BatchNorm eps 1e-3
(inference form), and the FID patches: the pool branches of Mixed_5b/5c/5d (A), Mixed_6b..6e (C) and
Mixed_7b (E_1) average 3x3 windows without counting padding, Mixed_7c (E_2) max-pools instead.

Usage:
  params = load_fid_inception('pt_inception-2015-12-05-6726825d.pth')  # or .npz / .safetensors
  embed = make_embedder(params, batch_size=100, progress=True)
  pool, spatial, logits = embed(images_uint8_NHWC)  # numpy (N, 2048), (N, 2023), (N, 1008)

Outputs (`InceptionOutputs`):
  pool     (N, 2048) global average pool after Mixed_7c (TF `pool_3`), the FID features.
  spatial  (N, 2023) first 7 channels of TF `mixed_6/conv`, flattened in NHWC (h, w, c) order as
           ADM does (`spatial[..., :7]`, reshape N x -1), the sFID features. TF names the 11 mixed
           blocks mixed, mixed_1, ..., mixed_10 = torchvision Mixed_5b, 5c, 5d, 6a, 6b, 6c, 6d,
           6e, 7a, 7b, 7c, so mixed_6 is Mixed_6d; inside a block `conv` is the 1x1 branch
           (`tower*` are the others), and the tensor `mixed_6/conv:0` is that unit's output after
           conv, batchnorm and ReLU (its sub-ops are `mixed_6/conv/Conv2D`, `.../batchnorm`):
           Mixed_6d.branch1x1, 17x17x192. Source: torch-fidelity's TF->PyTorch weight map
           ("mixed_6/conv/batchnorm" -> "Mixed_6d.branch1x1.bn"). That the `:0` tensor is
           post-ReLU follows the graph's naming convention; it is not checked against the graph.
  logits   (N, 1008) pool @ fc.weight.T *without* fc.bias: ADM (like improved-gan's IS code and
           torch-fidelity's `logits_unbiased`) takes only `softmax/logits/MatMul`'s weights.
           `logits_bias=True` adds the bias (pytorch-fid's fc).

Preprocessing (`preprocess`), two modes:
  'pytorch_fid'            x in [0, 1] (uint8 / 255), PyTorch bilinear resize to 299 with
                           align_corners=False (half-pixel centres, `viar_jax.models.resample`), 2x - 1.
  'tf1' (default)          what the ADM TF graph does to its [0, 255] input: TF1 ResizeBilinear
                           (align_corners=False *without* half-pixel centres:
                           source = out * in/out), then (x - 128) / 128. It matches ADM
                           reference statistics, hence the default. The modes differ slightly
                           when the input is not 299x299, and always by 127.5 vs 128.
Float images must be in [0, 1]; uint8 images are [0, 255].

Params are a plain nested dict named after the PyTorch modules (`Mixed_6d/branch1x1/conv/kernel`),
BatchNorm as frozen params `scale`, `bias`, `mean`, `var`. `convert_state_dict` is strict: unknown
keys, missing keys and shape mismatches raise `convert.CheckpointMismatchError`.
"""
import functools
import os
from typing import Any, Callable, Dict, Mapping, NamedTuple, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from viar_jax.io import convert
from viar_jax.models import factory, resample

FID_WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
                   'pt_inception-2015-12-05-6726825d.pth')
INPUT_SIZE = 299
NUM_CLASSES = 1008
SPATIAL_CHANNELS = 7
RESIZE_MODES = ('pytorch_fid', 'tf1')
_HIGHEST = jax.lax.Precision.HIGHEST  # metrics want full f32 (no TF32/bf16 passes on GPU)


class InceptionOutputs(NamedTuple):
  pool: Any  # (N, 2048)
  spatial: Any  # (N, 2023)
  logits: Any  # (N, 1008)


class FrozenBatchNorm(nn.Module):
  """Inference BatchNorm with its statistics as params (nothing here is ever trained)."""
  eps: float = 1e-3

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,))
    bias = self.param('bias', nn.initializers.zeros, (c,))
    mean = self.param('mean', nn.initializers.zeros, (c,))
    var = self.param('var', nn.initializers.ones, (c,))
    return (x - mean) * (scale * jax.lax.rsqrt(var + self.eps)) + bias


class ConvBN(nn.Module):
  """torchvision's BasicConv2d: conv (no bias) -> BatchNorm(eps 1e-3) -> ReLU."""
  features: int
  kernel_size: Tuple[int, int]
  strides: int = 1
  padding: Tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    pad = [(p, p) for p in self.padding]
    x = nn.Conv(self.features, self.kernel_size, (self.strides,) * 2, padding=pad, use_bias=False,
                precision=_HIGHEST, name='conv')(x)
    return nn.relu(FrozenBatchNorm(name='bn')(x))


def _avg_pool_3x3(x):
  # TF's SAME average pool divides by the number of real (unpadded) inputs: count_include_pad=False.
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), (2, 2), padding='VALID')


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = ConvBN(64, (1, 1), name='branch1x1')(x)
    b5 = ConvBN(48, (1, 1), name='branch5x5_1')(x)
    b5 = ConvBN(64, (5, 5), padding=(2, 2), name='branch5x5_2')(b5)
    b3 = ConvBN(64, (1, 1), name='branch3x3dbl_1')(x)
    b3 = ConvBN(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(b3)
    b3 = ConvBN(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(b3)
    bp = ConvBN(self.pool_features, (1, 1), name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):

  @nn.compact
  def __call__(self, x):
    b3 = ConvBN(384, (3, 3), strides=2, name='branch3x3')(x)
    bd = ConvBN(64, (1, 1), name='branch3x3dbl_1')(x)
    bd = ConvBN(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = ConvBN(96, (3, 3), strides=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """Returns (block output, branch1x1 output); the latter of Mixed_6d is TF's `mixed_6/conv`."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = ConvBN(192, (1, 1), name='branch1x1')(x)
    b7 = ConvBN(c7, (1, 1), name='branch7x7_1')(x)
    b7 = ConvBN(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = ConvBN(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = ConvBN(c7, (1, 1), name='branch7x7dbl_1')(x)
    bd = ConvBN(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = ConvBN(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = ConvBN(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = ConvBN(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = ConvBN(192, (1, 1), name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1), b1


class InceptionD(nn.Module):

  @nn.compact
  def __call__(self, x):
    b3 = ConvBN(192, (1, 1), name='branch3x3_1')(x)
    b3 = ConvBN(320, (3, 3), strides=2, name='branch3x3_2')(b3)
    b7 = ConvBN(192, (1, 1), name='branch7x7x3_1')(x)
    b7 = ConvBN(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = ConvBN(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = ConvBN(192, (3, 3), strides=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """E_1 (avg pool, count_include_pad=False) or E_2 (`max_pool`: the FID graph's 3x3/1 max pool)."""
  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    b1 = ConvBN(320, (1, 1), name='branch1x1')(x)
    b3 = ConvBN(384, (1, 1), name='branch3x3_1')(x)
    b3 = jnp.concatenate([ConvBN(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
                          ConvBN(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3)], axis=-1)
    bd = ConvBN(448, (1, 1), name='branch3x3dbl_1')(x)
    bd = ConvBN(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([ConvBN(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
                          ConvBN(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd)], axis=-1)
    if self.max_pool:
      pooled = nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3(x)
    bp = ConvBN(192, (1, 1), name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class Fc(nn.Module):
  """The 1008-way classifier; its bias is a param (for strict loading) but used only on request."""
  features: int
  use_bias: bool = False

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    y = jnp.dot(x, kernel, precision=_HIGHEST)
    return y + bias if self.use_bias else y


class FIDInceptionV3(nn.Module):
  """Preprocessed images (N, H, W, 3) in [-1, 1] (299x299 for the FID features) -> outputs."""
  logits_bias: bool = False

  @nn.compact
  def __call__(self, x) -> InceptionOutputs:
    x = ConvBN(32, (3, 3), strides=2, name='Conv2d_1a_3x3')(x)
    x = ConvBN(32, (3, 3), name='Conv2d_2a_3x3')(x)
    x = ConvBN(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)
    x = _max_pool_3x3_s2(x)
    x = ConvBN(80, (1, 1), name='Conv2d_3b_1x1')(x)
    x = ConvBN(192, (3, 3), name='Conv2d_4a_3x3')(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, name='Mixed_5b')(x)
    x = InceptionA(64, name='Mixed_5c')(x)
    x = InceptionA(64, name='Mixed_5d')(x)
    x = InceptionB(name='Mixed_6a')(x)
    x, _ = InceptionC(128, name='Mixed_6b')(x)
    x, _ = InceptionC(160, name='Mixed_6c')(x)
    x, mixed_6_conv = InceptionC(160, name='Mixed_6d')(x)
    x, _ = InceptionC(192, name='Mixed_6e')(x)
    x = InceptionD(name='Mixed_7a')(x)
    x = InceptionE(name='Mixed_7b')(x)
    x = InceptionE(max_pool=True, name='Mixed_7c')(x)
    pool = jnp.mean(x, axis=(1, 2))
    spatial = mixed_6_conv[..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)
    logits = Fc(NUM_CLASSES, self.logits_bias, name='fc')(pool)
    return InceptionOutputs(pool, spatial, logits)


# ---------------------------------------------------------------------------------- preprocessing


@functools.lru_cache(maxsize=None)
def tf1_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) float32 matrix of TF1 `ResizeBilinear` (align_corners=False, no half-pixel)."""
  if int(in_size) < 1 or int(out_size) < 1:
    raise ValueError(f'resize sizes must be positive, got in={in_size}, out={out_size}')
  m = np.zeros((out_size, in_size), np.float64)
  scale = in_size / out_size
  for o in range(out_size):
    s = o * scale
    i0 = min(int(np.floor(s)), in_size - 1)
    i1 = min(i0 + 1, in_size - 1)
    m[o, i0] += 1.0 - (s - i0)
    m[o, i1] += s - i0
  m = m.astype(np.float32)
  m.setflags(write=False)
  return m


def _resize(x_BHWC, m_h: np.ndarray, m_w: np.ndarray):
  return jnp.einsum('oh,bhwc,pw->bopc', jnp.asarray(m_h), x_BHWC, jnp.asarray(m_w),
                    precision=_HIGHEST)


def preprocess(images, resize_mode: str = 'tf1'):
  """uint8 [0, 255] or float [0, 1] images (N, H, W, 3) -> float32 (N, 299, 299, 3) in [-1, 1]."""
  if resize_mode not in RESIZE_MODES:
    raise ValueError(f'unknown resize_mode {resize_mode!r}; expected one of {RESIZE_MODES}')
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'images must be (N, H, W, 3), got shape {images.shape}')
  x = jnp.asarray(images)
  _, h, w, _ = x.shape
  if resize_mode == 'pytorch_fid':
    x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    x = resample.resize(x, INPUT_SIZE, 'bilinear')
    return 2.0 * x - 1.0
  x = x.astype(jnp.float32) if x.dtype == jnp.uint8 else x.astype(jnp.float32) * 255.0
  if (h, w) != (INPUT_SIZE, INPUT_SIZE):
    x = _resize(x, tf1_bilinear_matrix(h, INPUT_SIZE), tf1_bilinear_matrix(w, INPUT_SIZE))
  return (x - 128.0) / 128.0


# ------------------------------------------------------------------------------------ weights

_LEAF_TO_TORCH = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
                  'var': 'running_var'}


def abstract_params():
  """Param shapes of `FIDInceptionV3` (jax.ShapeDtypeStruct leaves), without computing anything."""
  x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return factory.abstract_module_params(FIDInceptionV3(), x)


@functools.lru_cache(maxsize=1)
def _key_table() -> Dict[str, Tuple[Tuple[str, ...], Tuple[int, ...]]]:
  """PyTorch key -> (Flax param path, PyTorch shape)."""
  flat = traverse_util.flatten_dict(abstract_params())
  return {'.'.join(path[:-1] + (_LEAF_TO_TORCH[path[-1]],)):
          (path, convert.reference_shape(path[-1], leaf.shape)) for path, leaf in flat.items()}


def state_dict_spec() -> Dict[str, Tuple[int, ...]]:
  """Every key of pytorch-fid's FID Inception state dict and its PyTorch shape.

  `num_batches_tracked` buffers are not listed: conversion accepts and ignores them.
  """
  return {key: shape for key, (_, shape) in _key_table().items()}


def convert_state_dict(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
  """pytorch-fid state dict (key -> array-like) -> Flax params (nested dict of float32 numpy).

  Raises `convert.CheckpointMismatchError` listing every unknown key, missing key and bad shape.
  """
  table = _key_table()
  out, unknown, mismatched = {}, [], []
  for key, value in state_dict.items():
    parent = key.rsplit('.', 1)[0]
    if key.endswith('.num_batches_tracked') and f'{parent}.running_mean' in table:
      continue  # a BatchNorm training counter
    if key not in table:
      unknown.append(key)
      continue
    path, want = table[key]
    x = np.asarray(value)
    if tuple(x.shape) != want:
      mismatched.append(f'{key}: checkpoint {tuple(x.shape)} vs model {want}')
      continue
    out[path] = np.asarray(convert.from_reference_layout(path[-1], x), np.float32)
  missing = [k for k in table if k not in state_dict]
  problems = ([f'unknown key {k}' for k in sorted(unknown)] +
              [f'missing key {k}' for k in sorted(missing)] +
              [f'shape mismatch {m}' for m in mismatched])
  if problems:
    raise convert.CheckpointMismatchError(
        f'{len(problems)} problem(s) converting the FID Inception state dict:\n  ' +
        '\n  '.join(problems))
  return traverse_util.unflatten_dict(out)


def load_fid_inception(path: str) -> Dict[str, Any]:
  """Flax params from pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`.

  Also reads the same state dict as .npz or .safetensors (`convert.load_reference_state_dict`).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'FID Inception weights not found at {path!r}. Nothing is downloaded automatically: get '
        f'pytorch-fid\'s port of the TF 2015-12-05 Inception from {FID_WEIGHTS_URL} and pass its '
        f'path.')
  return convert_state_dict(convert.load_reference_state_dict(path))


# ---------------------------------------------------------------------------------- embedding


def make_embedder(params, batch_size: int = 100, resize_mode: str = 'tf1',
                  logits_bias: bool = False, progress: bool = False) -> Callable:
  """Returns `embed(images) -> (pool, spatial, logits)` numpy float32, in batches of `batch_size`.

  `images`: array-like (N, H, W, 3), uint8 [0, 255] or float [0, 1] (np.memmap works: batches are
  sliced lazily). The last batch is padded, so the network compiles once per batch size and the
  (cheap) preprocessing once per input shape.
  """
  if int(batch_size) < 1:
    raise ValueError(f'batch_size must be positive, got {batch_size}')
  if resize_mode not in RESIZE_MODES:
    raise ValueError(f'unknown resize_mode {resize_mode!r}; expected one of {RESIZE_MODES}')
  model = FIDInceptionV3(logits_bias=logits_bias)
  params = jax.device_put(params)
  net = jax.jit(lambda p, x: model.apply({'params': p}, x))
  prep = jax.jit(functools.partial(preprocess, resize_mode=resize_mode))

  def embed(images) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    shape = tuple(getattr(images, 'shape', ()))
    if len(shape) != 4 or shape[-1] != 3:
      raise ValueError(f'images must be (N, H, W, 3), got shape {shape}')
    dtype = np.dtype(images.dtype)
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
      raise ValueError(f'images must be uint8 [0, 255] or float [0, 1], got dtype {dtype}')
    n = shape[0]
    outs = ([], [], [])
    starts = range(0, n, batch_size)
    if progress:
      from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
      starts = tqdm(starts, desc='inception', unit='batch')
    def collect(result, m):
      for acc, y in zip(outs, result):
        acc.append(np.asarray(y[:m], np.float32))

    pending = None
    for start in starts:
      chunk = np.asarray(images[start:start + batch_size])
      if dtype != np.uint8 and (np.any(~np.isfinite(chunk)) or chunk.min() < 0 or chunk.max() > 1):
        raise ValueError('float images must be finite and in [0, 1] (pass uint8 for [0, 255])')
      m = chunk.shape[0]
      if m < batch_size:
        chunk = np.concatenate([chunk, np.zeros((batch_size - m,) + chunk.shape[1:], chunk.dtype)])
      result = net(params, prep(chunk))
      if pending is not None:  # fetch the previous batch only now: the device stays busy
        collect(*pending)
      pending = (result, m)
    if pending is not None:
      collect(*pending)
    dims = (2048, (17 * 17 * SPATIAL_CHANNELS), NUM_CLASSES)
    return tuple(np.concatenate(acc) if acc else np.zeros((0, d), np.float32)
                 for acc, d in zip(outs, dims))

  return embed
