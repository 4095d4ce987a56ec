"""PyTorch state dicts of the reference VAR / VIAR / VQ-VAE code <-> our Flax params.

Flax module names mirror the reference module names, so a key maps to a param path by a fixed rule:
  * `name.N` (an index into a ModuleList) becomes the Flax list name `name_N`;
  * the few Sequential indices with no Flax counterpart are renamed (`ada_lin.1` -> `ada_lin`,
    `implicit_block_projection.{0,2}` -> `implicit_proj.{fc1,fc2}`);
  * the last part `weight` becomes the Flax leaf that exists there (`kernel`, `scale` or `embedding`).
Arrays: Linear (out, in) -> kernel (in, out); Conv2d (O, I, kh, kw) -> kernel (kh, kw, I, O); all
others unchanged. Conversion is strict: unknown keys, missing params and shape mismatches are reported
together in one `CheckpointMismatchError`. Buffers that the model recomputes are skipped on purpose.

Loading never runs code from the file: a `.pth` pickle is first scanned by an unpickler that only
knows the globals a state dict of tensors needs (`check_pickle_globals`; anything else raises
`UnsafeCheckpointError`), with or without torch installed, and is then read by
`torch.load(weights_only=True)`; `.npz` files are read without pickle.
"""
import collections
import io
import os
import pickle
import re
import tarfile
import zipfile
from typing import Any, Dict, Mapping, Tuple

import numpy as np
from flax import traverse_util

# Buffers of the reference modules: recomputed by our code (or unused training statistics).
SKIPPED_BUFFERS = (
    re.compile(r'^quantize\.ema_vocab_hit_SV$'),  # codebook-usage EMA, a training statistic
    re.compile(r'^lvl_1L$'),  # scale index per token
    re.compile(r'^attn_bias_for_masking$'),  # block-causal mask
    re.compile(r'(^|\.)attn\.zero_k_bias$'),  # frozen zero key bias (checked to be zero)
)
# (reference key fragment, our key fragment), applied left to right; each must be unambiguous.
RENAMES = (
    ('ada_lin.1.', 'ada_lin.'),
    ('implicit_block_projection.0.', 'implicit_proj.fc1.'),
    ('implicit_block_projection.2.', 'implicit_proj.fc2.'),
)
_WEIGHT_LEAVES = ('kernel', 'scale', 'embedding')
_UNSPLIT_PARENTS = ('mid',)  # `mid.block_1` is a real name in the reference, not a list index


class CheckpointMismatchError(ValueError):
  """A state dict that does not fit the model; the message lists every problem."""


class UnsafeCheckpointError(ValueError):
  """A checkpoint whose pickle would import or call something besides tensor rebuilding."""


# The globals a pickled state dict of tensors refers to (within torch's weights_only allowlist).
_TORCH_DTYPES = frozenset(
    'float32 float float64 double float16 half bfloat16 int64 long int32 int int16 short int8 '
    'uint8 bool complex64 complex128'.split())
_SAFE_GLOBALS = {
    'collections': frozenset({'OrderedDict'}),
    'torch._utils': frozenset({'_rebuild_tensor', '_rebuild_tensor_v2', '_rebuild_parameter',
                               '_rebuild_parameter_with_state'}),
    'torch._tensor': frozenset({'_rebuild_from_type_v2'}),
    'torch.nn.parameter': frozenset({'Parameter'}),
    'torch.serialization': frozenset({'_get_layout'}),
    'torch': frozenset({'Size', 'Tensor', 'device', 'strided'}) | _TORCH_DTYPES,
}
_LEGACY_TORCH_MAGIC = 0x1950a86a20f9469cfc6c  # first pickle of torch's pre-1.6 (non-zip) format
_LEGACY_TORCH_PICKLES = 5  # magic, protocol, sys_info, the object, storage keys; raw bytes follow


def _is_safe_global(module: str, name: str) -> bool:
  if module == 'torch' and name.endswith('Storage') and name.isidentifier():
    return True  # FloatStorage, BFloat16Storage, UntypedStorage, ...: in persistent ids
  return name in _SAFE_GLOBALS.get(module, ())


class _Inert:
  """What the scanning unpickler builds for every allowed global: takes any arguments, runs nothing."""

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __setstate__(self, state):
    del state


class _ScanningUnpickler(pickle.Unpickler):
  """Walks a pickle without running it: globals outside the allowlist raise, the rest are inert."""

  def __init__(self, file, path: str):
    super().__init__(file)
    self._path = path

  def find_class(self, module, name):
    if not _is_safe_global(module, name):
      shown = 'builtins' if module == '__builtin__' else module  # protocol <= 2 spelling
      raise UnsafeCheckpointError(
          f'{self._path}: refusing to load it: its pickle imports {shown}.{name}, which a '
          'checkpoint of tensors never needs (nothing from the file was run). Only convert '
          'checkpoints from a source you trust.')
    return collections.OrderedDict if module == 'collections' else _Inert

  def persistent_load(self, pid):
    del pid  # torch's storage references: the tensor data, never unpickled
    return None


def check_pickle_globals(path: str):
  """Raises `UnsafeCheckpointError` if the PyTorch checkpoint's pickle refers to any global a state
  dict of tensors does not need; runs nothing from the file and needs no torch.

  Reads the zip format's `data.pkl`, or the pickles of the legacy format (or a plain pickle). Files
  that are no pickle at all (or tar-era torch files) are left to torch.load to reject.
  """
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as z:
      for name in z.namelist():
        if name == 'data.pkl' or name.endswith('/data.pkl'):
          _scan(io.BytesIO(z.read(name)), path, 1)
    return
  if tarfile.is_tarfile(path):
    return
  with open(path, 'rb') as f:
    _scan(f, path, _LEGACY_TORCH_PICKLES)


def _scan(f, path: str, count: int):
  """Scans the first `count` pickles in `f` (fewer if the first is not torch's legacy magic)."""
  for i in range(count):
    try:
      obj = _ScanningUnpickler(f, path).load()
    except UnsafeCheckpointError:
      raise
    except Exception:  # pylint: disable=broad-exception-caught
      return  # not (or no longer) a pickle: torch.load reports what the file is
    if i == 0 and obj != _LEGACY_TORCH_MAGIC:
      return  # a plain pickle: this was its only object


def _is_skipped(key: str) -> bool:
  return any(p.search(key) for p in SKIPPED_BUFFERS)


def reference_key_to_path(key: str) -> Tuple[str, ...]:
  """'encoder.down.0.block.1.conv1.weight' -> ('encoder', 'down_0', 'block_1', 'conv1', 'weight')."""
  for ref, ours in RENAMES:
    key = key.replace(ref, ours)
  path = []
  for part in key.split('.'):
    if part.isdigit() and path:
      path[-1] = f'{path[-1]}_{part}'
    else:
      path.append(part)
  return tuple(path)


def path_to_reference_key(path: Tuple[str, ...]) -> str:
  """Inverse of `reference_key_to_path` for a Flax param path (leaf names mapped back to `weight`)."""
  parts = []
  for i, name in enumerate(path):
    if i == len(path) - 1 and name in _WEIGHT_LEAVES:
      name = 'weight'
    m = re.fullmatch(r'(.+)_(\d+)', name)
    if m and not (i > 0 and path[i - 1] in _UNSPLIT_PARENTS):
      name = f'{m.group(1)}.{m.group(2)}'
    parts.append(name)
  key = '.'.join(parts)
  for ref, ours in reversed(RENAMES):
    key = key.replace(ours, ref)
  return key


_CONV_TO_REFERENCE, _CONV_FROM_REFERENCE = (3, 2, 0, 1), (2, 3, 1, 0)  # HWIO -> OIHW and back


def _relayout(leaf: str, x: np.ndarray, conv_axes) -> np.ndarray:
  """Dense kernels transpose (their own inverse); conv kernels permute by `conv_axes`."""
  if leaf != 'kernel' or x.ndim not in (2, 4):
    return x
  return x.T if x.ndim == 2 else np.transpose(x, conv_axes)


def to_reference_layout(leaf: str, x: np.ndarray) -> np.ndarray:
  """A Flax leaf in PyTorch's layout: Dense (in, out) -> (out, in), Conv HWIO -> OIHW."""
  return _relayout(leaf, x, _CONV_TO_REFERENCE)


def from_reference_layout(leaf: str, x: np.ndarray) -> np.ndarray:
  """Inverse of `to_reference_layout`."""
  return _relayout(leaf, x, _CONV_FROM_REFERENCE)


def reference_shape(leaf: str, shape) -> Tuple[int, ...]:
  """PyTorch shape of a Flax leaf of `shape` (no data touched)."""
  return tuple(to_reference_layout(leaf, np.empty(tuple(shape), np.uint8)).shape)


def reference_key_spec(template_params) -> Dict[str, Tuple[int, ...]]:
  """Every reference key (parameters only, no skipped buffers) and its PyTorch shape for a model.

  `template_params` is a params pytree or its `jax.eval_shape` (ShapeDtypeStruct leaves).
  """
  spec = {}
  for path, leaf in traverse_util.flatten_dict(_unfreeze(template_params)).items():
    spec[path_to_reference_key(path)] = reference_shape(path[-1], leaf.shape)
  return spec


def _unfreeze(tree):
  tree = tree.unfreeze() if hasattr(tree, 'unfreeze') else tree
  return tree.get('params', tree) if isinstance(tree, Mapping) and set(tree) == {'params'} else tree


def convert_state_dict(state_dict: Mapping[str, Any], template_params, dtype=np.float32):
  """Reference state dict (key -> array-like) -> Flax params matching `template_params`.

  Raises `CheckpointMismatchError` listing every unknown key, missing param and shape mismatch.
  """
  flat_template = traverse_util.flatten_dict(_unfreeze(template_params))
  by_parent = {}
  for path in flat_template:
    by_parent.setdefault(path[:-1], set()).add(path[-1])

  out, unknown, mismatched, bad_buffers = {}, [], [], []
  for key, value in state_dict.items():
    if _is_skipped(key):
      if key.endswith('zero_k_bias') and np.any(_as_numpy(value) != 0):
        bad_buffers.append(f'{key}: the reference adds this key bias, ours is fixed at zero')
      continue
    path = reference_key_to_path(key)
    leaves = by_parent.get(path[:-1], set())
    if path[-1] == 'weight':
      found = [l for l in _WEIGHT_LEAVES if l in leaves]
      path = path[:-1] + (found[0] if found else 'weight',)
    if path not in flat_template:
      unknown.append(key)
      continue
    x = from_reference_layout(path[-1], _as_numpy(value))
    want = tuple(flat_template[path].shape)
    if x.shape != want:
      mismatched.append(f'{key}: checkpoint {tuple(_as_numpy(value).shape)} vs model '
                        f'{reference_shape(path[-1], want)}')
      continue
    out[path] = np.asarray(x, dtype)
  missing = [path_to_reference_key(p) for p in flat_template if p not in out
             and path_to_reference_key(p) not in state_dict]
  problems = ([f'unknown key {k}' for k in sorted(unknown)] +
              [f'missing key {k}' for k in sorted(missing)] +
              [f'shape mismatch {m}' for m in mismatched] + bad_buffers)
  if problems:
    raise CheckpointMismatchError(f'{len(problems)} problem(s) converting the state dict:\n  ' +
                                  '\n  '.join(problems))
  return traverse_util.unflatten_dict(out)


def _as_numpy(value) -> np.ndarray:
  if hasattr(value, 'detach'):  # torch.Tensor, without importing torch
    value = value.detach().cpu().float().numpy() if value.is_floating_point() else value.cpu().numpy()
  return np.asarray(value)


def load_reference_state_dict(path: str) -> Dict[str, np.ndarray]:
  """Loads a reference checkpoint safely: `.pth`/`.pt` via torch with weights_only=True after
  `check_pickle_globals`, `.safetensors` via safetensors, `.npz` (keys as-is, or under an `sd/`
  prefix; object arrays, which would need pickle, are refused).

  Raises:
    FileNotFoundError: no such file.
    UnsafeCheckpointError: the pickle refers to code (checked before torch is even imported).
    ValueError: a `.npz` with object arrays.
    ImportError: a `.pth` file without torch installed.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'checkpoint not found: {path}')
  if path.endswith('.npz'):
    with np.load(path, allow_pickle=False) as z:
      keys = [k for k in z.files if k.startswith('sd/')] or list(z.files)
      try:
        return {k[3:] if k.startswith('sd/') else k: z[k] for k in keys}
      except ValueError as e:  # "Object arrays cannot be loaded when allow_pickle=False"
        raise UnsafeCheckpointError(f'{path}: refusing to load it: {e} (arrays of Python objects '
                                    'are pickles and could run code)') from None
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    return load_file(path)
  check_pickle_globals(path)  # first, and without torch: a malicious file fails the same everywhere
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError('reading .pth checkpoints needs PyTorch: pip install "viar-jax[torch]"') from e
  # mmap: tensors stay file-backed until converted one by one (no second full copy in memory).
  # torch can only mmap its zip format; older files (e.g. torchvision's 2017 VGG16) load in full.
  try:
    sd = torch.load(path, map_location='cpu', weights_only=True, mmap=zipfile.is_zipfile(path))
  except pickle.UnpicklingError as e:  # weights_only refused a global (nothing was run)
    lines = [l.strip() for l in str(e).splitlines() if l.strip()] or [type(e).__name__]
    reason = next((l for l in lines if 'Unsupported global' in l), lines[0])
    raise UnsafeCheckpointError(f'{path}: refusing to load it: torch.load(weights_only=True) '
                                f'failed: {reason}') from e
  for wrapper in ('state_dict', 'model', 'trainer'):
    if isinstance(sd, Mapping) and wrapper in sd and isinstance(sd[wrapper], Mapping):
      sd = sd[wrapper]
  if not isinstance(sd, Mapping):
    raise CheckpointMismatchError(f'{path} does not hold a state dict (got {type(sd).__name__})')
  return {k: _as_numpy(v) for k, v in sd.items()}
