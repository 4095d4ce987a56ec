"""PyTorch-exact resampling as explicit separable matrices.

`jax.image.resize` uses a different cubic kernel (A = -0.5) and different edge handling, and has no
`area` mode, so it cannot reproduce `torch.nn.functional.interpolate`. Here every operator is a fixed
(out, in) matrix M, built in float64 and cast to float32, applied to a 2-D map X as Y = M X Mᵀ
(`resize`). Matrices are cached per (mode, in, out).

Modes, with PyTorch's semantics (`F.interpolate`, align_corners=False, no antialias):
  area      adaptive average pooling: output o averages inputs [floor(o*in/out), ceil((o+1)*in/out)).
  bicubic   Keys cubic with A = -0.75, source s = (o + 0.5) * in/out - 0.5 (not clamped), taps
            floor(s)-1 .. floor(s)+2 clamped to [0, in-1].
  bilinear  source s = max((o + 0.5) * in/out - 0.5, 0), taps floor(s), min(floor(s)+1, in-1).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

MODES = ('area', 'bicubic', 'bilinear')
_CUBIC_A = -0.75


def _check_sizes(in_size: int, out_size: int):
  if int(in_size) < 1 or int(out_size) < 1:
    raise ValueError(f'resize sizes must be positive, got in={in_size}, out={out_size}')


def _area(in_size: int, out_size: int) -> np.ndarray:
  m = np.zeros((out_size, in_size), np.float64)
  for o in range(out_size):
    start = (o * in_size) // out_size
    end = -((-(o + 1) * in_size) // out_size)  # ceil division in integers: no float rounding
    m[o, start:end] = 1.0 / (end - start)
  return m


def _cubic_weights(t: float):
  a = _CUBIC_A
  c1 = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
  c2 = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
  return (c2(t + 1), c1(t), c1(1 - t), c2(2 - t))


def _bicubic(in_size: int, out_size: int) -> np.ndarray:
  m = np.zeros((out_size, in_size), np.float64)
  scale = in_size / out_size
  for o in range(out_size):
    s = (o + 0.5) * scale - 0.5
    i0 = int(np.floor(s))
    for tap, w in zip(range(i0 - 1, i0 + 3), _cubic_weights(s - i0)):
      m[o, min(max(tap, 0), in_size - 1)] += w
  return m


def _bilinear(in_size: int, out_size: int) -> np.ndarray:
  m = np.zeros((out_size, in_size), np.float64)
  scale = in_size / out_size
  for o in range(out_size):
    s = max((o + 0.5) * scale - 0.5, 0.0)
    i0 = int(np.floor(s))
    i1 = min(i0 + 1, in_size - 1)
    lam = s - i0
    m[o, i0] += 1.0 - lam
    m[o, i1] += lam
  return m


@functools.lru_cache(maxsize=None)
def resize_matrix(mode: str, in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) float32 matrix of `F.interpolate(mode=mode)` along one axis (read-only)."""
  _check_sizes(in_size, out_size)
  builders = {'area': _area, 'bicubic': _bicubic, 'bilinear': _bilinear}
  if mode not in builders:
    raise ValueError(f'unknown resize mode {mode!r}; expected one of {MODES}')
  m = builders[mode](int(in_size), int(out_size)).astype(np.float32)
  m.setflags(write=False)
  return m


def resize(x_BHWC: jax.Array, size, mode: str) -> jax.Array:
  """Resizes the spatial axes (1, 2) of an NHWC array to `size` (int or (h, w)) like PyTorch."""
  out_h, out_w = (size, size) if isinstance(size, int) else size
  if x_BHWC.ndim != 4:
    raise ValueError(f'resize expects (B, H, W, C), got shape {x_BHWC.shape}')
  _, in_h, in_w, _ = x_BHWC.shape
  if (in_h, in_w) == (out_h, out_w):
    return x_BHWC  # every mode is the identity at equal size
  m_h = jnp.asarray(resize_matrix(mode, in_h, out_h), x_BHWC.dtype)
  m_w = jnp.asarray(resize_matrix(mode, in_w, out_w), x_BHWC.dtype)
  return jnp.einsum('oh,bhwc,pw->bopc', m_h, x_BHWC, m_w, precision=jax.lax.Precision.HIGHEST)
