"""The VIAR-vs-VAR study (viar_jax.eval.study): aggregation, dominance verdicts, the resumable skip,
and one tiny study end to end."""
import importlib.util
import json
import pathlib
import statistics

import pytest

from configs import digits
from viar_jax import plotting
from viar_jax.eval import quality_curve, study
from viar_jax.io import checkpoint
from viar_jax.models import factory, vqvae


def point(model, depth, speed, fid, std=0.0, params=100_000, width=128, schedule=None):
  """A hand-made aggregated point (only what the verdicts read)."""
  schedule = schedule or ('-' if model == 'VAR' else '4')
  return {'model': model, 'width': width, 'depth': depth, 'schedule': schedule,
          'images_per_s': speed, 'params': params, 'digits_fid': fid, 'digits_fid_std': std}


# --- aggregation ------------------------------------------------------------------------------------


def record(seed, fid, acc, model='VAR', schedule='-', speed=500.0):
  return {'model': model, 'width': 64, 'depth': 2, 'seed': seed, 'schedule': schedule,
          'iters': None, 'params': 1234, 'train_flops': 5e9, 'layout': '2', 'train_s': 10.0 + seed,
          'digits_fid': fid, 'class_accuracy': acc, 'images_per_s': speed, 'memory_bytes': 1}


def test_aggregate_mean_and_sample_std_over_seeds():
  records = [record(0, 10.0, 0.8), record(1, 12.0, 0.9), record(2, 14.0, 1.0),
             record(0, 30.0, 0.5, model='VIAR', schedule='4', speed=300.0)]
  points = study.aggregate(records)
  assert [(p['model'], p['seeds']) for p in points] == [('VAR', [0, 1, 2]), ('VIAR', [0])]
  var, viar = points
  assert var['digits_fid'] == pytest.approx(12.0) and var['digits_fid_std'] == pytest.approx(2.0)
  assert var['class_accuracy'] == pytest.approx(0.9)
  assert var['class_accuracy_std'] == pytest.approx(statistics.stdev([0.8, 0.9, 1.0]))
  assert var['train_s'] == pytest.approx(11.0) and var['train_gflops'] == pytest.approx(5.0)
  assert var['label'] == 'd2' and viar['label'] == '4'
  assert viar['digits_fid_std'] == 0.0  # one seed: no spread, not NaN
  assert study.mean_std([3.0]) == (3.0, 0.0)


# --- dominance ----------------------------------------------------------------------------------------


def test_viar_dominates_when_every_var_point_is_covered():
  var = [point('VAR', 1, 600, 20.0), point('VAR', 4, 300, 10.0, std=1.0)]
  viar = [point('VIAR', 4, 650, 19.0, schedule='1'), point('VIAR', 4, 320, 10.5, schedule='4')]
  pairs = study.dominance(var, viar, 'images_per_s')
  # VAR d4 (10.0 ± 1.0) is covered by VIAR 4 (10.5): worse, but within the larger std.
  assert [u['schedule'] for _, u in pairs] == ['1', '4']
  line = study.dominance_verdict('At width 128', var, viar, 'images_per_s')
  assert line.startswith('At width 128 VIAR dominates VAR in speed')


def test_viar_does_not_dominate_and_the_verdict_names_the_uncovered_var_point():
  var = [point('VAR', 1, 600, 20.0), point('VAR', 2, 500, 12.0, std=0.5)]
  viar = [point('VIAR', 4, 650, 19.0, schedule='1'), point('VIAR', 4, 450, 11.0, schedule='4'),
          point('VIAR', 4, 700, 13.0, std=0.4, schedule='0')]  # fast, but FID 13 > 12 + 0.5
  pairs = study.dominance(var, viar, 'images_per_s')
  assert pairs[0][1]['schedule'] == '0' and pairs[1][1] is None  # VIAR 4 is better but slower
  line = study.dominance_verdict('At width 64', var, viar, 'images_per_s')
  assert line.startswith('At width 64 VIAR does not dominate VAR in speed (images/s): VAR d2')
  assert 'VAR d1' not in line


def test_parameter_dominance_and_the_parameter_match():
  var = [point('VAR', 1, 600, 20.0, params=100), point('VAR', 4, 300, 10.0, params=400)]
  viar = [point('VIAR', 4, 500, 15.0, params=150, schedule='1'),
          point('VIAR', 4, 250, 9.0, params=150, schedule='8')]
  # VAR d1 is smaller than VIAR: uncovered; VAR d4 is covered by VIAR 8 (fewer params, better FID).
  assert [u and u['schedule'] for _, u in study.dominance(var, viar, 'params')] == [None, '8']
  smaller = [dict(p, params=90) for p in viar]
  assert 'VIAR dominates VAR in parameters' in study.dominance_verdict('x', var, smaller, 'params')
  best, matched = study.param_matches(var, viar)
  assert best['schedule'] == '8' and matched['depth'] == 4
  assert 'with 38 % of its parameters' in study.param_verdict('At width 128', var, viar)
  bigger = [dict(p, params=1000) for p in viar]  # more params than any VAR: covers nothing
  assert 'does not dominate VAR in parameters' in study.dominance_verdict('x', var, bigger, 'params')
  worse = [dict(p, digits_fid=25.0) for p in viar]
  assert 'matches no VAR' in study.param_verdict('x', var, worse)


def test_verdicts_cover_each_width_and_all_widths():
  points = [point('VAR', 1, 600, 20.0, width=w) for w in (64, 128)] + [
      point('VIAR', 4, 700, 19.0, width=w, schedule='1') for w in (64, 128)]
  lines = study.verdicts(points)
  assert len(lines) == 9  # (speed, params, match) x (64, 128, all)
  assert lines[0].startswith('At width 64 VIAR dominates VAR in speed')
  assert lines[6].startswith('Over all widths together')


def test_study_plot_writes_a_two_panel_png(tmp_path):
  pytest.importorskip('matplotlib', reason="the `plot` extra: pip install 'viar-jax[plot]'")
  from PIL import Image  # pylint: disable=import-outside-toplevel
  points = [dict(point(m, d, speed, fid, std=1.0, width=w, schedule=sch), class_accuracy=0.9,
                 class_accuracy_std=0.02, label=sch if m == 'VIAR' else f'd{d}')
            for w in (64, 128) for m, d, speed, fid, sch in (
                ('VAR', 1, 600, 20.0, '-'), ('VAR', 2, 400, 15.0, '-'), ('VIAR', 4, 500, 14.0, '1'),
                ('VIAR', 4, 300, 12.0, '4'))]
  path = plotting.study_curves(tmp_path / 'study.png', points, x='params', xlabel='params',
                               panels=[('digits_fid', 'FID'), ('class_accuracy', 'acc')],
                               floors={'digits_fid': 5.0}, log_x=True)
  with Image.open(path) as im:
    assert im.format == 'PNG' and im.size[0] > 1.5 * im.size[1]  # two panels side by side
  with pytest.raises(ValueError, match='at least one panel'):
    plotting.study_curves(tmp_path / 'none.png', points, x='params', xlabel='params', panels=[])


# --- runs and resumption ----------------------------------------------------------------------------


def test_run_specs_names_and_configs(tmp_path):
  specs = study.run_specs([64, 128], [1, 2], viar_depth=4, seeds=[0, 1])
  assert len(specs) == 12 and specs[0].seed == 0 and specs[-1].seed == 1  # seed-major
  assert [s.name for s in specs[:3]] == ['var_w64_d1_s0', 'var_w64_d2_s0', 'viar_w64_d4_s0']
  viar = specs[2]
  c = study.run_config_for(digits.get_config(), viar, steps=7, train_batch=32, tokenizer_dir=tmp_path)
  assert (c.model.implicit, c.model.embed_dim, c.model.num_heads, c.seed) == (True, 64, 1, 0)
  assert (c.optim.steps, c.optim.batch_size, c.sample_every, c.tokenizer.ckpt) == (
      7, 32, 0, str(tmp_path))
  assert [study.num_heads(w) for w in (32, 64, 128, 256)] == [1, 1, 2, 4]
  with pytest.raises(ValueError, match='need widths'):
    study.run_specs([], [1], 4, [0])


def test_compute_facts_count_params_and_training_flops():
  base = digits.get_config()
  vae_cfg = vqvae.VQVAEConfig(**dict(base.tokenizer.vqvae))
  facts = {s.name: study.compute_facts(study.run_config_for(base, s, 100, 64, ''), vae_cfg)
           for s in study.run_specs([64], [1, 2], viar_depth=4, seeds=[0])}
  d1, d2, viar = facts['var_w64_d1_s0'], facts['var_w64_d2_s0'], facts['viar_w64_d4_s0']
  assert d1['params'] < d2['params'] and d1['train_flops'] < d2['train_flops']
  assert (d1['layout'], viar['layout']) == ('1', '1+i+1')
  # VIAR's three blocks: more params than VAR d2; its implicit block runs K + m times a step.
  assert viar['params'] > d2['params'] and viar['train_flops'] > 1.5 * d2['train_flops']


def test_a_run_with_model_is_not_trained_again(tmp_path):
  specs = study.run_specs([32], [1], viar_depth=4, seeds=[0])
  calls = []

  def fake_train(c, workdir, stop=None):
    calls.append(workdir.name)
    (workdir / 'model').mkdir(parents=True)
    (workdir / 'train_metrics.jsonl').write_text(json.dumps({'loss': 1.5, 'steps_per_s': 2}) + '\n')

  configs = {s: study.run_config_for(digits.get_config(), s, 10, 64, 'tok') for s in specs}
  assert study.train_all(specs, configs, tmp_path, None, 0.0, train=fake_train)
  assert calls == ['var_w32_d1_s0', 'viar_w32_d4_s0']
  facts = json.loads((tmp_path / 'runs' / 'var_w32_d1_s0' / study.TRAIN_FILE).read_text())
  assert facts['final_loss'] == 1.5 and facts['train_s'] >= 0 and not facts['resumed']
  assert facts['recipe'] == {'steps': 10, 'batch_size': 64, 'seed': 0,
                            'tokenizer': str(pathlib.Path('tok').resolve())}
  assert study.train_all(specs, configs, tmp_path, None, 0.0, train=fake_train)
  assert len(calls) == 2  # the second call (a resumed study) trains nothing
  # A finished run of another recipe is not silently reused.
  longer = {s: study.run_config_for(digits.get_config(), s, 20, 64, 'tok') for s in specs}
  with pytest.raises(ValueError, match='was trained with'):
    study.train_all(specs, longer, tmp_path, None, 0.0, train=fake_train)


def test_a_run_stopped_early_stops_the_study(tmp_path):
  specs = study.run_specs([32], [1], viar_depth=4, seeds=[0])
  stopped = lambda c, workdir, stop=None: workdir.mkdir(parents=True)  # no model/: stopped early
  configs = {s: study.run_config_for(digits.get_config(), s, 10, 64, 'tok') for s in specs}
  assert not study.train_all(specs, configs, tmp_path, None, 0.0, train=stopped)
  assert not (tmp_path / 'runs' / 'viar_w32_d4_s0').exists()  # the next run did not start


def test_the_evaluation_cache_is_keyed_by_the_settings(tmp_path):
  path = tmp_path / study.EVAL_FILE
  settings = {'per_class': 10, 'options': {'cfg': 1.5}}
  path.write_text(json.dumps({'settings': settings, 'rows': {'4': {'digits_fid': 3.0}}}))
  assert study.load_cache(path, settings) == {'4': {'digits_fid': 3.0}}
  assert study.load_cache(path, dict(settings, per_class=20)) == {}
  assert study.load_cache(tmp_path / 'missing.json', settings) == {}


# --- end to end ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures('fast_compiles')  # plumbing, not numerics
def test_tiny_study_end_to_end_and_resumed(digits_evaluator, data_dir, tmp_path, monkeypatch):
  # A random 2-scale tokenizer (1, 4): the sampler's and train step's compile time grows with scales.
  vae_cfg = vqvae.VQVAEConfig(vocab_size=16, z_channels=4, ch=32, ch_mult=(1, 1), num_res_blocks=1,
                              image_size=8, patch_nums=(1, 4), using_sa=False, using_mid_sa=False)
  checkpoint.save(tmp_path / 'tok', factory.random_params(vae_cfg), vae_cfg)
  base = digits.get_config()
  base.data.data_dir = str(data_dir)
  base.optim.warmup_steps = 1
  base.mesh.data = 8  # the 8 simulated devices; batch 8 = 1 per device
  # One seed keeps it short (the spread over seeds is test_aggregate's); two VIAR rows.
  args = dict(widths=[32], var_depths=[1], viar_schedules=['1', '2'], seeds=[3], steps=2,
              per_class=1, batch=10, tokenizer_ckpt=str(tmp_path / 'tok'), base_config=base,
              evaluator=digits_evaluator, train_batch=8, repeats=2)
  points = study.run(tmp_path / 'out', **args)

  assert sorted((p['model'], p['schedule'], p['seeds']) for p in points) == [
      ('VAR', '-', [3]), ('VIAR', '1', [3]), ('VIAR', '2', [3])]
  assert sorted(p.name for p in (tmp_path / 'out' / 'runs').iterdir()) == [
      'var_w32_d1_s3', 'viar_w32_d4_s3']
  assert json.loads((tmp_path / 'out' / 'runs' / 'var_w32_d1_s3' / 'model' / 'config.json').read_text(
      ))['config']['embed_dim'] == 32
  viar = [p for p in points if p['model'] == 'VIAR']
  assert viar[0]['params'] == viar[1]['params'] != points[0]['params']
  assert sorted(p.name for p in (tmp_path / 'out' / 'grids').iterdir()) == [
      'var_w32_d1_var.png', 'viar_w32_d4_viar_1.png', 'viar_w32_d4_viar_2.png']
  assert all(p['images_per_s'] > 0 and p['train_gflops'] > 0 and p['train_s'] > 0 for p in points)
  md = (tmp_path / 'out' / 'study.md').read_text()
  assert '| VIAR | 32 | 1+i+1 | 2 |' in md and 'At width 32 VIAR' in md
  saved = json.loads((tmp_path / 'out' / 'study.json').read_text())
  assert len(saved['records']) == 3 and len(saved['verdicts']) == 3
  assert saved['settings']['steps'] == 2 and saved['settings']['train_batch'] == 8
  if importlib.util.find_spec('matplotlib'):  # the plots need the `plot` extra
    for name in ('study_fid_vs_speed.png', 'study_fid_vs_params.png'):
      assert (tmp_path / 'out' / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

  # Resumed: nothing is trained or sampled for quality again; only the speed is measured anew.
  def fail(*a, **k):
    raise AssertionError('a finished study trains / samples nothing again')
  monkeypatch.setattr(quality_curve, 'sample_row', fail)
  again = study.run(tmp_path / 'out', **args, train=fail)
  quality = lambda ps: sorted((p['schedule'], p['digits_fid'], p['class_accuracy']) for p in ps)
  assert quality(again) == quality(points)
