"""Sharding, declared once: a ('data', 'fsdp') mesh, an FSDP rule for params and optimizer state.

* Batches are split over both axes: every device sees B / (data · fsdp) examples.
* A param (or optimizer-state leaf) with at least `min_fsdp_size` elements is split over 'fsdp'
  along its largest dimension divisible by the fsdp size (the last such one on ties) and replicated
  over 'data'; everything else is fully replicated. Leaves under a module named in `replicate` stay
  replicated: VIAR's implicit layer runs many times per step and would otherwise be all-gathered on
  every iteration.

The rule looks only at shapes and '/'-joined key paths, so it applies unchanged to optax states,
whose mu / nu subtrees have the params' shapes and whose scalar counts are replicated.
"""
import math
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from viar_jax.models import implicit

DATA, FSDP = 'data', 'fsdp'
IMPLICIT_MODULES = implicit.ImplicitLayer.PARAM_NAMES  # VIAR's implicit layer, kept whole


def make_mesh(data: int, fsdp: int, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """(data, fsdp) mesh over `devices` (default: all), in automatic (Auto) sharding mode."""
  devices = jax.devices() if devices is None else list(devices)
  if data < 1 or fsdp < 1 or data * fsdp != len(devices):
    raise ValueError(f'mesh data={data} x fsdp={fsdp} needs {data * fsdp} devices, but there are '
                     f'{len(devices)}; choose data · fsdp = {len(devices)}')
  return jax.make_mesh((data, fsdp), (DATA, FSDP), axis_types=(AxisType.Auto,) * 2, devices=devices)


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_fsdp_size: int = 2**14) -> P:
  """The FSDP rule for one shape: P() or 'fsdp' on one dim, e.g. (128, 384) -> P(None, 'fsdp')."""
  if fsdp_size <= 1 or math.prod(shape) < min_fsdp_size:
    return P()
  divisible = [i for i, d in enumerate(shape) if d % fsdp_size == 0]
  if not divisible:
    return P()
  dim = max(divisible, key=lambda i: (shape[i], i))  # largest, then last
  return P(*(FSDP if i == dim else None for i in range(len(shape))))


def tree_specs(tree, mesh: Mesh, *, min_fsdp_size: int = 2**14, replicate: Sequence[str] = ()):
  """PartitionSpec pytree for any pytree of arrays / ShapeDtypeStructs (params, optax states, ...).

  `replicate`: module names (whole path components, e.g. IMPLICIT_MODULES) kept replicated.
  """
  fsdp_size = mesh.shape[FSDP]
  replicate = frozenset(replicate)

  def spec(path, leaf):
    names = jax.tree_util.keystr(path, simple=True, separator='/').split('/')
    if replicate.intersection(names):
      return P()
    return fsdp_spec(np.shape(leaf), fsdp_size, min_fsdp_size)
  return jax.tree_util.tree_map_with_path(spec, tree)


def param_specs(params, mesh: Mesh, *, min_fsdp_size: int = 2**14, replicate: Sequence[str] = ()):
  """`tree_specs` for params; replicate=IMPLICIT_MODULES keeps VIAR's implicit layer whole."""
  return tree_specs(params, mesh, min_fsdp_size=min_fsdp_size, replicate=replicate)


def named_shardings(specs, mesh: Mesh):
  """PartitionSpec pytree -> NamedSharding pytree (for device_put and jit in/out_shardings)."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def batch_spec() -> P:
  """Leading (batch) dimension split over both mesh axes; the batch must divide by data · fsdp."""
  return P((DATA, FSDP))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, batch_spec())


def _num_shards(spec: P, mesh: Mesh) -> int:
  axes = []
  for entry in spec:
    axes.extend(entry if isinstance(entry, tuple) else [] if entry is None else [entry])
  return math.prod(mesh.shape[a] for a in axes)


def describe(params, specs, mesh: Mesh) -> str:
  """One start-up log line: param count, bytes per device (replicated + sharded), sharded leaves."""
  leaves = jax.tree.leaves(params)
  spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
  replicated = sharded = total = num_sharded = 0
  for leaf, spec in zip(leaves, spec_leaves, strict=True):
    nbytes = math.prod(np.shape(leaf)) * np.dtype(leaf.dtype).itemsize
    total += nbytes
    shards = _num_shards(spec, mesh)
    if shards > 1:
      sharded += nbytes / shards
      num_sharded += 1
    else:
      replicated += nbytes
  count = sum(math.prod(np.shape(x)) for x in leaves)
  mib = lambda b: f'{b / 2**20:.2f} MiB'
  mesh_str = ' x '.join(f'{name}={size}' for name, size in mesh.shape.items())
  return (f'params {count:,} ({mib(total)}) on mesh {mesh_str}: per device '
          f'{mib(replicated + sharded)} = {mib(replicated)} replicated + {mib(sharded)} sharded; '
          f'{num_sharded}/{len(leaves)} leaves sharded')
