"""TensorBoard event files: CRC-32C check values, exact proto bytes, write/read round trip, corruption."""
import struct

import numpy as np
import pytest

from viar_jax import tensorboard as tb

# (step, {tag: value}); values chosen to need float32 rounding, plus extremes and a negative step.
LOG = [
    (0, {'train/loss': 2.5, 'lr': 1e-4}),
    (1, {'train/loss': 0.1}),
    (7, {'train/loss': -3.3333333, 'grad_norm': 1e30}),
    (2**40, {'train/loss': np.float32(0.125), 'nan': float('nan'), 'big': 1e300}),
    (-1, {'ünï/tag': float('-inf')}),
]


def expected_scalars():
  # float32 cast: what `simple_value` can hold (1e300 saturates to inf).
  with np.errstate(over='ignore'):
    return [(step, tag, float(np.float32(v))) for step, values in LOG for tag, v in values.items()]


def assert_same(got, want):
  assert len(got) == len(want)
  for (gs, gt, gv), (ws, wt, wv) in zip(got, want):
    assert (gs, gt) == (ws, wt)
    assert (np.isnan(gv) and np.isnan(wv)) or gv == wv, (gt, gv, wv)


def write_log(logdir):
  with tb.SummaryWriter(logdir) as w:
    for step, values in LOG:
      if len(values) == 1:
        (tag, v), = values.items()
        w.scalar(tag, v, step)
      else:
        w.scalars(values, step)
  return w.path


def test_crc32c_check_values():
  assert tb.crc32c(b'123456789') == 0xE3069283  # the standard CRC-32C check value
  # RFC 3720 (iSCSI) appendix B.4 vectors.
  assert tb.crc32c(bytes(32)) == 0x8A9136AA
  assert tb.crc32c(b'\xff' * 32) == 0x62A8AB43
  assert tb.crc32c(bytes(range(32))) == 0x46DD794E
  assert tb.crc32c(b'') == 0


def test_masked_crc_formula():
  crc = tb.crc32c(b'foo')
  rotated = ((crc >> 15) | (crc << 17)) & 0xFFFFFFFF
  assert tb.masked_crc32c(b'foo') == (rotated + 0xA282EAD8) % 2**32


def test_event_bytes_match_hand_encoding():
  # Event{wall_time=1.5 (field 1, fixed64), step=3 (field 2, varint),
  #       summary (field 5) {value (field 1) {tag='a' (field 1), simple_value=1.0 (field 2, fixed32)}}}
  value = b'\x0a\x01a' + b'\x15' + struct.pack('<f', 1.0)
  summary = b'\x0a' + bytes([len(value)]) + value
  want = b'\x09' + struct.pack('<d', 1.5) + b'\x10\x03' + b'\x2a' + bytes([len(summary)]) + summary
  assert tb._encode_event(1.5, 3, values=[('a', 1.0)]) == want
  # file_version is field 3, length-delimited.
  assert tb._encode_event(0.0, file_version='v') == b'\x09' + bytes(8) + b'\x1a\x01v'
  # int64 negatives are 10-byte two's complement varints.
  assert tb._encode_event(0.0, -1)[9:] == b'\x10' + b'\xff' * 9 + b'\x01'


def test_round_trip(tmp_path):
  logdir = tmp_path / 'nested' / 'tb'  # must be created
  path = write_log(logdir)
  assert path.parent == logdir
  assert path.name.startswith('events.out.tfevents.')
  events = tb.read_events(path)
  assert events[0]['file_version'] == 'brain.Event:2' and not events[0]['values']
  assert all(e['wall_time'] > 1.6e9 for e in events)
  assert len(events) == 1 + len(LOG)  # header + one event per scalar()/scalars() call
  assert_same(tb.read_scalars(path), expected_scalars())
  assert_same(tb.read_scalars(logdir), expected_scalars())  # a directory reads its event files


def test_buffered_until_flush(tmp_path):
  w = tb.SummaryWriter(tmp_path)
  assert tb.read_scalars(w.path) == []  # header already on disk, readable
  w.scalar('x', 1.0, 0)
  assert tb.read_scalars(w.path) == []  # buffered
  w.flush()
  assert tb.read_scalars(w.path) == [(0, 'x', 1.0)]
  w.scalar('x', 2.0, 1)
  w.close()
  w.close()  # idempotent
  assert tb.read_scalars(w.path) == [(0, 'x', 1.0), (1, 'x', 2.0)]
  with pytest.raises(ValueError, match='closed'):
    w.scalar('x', 3.0, 2)


def test_auto_flush_on_queue_size(tmp_path):
  with tb.SummaryWriter(tmp_path, max_queue=2) as w:
    w.scalar('x', 1.0, 0)
    w.scalar('x', 2.0, 1)
    assert len(tb.read_scalars(w.path)) == 2


def test_same_second_writers_get_distinct_files(tmp_path):
  with tb.SummaryWriter(tmp_path) as a, tb.SummaryWriter(tmp_path) as b, tb.SummaryWriter(tmp_path) as c:
    a.scalar('a', 1.0, 0)
    b.scalar('b', 2.0, 0)
    c.scalar('c', 3.0, 0)
  assert len({a.path, b.path, c.path}) == 3
  assert sorted(tb.read_scalars(tmp_path)) == [(0, 'a', 1.0), (0, 'b', 2.0), (0, 'c', 3.0)]


def test_every_flipped_byte_is_detected(tmp_path):
  path = write_log(tmp_path)
  data = path.read_bytes()
  bad = tmp_path / 'bad'
  bad.mkdir()
  bad = bad / path.name
  for i in range(len(data)):  # CRC-32 catches every burst error of up to 32 bits, so any single byte
    corrupt = bytearray(data)
    corrupt[i] ^= 0x40
    bad.write_bytes(bytes(corrupt))
    with pytest.raises(ValueError):
      tb.read_scalars(bad)


def test_truncated_file_raises(tmp_path):
  path = write_log(tmp_path)
  path.write_bytes(path.read_bytes()[:-3])
  with pytest.raises(ValueError, match='truncated'):
    tb.read_scalars(path)


def test_rejects_non_str_tags_and_array_values(tmp_path):
  with tb.SummaryWriter(tmp_path) as w:
    with pytest.raises(TypeError):
      w.scalars({1: 1.0}, 0)
    with pytest.raises(TypeError):
      w.scalar('x', np.ones(3), 0)
  assert tb.read_scalars(w.path) == []


def test_tensorboard_reads_our_file(tmp_path):
  pytest.importorskip('tensorboard')
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  write_log(tmp_path)
  acc = event_accumulator.EventAccumulator(str(tmp_path))
  acc.Reload()
  want = expected_scalars()
  assert sorted(acc.Tags()['scalars']) == sorted({tag for _, tag, _ in want})
  for tag in acc.Tags()['scalars']:
    got = [(e.step, tag, e.value) for e in acc.Scalars(tag)]
    assert_same(got, [s for s in want if s[1] == tag])
