"""The quality-compute curve of the digits demo: VIAR iteration schedules against VAR.

    rows = quality_curve.run('out/digits', 'out/digits_var', 'out/quality_curve',
                             schedules=('1', '4', '10,2'))    # launch.quality_curve's flags

Each training workdir holds a `model/` checkpoint and, unless it was trained with
`--config.tokenizer.ckpt`, a `tokenizer/` one; a VAR workdir without one uses the VIAR's. Rows: VIAR
for each iteration schedule in `schedules` (viar_jax.sample.schedule: `n` at every scale, `L,R` the
ramp iteration_schedule(L, R, K), or one count per scale), per_iteration KV cache (the reference);
then one VAR row (skipped when `var_dir` is empty). Every row samples the same labels (`per_class`
of each digit) with the same keys, batch and sampling settings (the digits config's: cfg 1.5, no
top-k / top-p), and reports
  digits-FID       against the held-out test split (viar_jax.eval.digits_eval); as the floor, real train
                   digits of the same count and class balance;
  class accuracy   the digits classifier's agreement with the requested class;
  images/s         `batch` / the median wall time of the sampler calls after a warm-up call (every
                   batch of the run, at least `repeats` calls), outputs blocked on;
  memory           XLA's compiled memory of the sampler (temp + argument + output - aliased), on
                   every backend; where the device counts it, also its running peak in bytes.
Writes quality_curve.md, quality_curve.json, quality_curve.png (digits-FID vs images/s; with the `plot`
extra) and one sample grid per row under grids/ in `out`.
"""
import dataclasses
import json
import pathlib
import statistics
import time
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from viar_jax import plotting, profiling
from viar_jax.eval import digits_eval
from viar_jax.io import png
from viar_jax.sample import pair, sampler, schedule

DEFAULT_SCHEDULES = ('1', '2', '4', '6', '8', '10', '10,2')  # schedule.parse specs
MIB = 2**20


@dataclasses.dataclass(frozen=True)
class RowSpec:
  """VIAR with per-scale iteration counts `iters`, or VAR (iters None)."""
  model: str
  schedule: str  # as shown (schedule.label): '4' (uniform), '10->2' (ramp), '-' for VAR
  iters: Optional[Tuple[int, ...]] = None


def row_specs(schedules: Sequence[str], num_scales: int, with_var: bool) -> List[RowSpec]:
  if not schedules:
    raise ValueError('no VIAR schedules given')
  rows = [RowSpec('VIAR', schedule.label(s), schedule.parse(s, num_scales)) for s in schedules]
  if any(r.iters is None for r in rows):
    raise ValueError(f'empty VIAR schedule in {list(schedules)}')
  return rows + ([RowSpec('VAR', '-')] if with_var else [])


# --- models ---------------------------------------------------------------------------------------


def load_run(workdir, implicit: bool, tokenizer_dir=None):
  """-> (vae, vae_params, model, params) from a training workdir's model/ and tokenizer/ (or
  `tokenizer_dir`)."""
  workdir = pathlib.Path(workdir)
  vae, vae_params, model, params = pair.load(tokenizer_dir or workdir / 'tokenizer', workdir / 'model')
  cfg = model.config
  if cfg.implicit != implicit:
    want, got = ('VIAR', 'VAR') if implicit else ('VAR', 'VIAR')
    raise ValueError(f'{workdir}/model is a {got} checkpoint, expected {want} (swapped --viar_dir '
                     '/ --var_dir?)')
  size = vae.config.image_size
  if size != digits_eval.IMAGE_SIZE or cfg.num_classes != digits_eval.NUM_CLASSES:
    raise ValueError(f'{workdir}: the digits metrics need {digits_eval.IMAGE_SIZE}x'
                     f'{digits_eval.IMAGE_SIZE} images of {digits_eval.NUM_CLASSES} classes; this '
                     f'run makes {size}x{size} images of {cfg.num_classes} classes')
  return vae, vae_params, model, params


# --- one row --------------------------------------------------------------------------------------


def sample_row(spec: RowSpec, run, labels: np.ndarray, batch: int, options: Dict, seed: int,
               repeats: int) -> Tuple[np.ndarray, Dict]:
  """Samples all `labels` with one compiled sampler; -> (uint8 images, timing and memory facts)."""
  vae, vae_params, model, params = run
  opts = sampler.SampleOptions(**options, iters=spec.iters, cache_mode='per_iteration')
  sample = sampler.make_sampler(vae, model, opts)
  chunks = []
  for i in range(0, len(labels), batch):
    chunk = labels[i:i + batch]
    padded = np.pad(chunk, (0, batch - len(chunk)), mode='edge')  # one compiled shape for all
    chunks.append((len(chunk), (vae_params, params, jax.random.fold_in(jax.random.PRNGKey(seed), i),
                                jnp.asarray(padded))))
  compiled, report = profiling.compile_with_report(sample, *chunks[0][1])
  call = lambda args: jax.block_until_ready(compiled(*args)).images  # all outputs done
  images = [np.asarray(call(chunks[0][1]))[:chunks[0][0]]]  # the warm-up call, untimed
  times = []
  for n, args in chunks[1:]:
    t0 = time.perf_counter()
    out = call(args)
    times.append(time.perf_counter() - t0)
    images.append(np.asarray(out)[:n])
  while len(times) < repeats:  # short runs: time the first batch again
    t0 = time.perf_counter()
    call(chunks[0][1])
    times.append(time.perf_counter() - t0)
  seconds = statistics.median(times)
  images = png.to_uint8(np.concatenate(images), (0.0, 1.0))
  return images, {'compile_s': report.compile_s, 'times_s': times, 'seconds_per_batch': seconds,
                  'images_per_s': batch / seconds, 'compiled_memory': report.as_dict(),
                  'memory_bytes': report.total_bytes, 'flops': report.flops,
                  'device_peak_bytes': profiling.device_peak_bytes()}


def row_slug(spec: RowSpec) -> str:
  return 'var' if spec.model == 'VAR' else 'viar_' + spec.schedule.replace('->', '_to_').replace(',', '_')


def real_reference(evaluator: digits_eval.DigitsEvaluator, per_class: int) -> Dict:
  """What real digits score: the floor of the curve.

  train_subset_fid: the first `per_class` train digits of every class (all of a class if it has
  fewer) against the test split, i.e. the sample count and class balance of the rows, since
  FID's small-sample bias is of the same order as the differences between rows.
  """
  train_images, train_labels = digits_eval.load_split('train', evaluator.data_dir)
  test_images, test_labels = digits_eval.load_split('test', evaluator.data_dir)
  subset = np.concatenate([np.flatnonzero(train_labels == c)[:per_class]
                           for c in range(digits_eval.NUM_CLASSES)])
  return {'train_subset_fid': evaluator.fid(train_images[subset]),
          'train_subset_size': int(len(subset)),
          'train_vs_test_fid': evaluator.fid(train_images),
          'train_subset_accuracy': evaluator.class_accuracy(train_images[subset],
                                                            train_labels[subset]),
          'test_accuracy': evaluator.class_accuracy(test_images, test_labels)}


# --- report ---------------------------------------------------------------------------------------


def format_table(rows: List[Dict]) -> str:
  var = next((r for r in rows if r['model'] == 'VAR'), None)
  header = ['model', 'schedule', 'iterations per scale', 'digits-FID', 'class acc', 'images/s',
            'x VAR', 'memory MiB (XLA compiled)', 'x VAR', 'compile s']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for r in rows:
    ratio = lambda key: f'{r[key] / var[key]:.2f}' if var else '-'
    cells = [r['model'], r['schedule'], ','.join(map(str, r['iters'])) if r['iters'] else '-',
             f'{r["digits_fid"]:.2f}', f'{r["class_accuracy"]:.3f}', f'{r["images_per_s"]:.1f}',
             ratio('images_per_s'), f'{r["memory_bytes"] / MIB:.2f}', ratio('memory_bytes'),
             f'{r["compile_s"]:.1f}']
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def write_report(out: pathlib.Path, rows: List[Dict], settings: Dict, reference: Dict) -> None:
  header = (f'backend {jax.default_backend()} ({jax.devices()[0].device_kind}); '
            f'{settings["num_images"]} images ({settings["per_class"]} per class), batch '
            f'{settings["batch"]}, seed {settings["seed"]}, cfg {settings["options"]["cfg"]}, top_k '
            f'{settings["options"]["top_k"]}, top_p {settings["options"]["top_p"]}, VIAR cache '
            f'per_iteration; classifier {digits_eval.VERSION} seed {settings["classifier_seed"]}')
  notes = [f'Real digits against the test split: {reference["train_subset_size"]} train digits (the '
           f'rows\' count and class balance) digits-FID {reference["train_subset_fid"]:.2f} (the '
           f'floor), '
           f'the whole train split {reference["train_vs_test_fid"]:.2f}; classifier accuracy '
           f'{reference["test_accuracy"]:.3f} on the test split.',
           f'images/s: batch / median wall time of the sampler calls after a warm-up call (at least '
           f'{settings["repeats"]} timed calls); memory: XLA compiled argument + output + temp - '
           f'aliased bytes of the sampler, params included.',
           'digits-FID is biased upwards at small sample counts: compare rows of one run only.']
  (out / 'quality_curve.md').write_text(
      f'# Digits quality vs compute\n\n{header}\n\n{format_table(rows)}\n\n' +
      '\n'.join(f'* {n}' for n in notes) + '\n')
  (out / 'quality_curve.json').write_text(json.dumps(
      {'backend': jax.default_backend(), 'device': jax.devices()[0].device_kind,
       'settings': settings, 'reference': reference, 'rows': rows}, indent=1))


# --- driver ---------------------------------------------------------------------------------------


def run(viar_dir, var_dir, out, per_class: int = 100, schedules: Sequence[str] = DEFAULT_SCHEDULES,
        batch: int = 100, cfg: float = 1.5, top_k: int = 0, top_p: float = 0.0, seed: int = 0,
        repeats: int = 3, evaluator: Optional[digits_eval.DigitsEvaluator] = None) -> List[Dict]:
  """The whole curve: prints per-row progress, writes the report under `out`, returns the rows."""
  if per_class < 1 or batch < 1 or repeats < 1:
    raise ValueError(f'per_class, batch and repeats must be >= 1, got {per_class}, {batch}, '
                     f'{repeats}')
  start = time.perf_counter()
  out = pathlib.Path(out)
  runs = {'VIAR': load_run(viar_dir, implicit=True)}
  if var_dir:
    tokenizer = pathlib.Path(var_dir) / 'tokenizer'
    if not tokenizer.exists():  # trained with --config.tokenizer.ckpt: the shared tokenizer
      tokenizer = pathlib.Path(viar_dir) / 'tokenizer'
      print(f'{var_dir} has no tokenizer/: the VAR uses {tokenizer}', flush=True)
    runs['VAR'] = load_run(var_dir, implicit=False, tokenizer_dir=tokenizer)
  num_scales = len(runs['VIAR'][2].config.patch_nums)
  specs = row_specs(schedules, num_scales, with_var='VAR' in runs)
  evaluator = evaluator or digits_eval.get_evaluator()
  reference = real_reference(evaluator, per_class)
  labels = np.repeat(np.arange(digits_eval.NUM_CLASSES, dtype=np.int32), per_class)
  options = {'cfg': cfg, 'top_k': top_k, 'top_p': top_p}
  print(f'{len(specs)} rows x {len(labels)} images (batch {batch}); real digits-FID floor '
        f'{reference["train_subset_fid"]:.2f} ({reference["train_subset_size"]} train digits)',
        flush=True)

  rows = []
  for i, spec in enumerate(specs, 1):
    t0 = time.perf_counter()
    images, facts = sample_row(spec, runs[spec.model], labels, batch, options, seed, repeats)
    row = {'model': spec.model, 'schedule': spec.schedule,
           'iters': list(spec.iters) if spec.iters else None,
           'digits_fid': evaluator.fid(images),
           'class_accuracy': evaluator.class_accuracy(images, labels),
           **facts}
    shown = images.reshape(digits_eval.NUM_CLASSES, per_class, *images.shape[1:])[:, :10]
    row['grid'] = str(png.write_png(out / 'grids' / f'{row_slug(spec)}.png',
                                    png.grid(shown.reshape(-1, *images.shape[1:]),
                                             cols=shown.shape[1], zoom=4)))
    rows.append(row)
    print(f'[{i}/{len(specs)}] {spec.model} {spec.schedule}: digits-FID {row["digits_fid"]:.2f}, '
          f'class acc {row["class_accuracy"]:.3f}, {row["images_per_s"]:.1f} images/s, memory '
          f'{row["memory_bytes"] / MIB:.2f} MiB, compile {row["compile_s"]:.1f} s, row '
          f'{time.perf_counter() - t0:.1f} s, elapsed {time.perf_counter() - start:.0f} s',
          flush=True)

  settings = {'viar_dir': str(viar_dir), 'var_dir': str(var_dir) if var_dir else None,
              'per_class': per_class, 'num_images': int(len(labels)), 'batch': batch, 'seed': seed,
              'repeats': repeats, 'options': options, 'classifier_seed': evaluator.seed}
  out.mkdir(parents=True, exist_ok=True)
  write_report(out, rows, settings, reference)
  plotting.tradeoff(out / 'quality_curve.png', rows, floor=reference['train_subset_fid'])
  print(f'\n{format_table(rows)}\n\nwrote {out}/quality_curve.md, .json, .png and grids/ in '
        f'{time.perf_counter() - start:.0f} s')
  return rows
