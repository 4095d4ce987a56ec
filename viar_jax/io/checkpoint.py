"""Model checkpoints on disk: orbax params + a `config.json` that rebuilds the module.

    <dir>/config.json   {"kind": "vqvae" | "transformer", "config": {...dataclass fields...}}
    <dir>/params/       orbax StandardCheckpointer tree (plain nested dict of arrays)
"""
import dataclasses
import json
import pathlib
from typing import Any, Tuple

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from viar_jax.io import convert
from viar_jax.models import transformer, vqvae

KINDS = {'vqvae': vqvae.VQVAEConfig, 'transformer': transformer.TransformerConfig}


def config_to_json(config) -> dict:
  kind = next((k for k, cls in KINDS.items() if isinstance(config, cls)), None)
  if kind is None:
    raise ValueError(f'cannot serialise a {type(config).__name__}')
  return {'kind': kind, 'config': dataclasses.asdict(config)}


def config_from_json(blob: dict):
  if blob.get('kind') not in KINDS:
    raise ValueError(f'unknown model kind {blob.get("kind")!r}; expected one of {tuple(KINDS)}')
  cls = KINDS[blob['kind']]
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = set(blob['config']) - fields
  if unknown:
    raise ValueError(f'config.json has fields {sorted(unknown)} unknown to {cls.__name__}')
  values = {k: tuple(v) if isinstance(v, list) else v for k, v in blob['config'].items()}
  return cls(**values)


def module_for(config):
  return vqvae.VQVAE(config) if isinstance(config, vqvae.VQVAEConfig) else transformer.Transformer(config)


def save(directory, params, config) -> pathlib.Path:
  """Writes params + config; refuses to overwrite an existing checkpoint."""
  directory = pathlib.Path(directory).absolute()
  if (directory / 'params').exists():
    raise FileExistsError(f'{directory} already holds a checkpoint; choose another directory')
  directory.mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / 'params', params)
  checkpointer.wait_until_finished()
  (directory / 'config.json').write_text(json.dumps(config_to_json(config), indent=1))
  return directory


def load(directory) -> Tuple[Any, Any]:
  """-> (config, params) with params as numpy-backed jax arrays on the default device."""
  directory = pathlib.Path(directory).absolute()
  if not (directory / 'config.json').exists() or not (directory / 'params').exists():
    raise FileNotFoundError(f'{directory} is not a viar-jax checkpoint (needs config.json and params/)')
  config = config_from_json(json.loads((directory / 'config.json').read_text()))
  template = abstract_params(config)
  params = ocp.StandardCheckpointer().restore(directory / 'params', template)
  return config, params


def abstract_params(config):
  """Param shapes (ShapeDtypeStruct tree) of the module a config builds; allocates nothing."""
  if isinstance(config, vqvae.VQVAEConfig):
    img = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, config.in_channels),
                               jnp.float32)
    return convert.abstract_params(vqvae.VQVAE(config), img)
  x = jax.ShapeDtypeStruct((1, config.seq_len - config.patch_nums[0]**2, config.z_channels),
                           jnp.float32)
  return convert.abstract_params(transformer.Transformer(config),
                                 jax.ShapeDtypeStruct((1,), jnp.int32), x)
