"""Checksum manifests: sha256 of every file of a checkpoint.

    <dir>/manifest.json   model checkpoints: config.json and params/, written last by
                          `checkpoint.save`, verified first by `checkpoint.load`;
                          training steps: every file of the step, written once orbax has
                          finalised it, verified by `run_io.RunCheckpointer.restore`

The manifest also checksums its own file list, so damage to it is reported as such.
"""
import concurrent.futures
import hashlib
import json
from typing import Dict, List, Optional, Sequence, Tuple

from etils import epath

from viar_jax.io import integrity

MANIFEST = 'manifest.json'


def _sha256(path: epath.Path) -> str:
  digest = hashlib.sha256()
  with path.open('rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


MODEL_FILES = ('config.json', 'params')  # what a model checkpoint's manifest covers


def _files_under(directory: epath.Path) -> List[epath.Path]:
  # epath has no recursive glob (it would be one request per folder on a bucket anyway).
  return [root / name for root, _, names in directory.walk() for name in names]


def _covered_files(directory: epath.Path, covers: Optional[Sequence[str]]) -> List[str]:
  """The files and folders named in `covers` (None: everything but the manifest itself); other
  files beside them, e.g. a tokenizer's reconstructions.png, are not part of the checkpoint."""
  if covers is None:
    files = [p for p in _files_under(directory) if p.name not in (MANIFEST, MANIFEST + '.tmp')]
  else:
    files = []
    for name in covers:
      path = directory / name
      files += _files_under(path) if path.is_dir() else (
          [path] if path.exists() else [])
  return sorted(p.relative_to(directory).as_posix() for p in files)


def _hash_files(directory: epath.Path, names: List[str]) -> Dict[str, str]:
  # hashlib releases the GIL: large checkpoints hash in parallel.
  with concurrent.futures.ThreadPoolExecutor(min(8, max(1, len(names)))) as pool:
    return dict(zip(names, pool.map(lambda n: _sha256(directory / n), names)))


def _files_digest(files: Dict[str, str]) -> str:
  return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def write_manifest(directory, covers: Optional[Sequence[str]] = MODEL_FILES) -> epath.Path:
  """Writes `<directory>/manifest.json`: sha256 of each checkpoint file, and of that list itself (so
  damage to the manifest is told apart from damage to a file)."""
  directory = epath.Path(directory)
  files = _hash_files(directory, _covered_files(directory, covers))
  blob = {'format': 1, 'algorithm': 'sha256', 'files': files, 'files_sha256': _files_digest(files)}
  tmp = directory / (MANIFEST + '.tmp')
  tmp.write_text(json.dumps(blob, indent=1, sort_keys=True))
  tmp.replace(directory / MANIFEST)  # all or nothing (a rename)
  return directory / MANIFEST


def verify_manifest(directory, covers: Optional[Sequence[str]] = MODEL_FILES,
                    what: str = 'checkpoint') -> List[Tuple[str, str]]:
  """-> [(file, problem)] against the manifest: changed, missing or unexpected files; [] when all
  agree. A missing or unreadable manifest is a integrity.CheckpointError."""
  directory = epath.Path(directory)
  path = directory / MANIFEST
  if not path.exists():
    raise integrity.damaged(directory, MANIFEST, 'missing (config.json says the checkpoint was '
                            'written with one)', what)
  try:
    blob = json.loads(path.read_bytes().decode('utf-8'))
    files = blob['files']
    ok = isinstance(files, dict) and blob['files_sha256'] == _files_digest(files)
  except (ValueError, TypeError, KeyError) as e:
    raise integrity.damaged(directory, MANIFEST, f'unreadable ({integrity.short_message(e)})',
                            what) from e
  if not ok:
    raise integrity.damaged(directory, MANIFEST, 'its own checksum does not match its contents',
                            what)
  on_disk = set(_covered_files(directory, covers))
  problems = [(n, 'missing') for n in sorted(set(files) - on_disk)]
  problems += [(n, 'unexpected file, not in the manifest') for n in sorted(on_disk - set(files))]
  present = sorted(on_disk & set(files))
  for name, digest in _hash_files(directory, present).items():
    if digest != files[name]:
      size = (directory / name).stat().length
      problems.append((name, f'contents changed since it was saved (sha256 differs; '
                             f'{size} bytes{", empty" if size == 0 else ""})'))
  return problems
