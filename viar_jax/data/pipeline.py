"""Grain training / eval input pipeline for any random-access source.

  source[k] -> decode + reference transform -> drop unreadable (counted) -> batch B_local
  -> {'image': (B_local, R, R, 3) uint8, 'label': (B_local,) int32}

Images stay uint8 up to the device (4x fewer bytes than float32); the train steps map them to
[-1, 1] there (`transforms.to_model_range`).

Record order and per-record randomness come from one global `grain.python.IndexSampler` stream
(shuffled per epoch; record number i of the stream gets its own
`np.random.Generator(Philox(grain_seed(seed) + i))`), cut into global batches of B records; process
p of P reads rows [p·B/P, (p+1)·B/P) of each (`ProcessRows`). So the global batch, row for row and
augmentation for augmentation, depends only on (seed, B), never on the number of processes: a
run on 2 hosts sees the batches of a run on 1. Each process's iterator state (`loader_state`) is
its position in its rows of the stream: restoring it replays the following batches exactly.
"""
import dataclasses
import threading
from typing import Any

from absl import flags
from absl import logging
import grain.python as grain
import numpy as np

from viar_jax.data import transforms
from viar_jax.data.skips import NoReadableRecordsError, SkipStats, Unreadable, is_skipped
# Also part of this module's interface (the augmentation the loader applies).
from viar_jax.data.transforms import (exact_train_transform, reference_eval_transform,
                                      reference_train_transform)


_warned_records: set[str] = set()  # Undecodable records already warned about, in this process.
_warned_lock = threading.Lock()


def _decode_or_mark(record) -> Any:
  """Source record -> its uint8 image, or an `Unreadable` marker when decoding bytes fails."""
  try:
    return transforms.as_uint8_hwc(record['image'])
  except Exception as e:  # pylint: disable=broad-exception-caught
    # Only encoded bytes can fail here on bad data; a wrong dtype / shape is a bug: re-raise.
    if not isinstance(record['image'], (bytes, np.bytes_)):
      raise
    what, error = f"record {record.get('index', '?')}", f'{type(e).__name__}: {e}'
    with _warned_lock:
      first = what not in _warned_records
      _warned_records.add(what)
    if first:
      logging.warning('Skipping undecodable %s (%s)', what, error)
    return Unreadable(what, error)


@dataclasses.dataclass(frozen=True)
class _TrainTransform(grain.RandomMapTransform):
  """Record -> {'image': (R, R, 3) uint8, 'label': int32}, random crop (+ flip), or with
  `augment=False` the image as it is (+ flip); passes skips."""
  image_size: int
  hflip: bool = False
  resize_mode: str = 'lanczos'
  augment: bool = True

  def random_map(self, element, rng: np.random.Generator):
    if is_skipped(element):
      return element
    image = _decode_or_mark(element)
    if is_skipped(image):
      return image
    if self.augment:
      image = reference_train_transform(image, self.image_size, rng, self.hflip, self.resize_mode)
    else:
      image = exact_train_transform(image, self.image_size, rng, self.hflip)
    return {'image': image, 'label': np.int32(element['label'])}


@dataclasses.dataclass(frozen=True)
class _EvalTransform(grain.MapTransform):
  """Record -> {'image': (R, R, 3) uint8, 'label': int32}, centre crop; passes skips."""
  image_size: int
  resize_mode: str = 'lanczos'

  def map(self, element):
    if is_skipped(element):
      return element
    image = _decode_or_mark(element)
    if is_skipped(image):
      return image
    return {'image': reference_eval_transform(image, self.image_size, self.resize_mode),
            'label': np.int32(element['label'])}


@dataclasses.dataclass(frozen=True)
class _DropSkipped(grain.FilterTransform):
  """Drops `None` / `Unreadable` records and counts them in `stats`.

  A source with no readable record would make an infinite loader spin forever without a batch, so
  after `limit` unreadable records in a row (0: no limit) it raises `NoReadableRecordsError`.
  """
  stats: SkipStats
  limit: int = 0
  source: str = ''
  # Unreadable records in a row, in this process (each grain worker counts its own records).
  _run: list = dataclasses.field(default_factory=lambda: [0], compare=False, repr=False)

  def filter(self, element) -> bool:
    if is_skipped(element):
      self.stats.add(element)
      self._run[0] += 1
      if self.limit and self._run[0] >= self.limit:
        examples = ', '.join(sorted(self.stats.names)[:3])
        raise NoReadableRecordsError(
            f'{self.source}: no readable image in {self._run[0]} reads in a row (at least one '
            f'whole epoch); {self.stats.count} skipped so far, e.g. {examples}. Check the files '
            '(the warnings above give the reasons)')
      return False
    self._run[0] = 0
    return True


def grain_seed(seed: int) -> int:
  """User seed -> the 32-bit seed given to grain's sampler.

  Grain shuffles epoch e with seed + e and augments record i with Philox(seed + i), so seeds s and
  s + 1 would replay each other's streams shifted by one; hashing the seed first decorrelates them.
  """
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f'seed must be a non-negative int, got {seed!r}')
  return int(np.random.SeedSequence(int(seed)).generate_state(1, np.uint32)[0])


@dataclasses.dataclass(frozen=True)
class Loader:
  """What `make_loader` returns: iterate it for batches; `skip_stats` counts dropped records.

  Attributes:
    data_loader: the `grain.python.DataLoader`.
    skip_stats: records dropped as unreadable so far (see `SkipStats`).
    local_batch_size: B_local = global_batch_size // process_count.
    num_records: records this process reads in one epoch (source records // process_count).
  """
  data_loader: grain.DataLoader
  skip_stats: SkipStats
  local_batch_size: int
  num_records: int

  def __iter__(self) -> grain.PyGrainDatasetIterator:
    """A fresh iterator from the start; it has `get_state()` / `set_state()`."""
    return iter(self.data_loader)


@dataclasses.dataclass(frozen=True)
class ProcessRows:
  """A grain sampler: process `index` of `count`'s rows of every global batch of `sampler`'s stream.

  Local position j is global position (j // b)·B + index·b + j % b, with b = B / count; the record
  metadata (key and per-record rng) is the global position's, so augmentation does not depend on
  the process count either. Its repr (checked by grain on restore) names the process.
  """
  sampler: grain.IndexSampler
  global_batch_size: int
  index: int
  count: int

  def __len__(self) -> int:
    b, (full, rest) = self.local_batch_size, divmod(len(self.sampler), self.global_batch_size)
    return full * b + min(max(rest - self.index * b, 0), b)

  @property
  def local_batch_size(self) -> int:
    return self.global_batch_size // self.count

  def __getitem__(self, j: int) -> grain.RecordMetadata:
    b = self.local_batch_size
    return self.sampler[(j // b) * self.global_batch_size + self.index * b + j % b]


def make_loader(source, *, image_size: int, global_batch_size: int, seed: int, train: bool,
                hflip: bool = False, process_index: int = 0, process_count: int = 1,
                num_epochs: int | None = None, worker_count: int = 0,
                resize_mode: str = 'lanczos', read_options: grain.ReadOptions | None = None,
                skip_stats: SkipStats | None = None, augment: bool = True) -> Loader:
  """Batches of reference-augmented images from a random-access `source`.

  Args:
    source: `len()` and `[i]` -> {'image': (H, W[, C]) uint8 or encoded bytes, 'label': int}, or
      None / `Unreadable` for a record that failed to load (dropped and counted).
    image_size: R.
    global_batch_size: batch over all processes; must be divisible by `process_count`.
    seed: shuffle + augmentation seed, a non-negative int.
    train: True: shuffled, random crop (+ `hflip`), infinite by default, partial last batch
      dropped. False: source order, centre crop, one epoch by default, partial last batch kept.
    hflip: random horizontal flips (train only).
    augment: train only; False: no resize and crop, every image must be R x R already (datasets
      stored at the model's resolution, e.g. the 8x8 digits: `transforms.exact_train_transform`).
    process_index, process_count: this process reads its rows of each global batch (`ProcessRows`;
      e.g. jax.process_index(), jax.process_count()).
    num_epochs: passes over the data; None -> infinite for train, 1 for eval.
    worker_count: grain worker processes (0: in this process; >0 needs a `__main__` guard in the
      launching script; unparsed absl flags are marked parsed, i.e. left at their defaults).
    resize_mode: 'lanczos' (reference) or 'nearest'.
    read_options: grain read threads / prefetch buffer (grain's default: 16 threads, 500 records).
    skip_stats: counter to use (e.g. shared between loaders); default a new one, shared across
      processes (`SkipStats(shared=True)`) when worker_count > 0.

  Returns:
    A `Loader`; iterating yields {'image': (B_local, R, R, 3) uint8,
    'label': (B_local,) int32} with B_local = global_batch_size // process_count. Iterating raises
    `NoReadableRecordsError` (a ValueError) once twice the source's record count (times
    `worker_count`) were unreadable in a row: a source with no readable image would never yield.
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'need 0 <= process_index < process_count, got {process_index}, {process_count}')
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f'global_batch_size={global_batch_size} must be a positive multiple of '
                     f'process_count={process_count}')
  if image_size < 1:
    raise ValueError(f'image_size must be positive, got {image_size}')
  if resize_mode not in ('lanczos', 'nearest'):
    raise ValueError(f"resize_mode must be 'lanczos' or 'nearest', got {resize_mode!r}")
  num_records = len(source)
  if num_records < process_count:
    raise ValueError(f'source {source!r} has {num_records} records, fewer than the '
                     f'{process_count} processes')
  local_batch_size = global_batch_size // process_count
  if num_epochs is None and not train:
    num_epochs = 1
  stream = grain.IndexSampler(num_records, shard_options=grain.NoSharding(), shuffle=train,
                              num_epochs=num_epochs, seed=grain_seed(seed))
  sampler = ProcessRows(stream, global_batch_size, process_index, process_count)
  transform = (_TrainTransform(image_size, hflip, resize_mode, augment) if train
               else _EvalTransform(image_size, resize_mode))
  if skip_stats is None:
    skip_stats = SkipStats(shared=worker_count > 0)
  elif worker_count > 0 and not skip_stats.shared:
    raise ValueError('worker_count > 0 needs SkipStats(shared=True): workers get pickled copies')
  if worker_count > 0 and not flags.FLAGS.is_parsed():
    # Grain's workers read absl flags; a script without absl.app.run gets their defaults.
    logging.info('make_loader: absl flags not parsed; using defaults for grain workers')
    flags.FLAGS.mark_as_parsed()
  # Any 2n - 1 reads in a row of a one-process stream hold a whole epoch of its n records; more
  # processes see parts of it (a heuristic then, by a wide margin); a worker sees every
  # worker_count-th read, hence the factor.
  limit = 2 * num_records * max(1, worker_count)
  data_loader = grain.DataLoader(
      data_source=source, sampler=sampler, shard_options=grain.NoSharding(),
      worker_count=worker_count,
      read_options=read_options,
      operations=[transform, _DropSkipped(skip_stats, limit, repr(source)),
                  grain.Batch(batch_size=local_batch_size, drop_remainder=train)])
  return Loader(data_loader, skip_stats, local_batch_size, num_records // process_count)


def loader_options(data_config) -> dict:
  """`make_loader` keyword arguments from a run config's `data` section: `worker_count` (grain
  worker processes; 0 = decode in the training process), `read_threads` and `prefetch_buffer`
  (grain's ReadOptions: threads reading records, records read ahead; absent keys keep grain's
  defaults, 16 threads and 500 records) and `augment` (default True, the reference resize-crop)."""
  defaults = grain.ReadOptions()
  options = {'worker_count': data_config.get('worker_count', 0),
             'read_threads': data_config.get('read_threads', defaults.num_threads),
             'prefetch_buffer': data_config.get('prefetch_buffer', defaults.prefetch_buffer_size)}
  bad = {k: v for k, v in options.items() if not isinstance(v, int) or v < (1 if k == 'read_threads' else 0)}
  if bad:
    raise ValueError(f'config.data: {bad} must be non-negative ints (read_threads at least 1)')
  augment = data_config.get('augment', True)
  if not isinstance(augment, bool):
    raise ValueError(f'config.data.augment must be True or False, got {augment!r}')
  return dict(worker_count=options['worker_count'], augment=augment, read_options=grain.ReadOptions(
      num_threads=options['read_threads'], prefetch_buffer_size=options['prefetch_buffer']))


def loader_state(iterator: grain.PyGrainDatasetIterator) -> bytes:
  """The iterator's position (JSON bytes); store it with the training checkpoint."""
  return iterator.get_state()


def restore_loader(iterator: grain.PyGrainDatasetIterator, state: bytes):
  """Moves `iterator` (from an identically built loader) to `state`; returns it for chaining.

  Grain checks that the sampler and repr(source) match the ones that produced `state`.
  """
  iterator.set_state(state)
  return iterator
