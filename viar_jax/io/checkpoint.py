"""Model checkpoints on disk: orbax params + a `config.json` that rebuilds the module.

    <dir>/config.json     {"kind": "vqvae" | "transformer", "config": {...dataclass fields...},
                           "manifest": "manifest.json"}
    <dir>/params/         orbax StandardCheckpointer tree (plain nested dict of arrays)
    <dir>/manifest.json   sha256 of config.json and of every file under params/ (viar_jax.io.manifest)

`load` verifies before it returns anything; every failure is one `integrity.CheckpointError`:
  1. config.json parses and names a known kind;
  2. the manifest (when the checkpoint has one): every file under params/ present, unchanged, none
     added (a changed config.json alone is judged after 3: one copied from another checkpoint
     makes this one "of another model");
  3. the parameter tree in orbax's metadata (read before any array) has the names, shapes and dtypes
     that the config builds;
  4. every array reads, and is finite.
Checkpoints written before manifests existed (no `manifest` key in config.json) skip step 2.
"""
import dataclasses
import json
from typing import Any, Tuple

from etils import epath
import jax
import orbax.checkpoint as ocp

from viar_jax import runtime
from viar_jax.io import integrity, manifest, run_config, writable
from viar_jax.models import factory, transformer, vqvae

KINDS = {'vqvae': vqvae.VQVAEConfig, 'transformer': transformer.TransformerConfig}


def config_to_json(config) -> dict:
  kind = next((k for k, cls in KINDS.items() if isinstance(config, cls)), None)
  if kind is None:
    raise ValueError(f'cannot serialise a {type(config).__name__}')
  return {'kind': kind, 'config': dataclasses.asdict(config)}


def config_from_json(blob: dict):
  if not isinstance(blob, dict) or blob.get('kind') not in KINDS:
    kind = blob.get('kind') if isinstance(blob, dict) else None
    raise ValueError(f'unknown model kind {kind!r}; expected one of {tuple(KINDS)}')
  if not isinstance(blob.get('config'), dict):
    raise ValueError('no "config" object')
  return run_config.dataclass_from(KINDS[blob['kind']], blob['config'], 'config.json')


def _read_config_json(directory: epath.Path) -> Tuple[dict, Any]:
  """-> (the parsed config.json, its config); any fault is a integrity.CheckpointError."""
  path = directory / 'config.json'
  if not directory.is_dir():
    raise integrity.CheckpointNotFoundError(f'checkpoint {directory} does not exist', directory)
  if not path.exists():
    if (directory / 'params').exists():
      raise integrity.damaged(directory, 'config.json', 'missing (params/ is there)')
    raise integrity.CheckpointNotFoundError(f'{directory} is not a viar-jax checkpoint (no config.json)',
                                  directory, 'config.json')
  try:
    blob = json.loads(path.read_bytes().decode('utf-8'))
    return blob, config_from_json(blob)
  except (ValueError, TypeError) as e:  # JSON and UTF-8 errors are ValueErrors
    raise integrity.damaged(directory, 'config.json', f'not a valid model config ({integrity.short_message(e)}); expected '
                  f'{{"kind": one of {list(KINDS)}, "config": {{...}}}}') from e


def load_config(directory):
  """The VQVAEConfig or TransformerConfig of a checkpoint, without integrity.reading its params."""
  return _read_config_json(writable.absolute(directory))[1]


def save(directory, params, config) -> epath.Path:
  """Writes params, config and the checksum manifest; refuses to overwrite a checkpoint.

  With several processes every process calls it (params may be sharded over all of them: each
  writes its shards, no gather to one host); process 0 writes config.json and the manifest.
  """
  directory = writable.absolute(directory)
  if (directory / 'params').exists():
    raise FileExistsError(f'{directory} already holds a checkpoint; choose another directory')
  runtime.sync('checkpoint save: checked')  # no process may see another's params/ above
  directory.mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / 'params', params)
  checkpointer.wait_until_finished()
  if runtime.is_primary():
    blob = dict(config_to_json(config), manifest=manifest.MANIFEST)  # load: a manifest must be there
    (directory / 'config.json').write_text(json.dumps(blob, indent=1))
    manifest.write_manifest(directory)  # last: a checkpoint with a manifest is complete
  runtime.sync('checkpoint save: complete')
  return directory


def _manifest_error(directory, problems) -> integrity.CheckpointError:
  name, problem = problems[0]
  if name == 'config.json' and len(problems) == 1:
    problem += ('; if you edited it on purpose, record the edit with '
                'viar_jax.io.manifest.write_manifest(directory)')
  others = [n for n, _ in problems[1:]]
  more = f' (also: {", ".join(others[:3])}{", ..." if len(others) > 3 else ""})' if others else ''
  return integrity.damaged(directory, name, problem + more)


def load(directory) -> Tuple[Any, Any]:
  """-> (config, params) with params as numpy-backed jax arrays on the default device.

  Raises:
    integrity.CheckpointError: the checkpoint is integrity.damaged or its params are of another model than its
      config.json (integrity.CheckpointNotFoundError, also a FileNotFoundError, when nothing is there).
  """
  directory = writable.absolute(directory)
  if not (directory / 'params').exists():
    if (directory / 'config.json').exists():
      raise integrity.damaged(directory, 'params/', 'missing (config.json is there)')
    raise integrity.CheckpointNotFoundError(
        f'{directory} is not a viar-jax checkpoint (needs config.json and params/)', directory)
  blob, config = _read_config_json(directory)
  problems = manifest.verify_manifest(directory) if blob.get('manifest') else []
  if any(name != 'config.json' for name, _ in problems):
    raise _manifest_error(directory, [p for p in problems if p[0] != 'config.json'] + [
        p for p in problems if p[0] == 'config.json'])
  stored = integrity.tree_metadata(directory, directory / 'params')
  template = factory.abstract_params(config)
  # Before the manifest's verdict on config.json: one copied from another checkpoint, or edited,
  # makes the checkpoint "of another model" when the params disagree with it.
  integrity.check_tree(directory, template, stored, config_edited=bool(problems))
  if problems:
    raise _manifest_error(directory, problems)
  # Whole arrays on this process's first device, whatever device layout wrote them (an export
  # from a sharded multi-process run restores in a plain 1-device process, and on every process).
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), template)
  checkpointer = ocp.StandardCheckpointer()
  try:
    with integrity.reading(directory, directory / 'params'):
      params = checkpointer.restore(directory / 'params', target)
  finally:
    checkpointer.close()
  integrity.check_finite(directory, params)
  return config, params
