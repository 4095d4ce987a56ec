"""A sampling run's directory: what it samples, image shards written as they are made, resume.

    run = shards.SampleRun.open(out, spec)     # refuses a directory of a run with other options
    missing = run.missing(indices)             # which of these images no shard holds yet
    run.write_shard(indices, images, iterations)
    run.assemble(labels)                        # -> <out>/samples.npz, streamed from the shards

Layout:
  run.json                        `spec`: checkpoints, classes, per_class, seed, sampling options,
                                  edit inputs' digest. Not the batch or device count: an image depends
                                  on neither, so a run may resume on another machine.
  shards/<first>-<count>-p<proc>.npz  `indices` (n,) global image indices, `images` uint8 (n, H, W, 3),
                                  `iterations` (n, K) VIAR iterations per scale; each file appears only
                                  once complete (io.npz), so a killed run leaves whole shards.
  samples.npz                     the ADM file, assembled image by image in index order.
A process reads and writes only its own rows; assembling needs every shard, so multi-host runs
need an output directory every host sees (a shared file system or a bucket URL).
"""
import json
from typing import Dict, Iterator, Optional

import jax
import numpy as np
from etils import epath

from viar_jax import runtime
from viar_jax.io import npz

SPEC_FILE = 'run.json'


class SampleRun:
  """One run directory; see the module docstring."""

  def __init__(self, out: epath.Path, spec: Dict):
    self.out, self.spec = epath.Path(out), spec
    self.shard_dir = self.out / 'shards'

  @classmethod
  def open(cls, out, spec: Dict) -> 'SampleRun':
    """The run in `out`: a new one (spec written), or the one already there if its spec equals
    `spec`. Raises ValueError naming the differences otherwise, before anything is written."""
    run = cls(out, json.loads(json.dumps(spec)))  # JSON types, as it will be read back
    spec_path = run.out / SPEC_FILE
    is_new = not spec_path.exists()
    if not is_new:
      written = json.loads(spec_path.read_text())
      if written != run.spec:
        keys = sorted(k for k in set(written) | set(run.spec) if written.get(k) != run.spec.get(k))
        shown = '; '.join(f'{k}: {written.get(k)!r} there, {run.spec.get(k)!r} now' for k in keys)
        raise ValueError(f'{run.out} holds a sampling run with other settings ({shown}); resume it '
                         'with the same settings or choose another output directory')
    elif run.shard_dir.exists() or (run.out / 'samples.npz').exists():
      raise ValueError(f'{run.out} holds samples without {SPEC_FILE} (another tool or an older '
                       'version wrote them); choose another output directory')
    runtime.sync('sample-run-checked')  # every process has looked before process 0 writes
    if is_new and runtime.is_primary():
      spec_path.write_text(json.dumps(run.spec, indent=1))
    runtime.sync('sample-run-opened')
    return run

  def _shards(self) -> Iterator[epath.Path]:
    if self.shard_dir.exists():
      yield from sorted(self.shard_dir.glob('*.npz'))

  def done(self) -> np.ndarray:
    """(N_done,) sorted global indices of the images some shard visible here holds."""
    held = [np.load(path)['indices'] for path in self._shards()]
    return np.unique(np.concatenate(held)) if held else np.zeros((0,), np.int64)

  def write_shard(self, indices, images, iterations) -> epath.Path:
    indices = np.asarray(indices)
    self.shard_dir.mkdir(parents=True, exist_ok=True)
    path = self.shard_dir / f'{indices[0]:08d}-{len(indices)}-p{jax.process_index()}.npz'
    partial = path.with_name(path.name + '.partial')
    with partial.open('wb') as f:
      np.savez(f, indices=indices, images=images, iterations=iterations)
    partial.rename(path)
    return path

  def _owners(self, total: int):
    """For each global index, the shard holding it (any one) and its row there."""
    files, file_of, row_of = [], np.full(total, -1), np.zeros(total, np.int64)
    for path in self._shards():
      indices = np.load(path)['indices']
      inside = indices < total
      file_of[indices[inside]] = len(files)
      row_of[indices[inside]] = np.flatnonzero(inside)
      files.append(path)
    missing = np.flatnonzero(file_of < 0)
    if len(missing):
      raise ValueError(f'{len(missing)} of {total} images are in no shard under {self.shard_dir} '
                       f'(first missing: {missing[:5].tolist()}); on several hosts the output '
                       'directory must be one that every host sees')
    return files, file_of, row_of

  def read(self, total: int, field: str, indices=None, chunk: int = 1024) -> Iterator[np.ndarray]:
    """`field` ('images' or 'iterations') of `indices` (default 0..total-1, all of which must be on
    disk) in that order, `chunk` at a time, holding at most one shard in memory."""
    files, file_of, row_of = self._owners(total)
    indices = np.arange(total) if indices is None else np.asarray(indices)
    loaded: Optional[tuple] = None
    for start in range(0, len(indices), chunk):
      rows = []
      for j in indices[start:start + chunk]:
        if loaded is None or loaded[0] != file_of[j]:
          loaded = (file_of[j], np.load(files[file_of[j]])[field])
        rows.append(loaded[1][row_of[j]])
      yield np.stack(rows)

  def assemble(self, labels: np.ndarray, image_shape) -> epath.Path:
    """Writes `<out>/samples.npz` (arr_0 images in index order, arr_1 labels) from the shards."""
    path = self.out / 'samples.npz'
    npz.write_streamed(path, self.read(len(labels), 'images'), (len(labels), *image_shape), labels)
    return path
