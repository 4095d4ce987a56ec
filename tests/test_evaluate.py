"""Evaluation and the quality curve (viar_jax.eval) end to end on real digits and tiny random models."""
import importlib.util
import json
import statistics

import jax
import numpy as np
import pytest

from viar_jax.eval import digits_eval, evaluate, quality_curve
from viar_jax.io import checkpoint
from viar_jax.models import factory, transformer, vqvae
from viar_jax.sample import sampler

pytestmark = pytest.mark.usefixtures('fast_compiles')  # plumbing, not numerics

# 8x8 images like the digits (latent 4x4), as small as the modules allow; two scales 1-4 because
# the sampler's compile time grows with the number of scales.
VAE = vqvae.VQVAEConfig(vocab_size=16, z_channels=4, ch=32, ch_mult=(1, 1), num_res_blocks=1,
                        image_size=8, patch_nums=(1, 4), using_sa=False, using_mid_sa=False)
TINY = dict(depth=2, embed_dim=32, num_heads=1, num_classes=10, patch_nums=(1, 4), vocab_size=16,
            z_channels=4)
VIAR = transformer.TransformerConfig(**TINY, implicit=True, pre_depth=1, post_depth=0, eval_iters=2)
VAR = transformer.TransformerConfig(**TINY)


@pytest.fixture(scope='module')
def workdirs(tmp_path_factory):
  """Training-workdir layout (model/, tokenizer/) with random weights, VIAR and VAR."""
  root = tmp_path_factory.mktemp('runs')
  dirs = {}
  checkpoint.save(root / 'viar' / 'tokenizer', factory.random_params(VAE), VAE)
  for name, cfg in (('viar', VIAR), ('var', VAR)):  # the VAR run shares the VIAR's tokenizer
    checkpoint.save(root / name / 'model', factory.random_params(cfg), cfg)
    dirs[name] = root / name
  return dirs


def test_real_test_digits_npz_gives_the_classifier_accuracy(digits_evaluator, data_dir, tmp_path):
  images, labels = digits_eval.load_split('test', data_dir)
  np.savez(tmp_path / 'real.npz', arr_0=images, arr_1=labels)
  report = evaluate.run(tmp_path / 'out', ['digits'], samples=str(tmp_path / 'real.npz'),
                        digits_evaluator=digits_evaluator)
  saved = json.loads((tmp_path / 'out' / 'metrics.json').read_text())
  assert saved == json.loads(json.dumps(report))
  digits = saved['metrics']['digits']
  assert digits['class_accuracy'] == digits['classifier_test_accuracy'] >= 0.97
  assert abs(digits['digits_fid']) < 1e-6 and 0 < digits['reference_fid_train_vs_test'] < 10
  assert saved['num_images'] == 297 and saved['source'] == {'samples': str(tmp_path / 'real.npz')}


@pytest.mark.slow
def test_sampling_path_runs_end_to_end(workdirs, digits_evaluator, tmp_path):
  options = sampler.SampleOptions(top_k=0, top_p=0.0, iters=(2, 1))
  args = dict(vae_ckpt=workdirs['viar'] / 'tokenizer', model_ckpt=workdirs['viar'] / 'model',
              classes=[], per_class=1, batch=1, options=options, seed=0)
  report = evaluate.run(tmp_path, ['digits'], sample_args=args, digits_evaluator=digits_evaluator)
  assert (tmp_path / 'metrics.json').exists() and (tmp_path / 'samples.npz').exists()
  assert report['num_images'] == 10 and report['image_shape'] == [8, 8, 3]
  with np.load(tmp_path / 'samples.npz') as z:  # the report scores exactly the samples it wrote
    images, labels = z['arr_0'], z['arr_1']
  digits = report['metrics']['digits']
  assert digits['class_accuracy'] == digits_evaluator.class_accuracy(images, labels)
  assert digits['digits_fid'] == pytest.approx(digits_evaluator.fid(images), rel=1e-6)
  assert report['source']['options']['iters'] == (2, 1)

  # Killed after its first call (8 devices x 1 image): the last 2 images are sampled again and the
  # metrics come out the same.
  shards = sorted((tmp_path / 'shards').glob('*.npz'))
  assert [p.name for p in shards] == ['00000000-8-p0.npz', '00000008-2-p0.npz']
  for path in (shards[1], tmp_path / 'samples.npz', tmp_path / 'metrics.json'):
    path.unlink()
  resumed = evaluate.run(tmp_path, ['digits'], sample_args=args, digits_evaluator=digits_evaluator)
  assert resumed['metrics'] == report['metrics']
  assert json.loads((tmp_path / 'stats.json').read_text())['sampled_now'] == 2


def test_adm_metrics_with_a_stand_in_embedder():
  rng = np.random.default_rng(0)
  embed = lambda images: (rng.normal(size=(len(images), 6)), rng.normal(size=(len(images), 5)),
                          rng.normal(size=(len(images), 4)))
  images = np.zeros((12, 8, 8, 3), np.uint8)
  with_images = evaluate.adm_metrics(images, embed, {'images': images})
  assert set(with_images) >= {'fid', 'sfid', 'inception_score', 'precision', 'recall'}
  stats_only = {'mu': np.zeros(6), 'sigma': np.eye(6), 'mu_s': np.zeros(5), 'sigma_s': np.eye(5)}
  scores = evaluate.adm_metrics(images, embed, stats_only)
  assert scores['precision'] is None and np.isfinite(scores['fid'])


def test_bad_inputs_fail_clearly(workdirs, tmp_path):
  np.savez(tmp_path / 'nolabels.npz', arr_0=np.zeros((3, 8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match='no arr_1 labels'):
    evaluate.run(tmp_path, ['digits'], samples=str(tmp_path / 'nolabels.npz'))
  with pytest.raises(ValueError, match='--inception_weights'):
    evaluate.run(tmp_path, ['adm'], samples=str(tmp_path / 'nolabels.npz'))
  with pytest.raises(FileNotFoundError, match='--ref_batch'):
    evaluate.check_adm_inputs(str(tmp_path / 'nolabels.npz'), str(tmp_path / 'missing.npz'))
  with pytest.raises(ValueError, match='--metrics must name'):
    evaluate.check_metric_names(['fid'])
  with pytest.raises(FileNotFoundError, match='not found'):
    evaluate.load_samples(tmp_path / 'missing.npz')
  with pytest.raises(ValueError, match='expected VIAR'):
    quality_curve.load_run(workdirs['var'], implicit=True,
                           tokenizer_dir=workdirs['viar'] / 'tokenizer')
  with pytest.raises(FileNotFoundError, match='not a viar-jax checkpoint'):
    quality_curve.load_run(workdirs['var'], implicit=False)


@pytest.mark.slow
def test_quality_curve_on_tiny_viar_and_var(workdirs, digits_evaluator, tmp_path):
  rows = quality_curve.run(workdirs['viar'], workdirs['var'], tmp_path, per_class=1,
                           schedules=['1', '2,1'], batch=10, repeats=1, evaluator=digits_evaluator)
  assert [(r['model'], r['schedule'], r['iters']) for r in rows] == [
      ('VIAR', '1', [1, 1]), ('VIAR', '2->1', [2, 1]), ('VAR', '-', None)]
  for r, cfg in zip(rows, (VIAR, VIAR, VAR)):
    assert r['images_per_s'] == pytest.approx(10 / statistics.median(r['times_s']))
    mem = r['compiled_memory']  # XLA's: arguments + outputs + temp - aliased
    assert r['memory_bytes'] == mem['argument'] + mem['output'] + mem['temp'] - mem['alias']
    model_bytes = sum(int(np.prod(p.shape)) * p.dtype.itemsize
                      for p in jax.tree.leaves(factory.abstract_params(cfg)))
    assert mem['argument'] > model_bytes  # the params are sampler arguments
    assert np.isfinite(r['digits_fid'])
  md = (tmp_path / 'quality_curve.md').read_text()
  assert '| VIAR | 2->1 | 2,1 |' in md and '| VAR | - | - |' in md
  saved = json.loads((tmp_path / 'quality_curve.json').read_text())
  assert len(saved['rows']) == 3 and saved['settings']['num_images'] == 10
  if importlib.util.find_spec('matplotlib'):  # the plot needs the `plot` extra
    assert (tmp_path / 'quality_curve.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert sorted(p.name for p in (tmp_path / 'grids').iterdir()) == [
      'var.png', 'viar_1.png', 'viar_2_to_1.png']


def test_quality_curve_rows_use_the_schedule_grammar():
  specs = quality_curve.row_specs(['1', '10,2', '3,2,1'], 3, with_var=True)
  assert [(s.model, s.schedule, s.iters) for s in specs] == [
      ('VIAR', '1', (1, 1, 1)), ('VIAR', '10->2', (10, 6, 2)), ('VIAR', '3,2,1', (3, 2, 1)),
      ('VAR', '-', None)]
  assert [quality_curve.row_slug(s) for s in specs] == ['viar_1', 'viar_10_to_2', 'viar_3_2_1', 'var']
  with pytest.raises(ValueError, match='>= 1 iteration'):
    quality_curve.row_specs(['0'], 3, with_var=False)
  with pytest.raises(ValueError, match='no VIAR schedules'):
    quality_curve.row_specs([], 3, with_var=False)
