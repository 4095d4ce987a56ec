"""Smoke test of launch/benchmark.py in --quick mode (tiny VAR / VIAR, compiled in-process)."""
import json

import pytest

from launch import benchmark

pytestmark = pytest.mark.usefixtures('fast_compiles')  # plumbing, not numerics


def test_quick_benchmark_measures_every_row_and_writes_reports(tmp_path):
  # Two scales instead of --quick's four and one timed call per row: compiling the five samplers is
  # most of the cost, and the test checks plumbing, not stable throughput numbers.
  rows = benchmark.run(benchmark.parse_args(
      ['--quick', '--patch_nums', '1,2', '--repeats', '1', '--out', str(tmp_path)]))

  labels = [r['label'] for r in rows]
  assert labels == ['VAR'] + [f'VIAR {s} {m}' for s in ('2->2', '2->1')
                              for m in ('per_iteration', 'final_iterate')]
  for row in rows:
    assert row['images_per_s'] > 0, row['label']
    assert row['memory_bytes'] > 0 and row['compiled_total_bytes'] > 0, row['label']
    assert row['kv_cache']['allocated'] > 0, row['label']
  by_label = {r['label']: r for r in rows}
  # per_iteration keeps max(iters) = 2 implicit cache groups, final_iterate one.
  assert (by_label['VIAR 2->2 per_iteration']['kv_cache']['allocated']
          > by_label['VIAR 2->2 final_iterate']['kv_cache']['allocated'])

  assert '| VAR-d4 |' in (tmp_path / 'benchmark.md').read_text()
  report = json.loads((tmp_path / 'benchmark.json').read_text())
  assert [r['label'] for r in report['rows']] == labels
  assert len(report['targets']) == 2  # the 2->1 rows stand in for 10->2
