"""Model checkpoints on disk: orbax params + a `config.json` that rebuilds the module.

    <dir>/config.json   {"kind": "vqvae" | "transformer", "config": {...dataclass fields...}}
    <dir>/params/       orbax StandardCheckpointer tree (plain nested dict of arrays)
"""
import dataclasses
import json
import pathlib
from typing import Any, Tuple

import orbax.checkpoint as ocp

from viar_jax.io import run_config
from viar_jax.models import factory, transformer, vqvae

KINDS = {'vqvae': vqvae.VQVAEConfig, 'transformer': transformer.TransformerConfig}


def config_to_json(config) -> dict:
  kind = next((k for k, cls in KINDS.items() if isinstance(config, cls)), None)
  if kind is None:
    raise ValueError(f'cannot serialise a {type(config).__name__}')
  return {'kind': kind, 'config': dataclasses.asdict(config)}


def config_from_json(blob: dict):
  if blob.get('kind') not in KINDS:
    raise ValueError(f'unknown model kind {blob.get("kind")!r}; expected one of {tuple(KINDS)}')
  return run_config.dataclass_from(KINDS[blob['kind']], blob['config'], 'config.json')


def load_config(directory):
  """The VQVAEConfig or TransformerConfig of a checkpoint, without reading its params."""
  path = pathlib.Path(directory).absolute() / 'config.json'
  if not path.exists():
    raise FileNotFoundError(f'{path.parent} is not a viar-jax checkpoint (no config.json)')
  return config_from_json(json.loads(path.read_text()))


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
  config = load_config(directory)
  template = factory.abstract_params(config)
  params = ocp.StandardCheckpointer().restore(directory / 'params', template)
  return config, params
