"""Dependency-free TensorBoard scalar logging: event files written (and read back) with the stdlib only.

An event file is a sequence of TFRecords, each holding one serialized `tensorflow.Event` proto:

    uint64 length (little-endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)

The protos are hand-encoded; only the fields we need (tensorflow/core/util/event.proto, summary.proto):

    Event          wall_time = 1 (double), step = 2 (int64), file_version = 3 (string), summary = 5
    Summary        value = 1 (repeated Summary.Value)
    Summary.Value  tag = 1 (string), simple_value = 2 (float)

Usage:

    with SummaryWriter('out/run1/tb') as tb:
      tb.scalar('train/loss', loss, step)
      tb.scalars({'lr': lr, 'grad_norm': gnorm}, step)
"""
import math
import pathlib
import socket
import struct
import time
from typing import Dict, Iterable, List, Optional, Tuple

FILE_VERSION = 'brain.Event:2'  # version 2 makes TensorBoard purge only on restarts, not on step jumps


def _crc32c_table() -> Tuple[int, ...]:
  table = []
  for n in range(256):
    c = n
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), the checksum TFRecord uses; not `zlib.crc32`, which is a different polynomial."""
  crc = 0xFFFFFFFF
  table = _CRC32C_TABLE
  for b in data:
    crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC (masking keeps a CRC of data that itself contains CRCs from being degenerate)."""
  crc = crc32c(data)
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _record(data: bytes) -> bytes:
  length = struct.pack('<Q', len(data))
  return (length + struct.pack('<I', masked_crc32c(length)) + data +
          struct.pack('<I', masked_crc32c(data)))


# ---- protobuf wire format (just enough) ----

def _varint(n: int) -> bytes:
  if n < 0:
    n += 1 << 64  # int64 negatives are encoded as their 64-bit two's complement (10 bytes)
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    if n:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
  return _varint(field << 3 | wire_type)


def _len_delimited(field: int, payload: bytes) -> bytes:
  return _key(field, 2) + _varint(len(payload)) + payload


def _float32(value: float) -> bytes:
  try:
    return struct.pack('<f', value)
  except OverflowError:  # beyond float32 range: saturate like a float32 cast would
    return struct.pack('<f', math.copysign(math.inf, value))


def _encode_event(wall_time: float, step: Optional[int] = None, file_version: Optional[str] = None,
                  values: Iterable[Tuple[str, float]] = ()) -> bytes:
  """Serialized `Event`; `values` are (tag, simple_value) pairs of its `Summary`."""
  out = _key(1, 1) + struct.pack('<d', wall_time)
  if step is not None:
    out += _key(2, 0) + _varint(int(step))
  if file_version is not None:
    out += _len_delimited(3, file_version.encode('utf-8'))
  summary = b''.join(
      _len_delimited(1, _len_delimited(1, tag.encode('utf-8')) + _key(2, 5) + _float32(float(v)))
      for tag, v in values)
  if summary:
    out += _len_delimited(5, summary)
  return out


def _read_varint(buf: bytes, pos: int) -> Tuple[int, int]:
  n = shift = 0
  while True:
    if pos >= len(buf):
      raise ValueError('truncated varint')
    b = buf[pos]
    pos += 1
    n |= (b & 0x7F) << shift
    shift += 7
    if not b & 0x80:
      return n, pos


def _fields(buf: bytes):
  """Yields (field number, wire type, value) of a serialized message; callers skip unknown fields."""
  pos = 0
  while pos < len(buf):
    key, pos = _read_varint(buf, pos)
    field, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _read_varint(buf, pos)
    elif wire in (1, 5):
      size = 8 if wire == 1 else 4
      value, pos = buf[pos:pos + size], pos + size
    elif wire == 2:
      size, pos = _read_varint(buf, pos)
      value, pos = buf[pos:pos + size], pos + size
    else:
      raise ValueError(f'unsupported protobuf wire type {wire}')
    if pos > len(buf):
      raise ValueError('truncated protobuf field')
    yield field, wire, value


def _decode_event(buf: bytes) -> dict:
  event = {'wall_time': 0.0, 'step': 0, 'file_version': None, 'values': []}
  for field, wire, value in _fields(buf):
    if field == 1 and wire == 1:
      event['wall_time'] = struct.unpack('<d', value)[0]
    elif field == 2 and wire == 0:
      event['step'] = value - (1 << 64) if value >= 1 << 63 else value
    elif field == 3 and wire == 2:
      event['file_version'] = value.decode('utf-8')
    elif field == 5 and wire == 2:
      for f, w, v in _fields(value):
        if f == 1 and w == 2:
          tag, simple = '', None
          for vf, vw, vv in _fields(v):
            if vf == 1 and vw == 2:
              tag = vv.decode('utf-8')
            elif vf == 2 and vw == 5:
              simple = struct.unpack('<f', vv)[0]
          if simple is not None:  # images, histograms, tensors ... are not scalars we can read
            event['values'].append((tag, simple))
  return event


# ---- writing ----

class SummaryWriter:
  """Appends scalar summaries to a new event file in `logdir`.

  Records are buffered and written out by `flush()`, `close()`, or on their own once `max_queue`
  records are pending or `flush_secs` have passed since the last write-out (so a live TensorBoard sees
  progress without a flush per step).
  """

  def __init__(self, logdir, max_queue: int = 1000, flush_secs: float = 120.0):
    self.logdir = pathlib.Path(logdir)
    self.logdir.mkdir(parents=True, exist_ok=True)
    base = self.logdir / f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}'
    self.path, n = base, 0
    while True:  # 'x' never clobbers: two writers started in the same second get distinct files
      try:
        self._file = open(self.path, 'xb')
        break
      except FileExistsError:
        n += 1
        self.path = base.with_name(f'{base.name}.{n}')
    self._max_queue, self._flush_secs = max_queue, flush_secs
    self._pending: List[bytes] = []
    self._last_flush = time.monotonic()
    # TensorBoard reads the version from the first record; written at once so the file is valid.
    self._pending.append(_record(_encode_event(time.time(), file_version=FILE_VERSION)))
    self.flush()

  def scalar(self, tag: str, value: float, step: int) -> None:
    """Logs one scalar (stored as float32, as TensorBoard's `simple_value` is)."""
    self.scalars({tag: value}, step)

  def scalars(self, values: Dict[str, float], step: int) -> None:
    """Logs several scalars at one step, as a single event."""
    if self._file is None:
      raise ValueError('SummaryWriter is closed')
    if not values:
      return
    for tag in values:
      if not isinstance(tag, str):
        raise TypeError(f'tags must be str, got {type(tag).__name__}')
    # float()/int() accept numpy and jax scalars too, and fail loudly on non-scalar arrays.
    event = _encode_event(time.time(), int(step), values=[(t, float(v)) for t, v in values.items()])
    self._pending.append(_record(event))
    if (len(self._pending) >= self._max_queue or
        time.monotonic() - self._last_flush >= self._flush_secs):
      self.flush()

  def flush(self) -> None:
    """Writes out pending records and flushes the OS-level file buffer."""
    if self._file is None:
      return
    if self._pending:
      self._file.write(b''.join(self._pending))  # whole records only, so readers never see half of one
      self._pending.clear()
    self._file.flush()
    self._last_flush = time.monotonic()

  def close(self) -> None:
    """Flushes and closes; further `scalar` calls raise. Safe to call twice."""
    if self._file is not None:
      self.flush()
      self._file.close()
      self._file = None

  def __enter__(self) -> 'SummaryWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# ---- reading ----

def _event_files(path) -> List[pathlib.Path]:
  path = pathlib.Path(path)
  if path.is_dir():
    return sorted(p for p in path.iterdir() if 'tfevents' in p.name and p.is_file())
  return [path]


def read_events(path) -> List[dict]:
  """Every event of a file (or of all event files in a directory, by name, i.e. by creation second).

  Each event is {'wall_time', 'step', 'file_version', 'values': [(tag, simple_value), ...]}. Raises
  ValueError on a CRC mismatch or a truncated record.
  """
  events = []
  for file in _event_files(path):
    data = file.read_bytes()
    pos = 0
    while pos < len(data):
      if pos + 12 > len(data):
        raise ValueError(f'{file}: truncated record header at byte {pos}')
      length_bytes = data[pos:pos + 8]
      length, length_crc = struct.unpack('<QI', data[pos:pos + 12])
      # Checked before using the length, so a corrupt length can't send us off reading garbage.
      if masked_crc32c(length_bytes) != length_crc:
        raise ValueError(f'{file}: length CRC mismatch at byte {pos}')
      start, end = pos + 12, pos + 12 + length
      if end + 4 > len(data):
        raise ValueError(f'{file}: truncated record at byte {pos}')
      record = data[start:end]
      if masked_crc32c(record) != struct.unpack('<I', data[end:end + 4])[0]:
        raise ValueError(f'{file}: data CRC mismatch at byte {pos}')
      events.append(_decode_event(record))
      pos = end + 4
  return events


def read_scalars(path) -> List[Tuple[int, str, float]]:
  """All (step, tag, value) scalars of an event file (or a directory of them), in file order."""
  return [(e['step'], tag, value) for e in read_events(path) for tag, value in e['values']]
