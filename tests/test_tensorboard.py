"""TensorBoard scalars of a run (run_io.MetricLog, tensorboardX), read back by real TensorBoard."""
import math

import numpy as np
import pytest

import tb_events
from viar_jax.train import run_io

# (step, {tag: value}); values chosen to need float32 rounding, plus extremes and a huge step.
LOG = [
    (0, {'loss': 2.5, 'lr': 1e-4}),
    (1, {'loss': 0.1}),
    (7, {'loss': -3.3333333, 'grad_norm': 1e30}),
    (2**40, {'loss': np.float32(0.125), 'nan': float('nan'), 'big': 1e300}),
]


def expected_scalars(skip_non_finite: bool):
  """What `simple_value` (float32) holds; MetricLog drops non-finite values (1e300 is finite in
  float64, so it is written and saturates to inf)."""
  out = []
  with np.errstate(over='ignore'):
    for step, values in LOG:
      for tag, v in values.items():
        if skip_non_finite and not math.isfinite(float(v)):
          continue
        out.append((step, tag, float(np.float32(v))))
  return out


def assert_same(got, want):
  assert len(got) == len(want), (got, want)
  for (gs, gt, gv), (ws, wt, wv) in zip(got, want):
    assert (gs, gt) == (ws, wt)
    assert (np.isnan(gv) and np.isnan(wv)) or gv == wv, (gt, gv, wv)


def write_log(logdir):
  with run_io.scalar_writer(logdir) as w:
    for step, values in LOG:
      for tag, v in values.items():
        w.add_scalar(tag, v, step)


def test_round_trip_in_write_order(tmp_path):
  logdir = tmp_path / 'nested' / 'tb'  # must be created
  write_log(logdir)
  files = tb_events.event_files(logdir)
  assert len(files) == 1 and files[0].name.startswith('events.out.tfevents.')
  assert_same(tb_events.read_scalars(logdir), expected_scalars(skip_non_finite=False))


def test_same_second_writers_get_distinct_files(tmp_path):
  """A resumed run opens a new writer on the same directory, possibly in the same second."""
  writers = [run_io.scalar_writer(tmp_path) for _ in range(3)]
  for i, w in enumerate(writers):
    w.add_scalar('x', float(i), 0)
    w.close()
  assert len(tb_events.event_files(tmp_path)) == 3
  assert sorted(tb_events.read_scalars(tmp_path)) == [(0, 'x', 0.0), (0, 'x', 1.0), (0, 'x', 2.0)]


def test_metric_log_writes_jsonl_and_finite_scalars(tmp_path, capsys):
  log = run_io.MetricLog(tmp_path, total_steps=2**41, batch_size=4)
  for step, values in LOG:
    log.write(step, values)
  log.close()
  assert '[train] step 0/' in capsys.readouterr().out
  scalars = [s for s in tb_events.read_scalars(tmp_path / 'tensorboard' / 'train')
             if s[1] in {t for _, v in LOG for t in v}]  # without the rates MetricLog adds
  assert_same(scalars, expected_scalars(skip_non_finite=True))
  lines = (tmp_path / 'train_metrics.jsonl').read_text().splitlines()
  assert len(lines) == len(LOG)


def test_tensorboard_reads_our_files(tmp_path):
  """The accumulator TensorBoard's UI uses sees every tag with its steps and float32 values."""
  pytest.importorskip('tensorboard')
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  write_log(tmp_path)
  acc = event_accumulator.EventAccumulator(str(tmp_path))
  acc.Reload()
  want = expected_scalars(skip_non_finite=False)
  assert sorted(acc.Tags()['scalars']) == sorted({tag for _, tag, _ in want})
  for tag in acc.Tags()['scalars']:
    got = [(e.step, tag, e.value) for e in acc.Scalars(tag)]
    assert_same(got, [s for s in want if s[1] == tag])
