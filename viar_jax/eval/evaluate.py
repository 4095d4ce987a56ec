"""Image-quality metrics of a samples.npz, or of fresh samples from VAR / VIAR checkpoints.

    report = evaluate.run('out/eval', ['digits'], samples='out/samples/samples.npz')
    report = evaluate.run('out/eval', ['digits', 'adm'], sample_args=dict(vae_ckpt=..., ...),
                          inception_weights=..., ref_batch=...)

Metric groups:
  digits  class accuracy (the digits classifier's agreement with the requested class) and digits-FID
          against the held-out test split, with the train-vs-test digits-FID as the real-data floor
          (viar_jax.eval.digits_eval; 8x8 images only).
  adm     FID / sFID / Inception Score / precision / recall as the ADM evaluator computes them
          (viar_jax.eval.metrics on viar_jax.eval.inception features). A reference batch with only
          statistics (no `arr_0` images) gives FID and sFID but no precision / recall.
Writes `<out>/metrics.json` and prints a markdown table.
"""
import json
import pathlib
import time
from typing import Dict, Optional, Sequence

import numpy as np

from viar_jax import runtime
from viar_jax.eval import digits_eval, inception, metrics
from viar_jax.io import npz
from viar_jax.sample import generate, pair

METRICS = ('digits', 'adm')


def load_samples(path, need_labels: bool = True):
  """-> (images uint8 (N, H, W, 3), memory-mapped where the file allows; labels (N,) int32 or None)
  from an ADM-style .npz."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f'samples file not found: {path}')
  with np.load(path) as z:
    if 'arr_0' not in z.files:
      raise ValueError(f'{path} has no arr_0 images (keys: {z.files})')
    labels = z['arr_1'] if 'arr_1' in z.files else None
  images = npz.images(path)  # memory-mapped: 50k ImageNet samples are 9.8 GB
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'{path}: arr_0 must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}')
  if need_labels and labels is None:
    raise ValueError(f'{path} has no arr_1 labels; class accuracy needs the requested class of every '
                     'image')
  if labels is not None and labels.shape != (len(images),):
    raise ValueError(f'{path}: arr_1 must hold one label per image, got shape {labels.shape} for '
                     f'{len(images)} images')
  return images, None if labels is None else labels.astype(np.int32)


def check_metric_names(names: Sequence[str]) -> tuple:
  names = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))
  unknown = [n for n in names if n not in METRICS]
  if unknown or not names:
    raise ValueError(f'--metrics must name some of {METRICS}, got {list(names) or "nothing"}')
  return names


def digits_metrics(images, labels, evaluator: digits_eval.DigitsEvaluator) -> Dict[str, float]:
  """Class accuracy, digits-FID vs the test split, and the real-data references."""
  test_images, test_labels = digits_eval.load_split('test', evaluator.data_dir)
  return {'class_accuracy': evaluator.class_accuracy(images, labels),
          'digits_fid': evaluator.fid(images),
          'reference_fid_train_vs_test': evaluator.reference_fid(),
          'classifier_test_accuracy': evaluator.class_accuracy(test_images, test_labels),
          'classifier': f'{digits_eval.VERSION} seed {evaluator.seed}'}


def adm_metrics(images, embed, reference: Dict[str, np.ndarray], seed: int = 0) -> Dict[str, float]:
  """ADM's metrics of `images` against a `metrics.load_reference` dict, features from `embed`.

  `embed(images) -> (pool, spatial, logits)`, e.g. `inception.make_embedder(params)`.
  """
  pool, spatial, logits = embed(images)
  splits = min(10, len(images))  # ADM's 10 splits; fewer for tiny smoke-test batches
  if 'images' in reference:
    ref_pool, ref_spatial, _ = embed(reference['images'])
    return metrics.adm_metrics(pool, spatial, logits, ref_pool=ref_pool, ref_spatial=ref_spatial,
                               ref_stats=reference, splits=splits, seed=seed)
  is_mean, is_std = metrics.inception_score(logits, splits=splits, seed=seed, from_logits=True)
  return {'fid': metrics.frechet_distance(*metrics.feature_stats(pool), reference['mu'],
                                          reference['sigma']),
          'sfid': metrics.frechet_distance(*metrics.feature_stats(spatial), reference['mu_s'],
                                           reference['sigma_s']),
          'inception_score': is_mean, 'inception_score_std': is_std,
          'precision': None, 'recall': None}  # need reference images, not just statistics


def check_adm_inputs(inception_weights: Optional[str], ref_batch: Optional[str]) -> None:
  """Fails before any sampling when the adm metrics cannot be computed."""
  if not inception_weights:
    raise ValueError('--metrics adm needs --inception_weights: pytorch-fid\'s '
                     f'pt_inception-2015-12-05-6726825d.pth ({inception.FID_WEIGHTS_URL}); nothing '
                     'is downloaded automatically')
  if not ref_batch:
    raise ValueError('--metrics adm needs --ref_batch, an ADM reference batch .npz (e.g. '
                     'VIRTUAL_imagenet256_labeled.npz)')
  for flag, path in (('--inception_weights', inception_weights), ('--ref_batch', ref_batch)):
    if not pathlib.Path(path).exists():
      raise FileNotFoundError(f'{flag} {path} does not exist')


def evaluate(images, labels, metric_names: Sequence[str], *,
             digits_evaluator: Optional[digits_eval.DigitsEvaluator] = None,
             inception_weights: Optional[str] = None, ref_batch: Optional[str] = None,
             inception_batch: int = 100, seed: int = 0) -> Dict[str, Dict]:
  """{'digits': {...}, 'adm': {...}} for the requested metric groups."""
  metric_names = check_metric_names(metric_names)
  results = {}
  if 'digits' in metric_names:
    if labels is None:
      raise ValueError('digits metrics need the requested labels of the images')
    evaluator = digits_evaluator or digits_eval.get_evaluator()
    results['digits'] = digits_metrics(images, labels, evaluator)
  if 'adm' in metric_names:
    check_adm_inputs(inception_weights, ref_batch)
    embed = inception.make_embedder(inception.load_fid_inception(inception_weights),
                                    batch_size=inception_batch, progress=True)
    results['adm'] = adm_metrics(images, embed, metrics.load_reference(ref_batch), seed)
  return results


def format_table(results: Dict[str, Dict]) -> str:
  lines = ['| metric | value |', '|---|---|']
  for group, values in results.items():
    for name, value in values.items():
      shown = f'{value:.4f}' if isinstance(value, float) else str(value)
      lines.append(f'| {group}/{name} | {shown} |')
  return '\n'.join(lines)


def run(out, metric_names: Sequence[str], *, samples: Optional[str] = None, sample_args=None,
        digits_evaluator: Optional[digits_eval.DigitsEvaluator] = None,
        inception_weights: Optional[str] = None, ref_batch: Optional[str] = None,
        inception_batch: int = 100, seed: int = 0) -> Dict:
  """Reads `samples` or, if None, calls `generate.generate(**sample_args, out=out)` first.

  sample_args: vae_ckpt, model_ckpt, classes, per_class, batch, options, seed.
  Writes `<out>/metrics.json`, prints the table, returns what it wrote (None on processes other
  than 0 of a multi-process run, which only sample).
  """
  metric_names = check_metric_names(metric_names)
  if 'adm' in metric_names:  # fail before spending time on sampling
    check_adm_inputs(inception_weights, ref_batch)
  if samples is None and sample_args and 'digits' in metric_names:
    size = pair.image_size(sample_args['vae_ckpt'], sample_args['model_ckpt'])
    if size != digits_eval.IMAGE_SIZE:
      raise ValueError(f'digits metrics need {digits_eval.IMAGE_SIZE}x{digits_eval.IMAGE_SIZE} '
                       f'images; {sample_args["model_ckpt"]} samples {size}x{size}')
  out = pathlib.Path(out)
  t0 = time.perf_counter()
  if samples is not None and not runtime.is_primary():  # nothing to sample: process 0 scores
    return None
  if samples is None:
    if not sample_args:
      raise ValueError('give a samples .npz or the checkpoints to sample from')
    samples = generate.generate(**sample_args, out=out)['npz']
    if not runtime.is_primary():  # every process sampled its rows; process 0 scores them
      return None
    source = {'vae_ckpt': str(sample_args['vae_ckpt']), 'model_ckpt': str(sample_args['model_ckpt']),
              'options': dict(sample_args['options'].__dict__), 'seed': sample_args['seed']}
  else:
    source = {'samples': str(samples)}
  images, labels = load_samples(samples, need_labels='digits' in metric_names)
  results = evaluate(images, labels, metric_names, digits_evaluator=digits_evaluator,
                     inception_weights=inception_weights, ref_batch=ref_batch,
                     inception_batch=inception_batch, seed=seed)
  report = {'source': source, 'num_images': int(len(images)),
            'image_shape': list(images.shape[1:]), 'metrics': results,
            'seconds': round(time.perf_counter() - t0, 2)}
  out.mkdir(parents=True, exist_ok=True)
  (out / 'metrics.json').write_text(json.dumps(report, indent=1))
  print(f'{len(images)} images from {source.get("samples") or source["model_ckpt"]}\n\n'
        f'{format_table(results)}\n\nwrote {out / "metrics.json"}')
  return report
