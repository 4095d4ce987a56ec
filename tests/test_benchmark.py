"""The sampling benchmark (viar_jax.bench.sampling) through launch.benchmark --quick."""
import json
import os
import statistics
import subprocess
import sys

import pytest

from viar_jax.bench import jfb_time, sampling

pytestmark = pytest.mark.usefixtures('fast_compiles')  # plumbing, not numerics


@pytest.mark.slow
def test_quick_benchmark_measures_every_row_and_writes_reports(tmp_path):
  # Two scales instead of --quick's four and one timed call per row: compiling the five samplers is
  # most of the cost, and the test checks plumbing, not stable throughput numbers. A subprocess, so
  # the launcher's absl flags are exercised too; unoptimised XLA as under `fast_compiles`.
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1')
  subprocess.run([sys.executable, '-m', 'launch.benchmark', '--quick', '--patch_nums', '1,2',
                  '--repeats', '1', '--noisolate', '--out', str(tmp_path)], check=True, env=env)
  report = json.loads((tmp_path / 'benchmark.json').read_text())
  rows, settings = report['rows'], report['settings']

  labels = [r['label'] for r in rows]
  assert labels == ['VAR'] + [f'VIAR {s} {m}' for s in ('2->2', '2->1')
                              for m in ('per_iteration', 'final_iterate')]
  for row in rows:
    assert row['images_per_s'] == pytest.approx(settings['batch'] / statistics.median(row['times_s']))
    mem = row['compiled_memory']  # without --isolate, memory is XLA's: args + outputs + temp - aliased
    assert row['memory_bytes'] == row['compiled_total_bytes'] == (
        mem['argument'] + mem['output'] + mem['temp'] - mem['alias']), row['label']
    assert mem['argument'] >= row['param_bytes'] > 0, row['label']  # the params are arguments
  by_label = {r['label']: r for r in rows}
  assert by_label['VAR']['speedup_vs_var'] == by_label['VAR']['memory_vs_var'] == 1.0
  # VAR: one K and one V buffer of (2B, L, C) per block (CFG doubles the batch).
  seq_len = sum(p * p for p in settings['patch_nums'])
  itemsize = {'float32': 4, 'bfloat16': 2, 'float16': 2}[settings['dtype']]
  assert by_label['VAR']['kv_cache']['allocated'] == (
      settings['depth'] * 2 * 2 * settings['batch'] * seq_len * settings['embed_dim'] * itemsize)
  # per_iteration keeps max(iters) = 2 implicit cache groups, final_iterate one.
  assert (by_label['VIAR 2->2 per_iteration']['kv_cache']['allocated']
          > by_label['VIAR 2->2 final_iterate']['kv_cache']['allocated'])

  assert '| VAR-d4 |' in (tmp_path / 'benchmark.md').read_text()
  # No --reference_src: the comparison table has JAX-only rows.
  comparison = report['comparison']
  assert [r['label'] for r in comparison['rows']] == [
      'VAR-d4 whole call incl. 32² decode', 'VQ-VAE decode alone', 'transformer part (difference)'] + [
      f'VIAR-d4 (1+1+1) {s} {m}, whole call' for s in ('2->2', '2->1')
      for m in ('per_iteration', 'final_iterate')]
  assert all(r['reference_s'] is None and r['ours_s'] > 0 for r in comparison['rows'][:2])
  assert '## Against the PyTorch reference' in (tmp_path / 'benchmark.md').read_text()
  assert report['settings']['patch_nums'] == [1, 2] and not report['settings']['isolate']
  assert len(report['targets']) == 2  # the 2->1 rows stand in for 10->2


def test_settings_check_their_arguments():
  settings = sampling.resolve(quick=True, patch_nums=['1', '2'], repeats=1)
  assert settings.patch_nums == (1, 2) and settings.image_size == 32 and settings.depth == 4
  with pytest.raises(ValueError, match='--repeats must be >= 1'):
    sampling.resolve(quick=True, repeats=0)
  with pytest.raises(ValueError, match='--dtype must be one of'):
    sampling.resolve(quick=True, dtype='float64')


def test_preset_fills_the_d16_shapes_and_flags_override_it(tmp_path):
  s = sampling.resolve(preset='var_d16_cpu')
  assert (s.depth, s.embed_dim, s.num_heads, s.batch, s.dtype, s.vae_ch, s.vocab_size, s.image_size,
          s.pre_depth, s.post_depth) == (16, 1024, 16, 4, 'float32', 160, 4096, 256, 3, 3)
  assert s.schedules == ((10, 10), (10, 2)) and s.cache_modes == ('per_iteration',)
  assert [r.label for r in sampling.row_specs(s)] == [
      'VAR', 'VIAR 10->10 per_iteration', 'VIAR 10->2 per_iteration']
  assert sampling.resolve(preset='var_d16_cpu', batch=2).batch == 2
  with pytest.raises(ValueError, match='--preset must be one of'):
    sampling.resolve(preset='var_d99')
  # Sources that do not import (or no torch): no reference, JAX-only rows, and a line saying why.
  reference, line = sampling.load_reference(s, str(tmp_path))
  assert reference is None and 'unavailable' in line


def test_jfb_time_table_at_tiny_shapes(capsys):
  """The JFB timing script runs both programs at every m and reports ratios to m_max (no timing
  target here: performance targets live in the script's output, see launch.bench_jfb_time)."""
  rows = jfb_time.run(embed_dim=64, batch=1, repeats=1, m_values=(1, 12))
  assert [(r['program'], r['with_grad_iters']) for r in rows] == [
      ('implicit layer', 1), ('implicit layer', 12), ('VIAR step', 1), ('VIAR step', 12)]
  for r in rows:
    assert r['seconds'] > 0
    assert r['vs_m_max'] == (1.0 if r['with_grad_iters'] == 12 else
                             r['seconds'] / next(q['seconds'] for q in rows if
                                                 q['program'] == r['program'] and q['with_grad_iters'] == 12))
  assert 'implicit layer' in capsys.readouterr().out
