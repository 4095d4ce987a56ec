"""A fair VIAR-vs-VAR quality-compute study on the digits, in one resumable call.

    points = study.run('out/study', widths=(64, 128), var_depths=(1, 2, 4),
                       viar_schedules=('1', '2', '4', '8'), seeds=(0, 1, 2), steps=400,
                       per_class=100, batch=100)                          # launch.study's flags

What is compared, and how:
  tokenizer   one for every run: trained once into `<out>/tokenizer` with the base config (the
              digits one), or `tokenizer_ckpt`. Every transformer sees the same tokens, so the
              study compares the transformers alone.
  runs        VAR with `d` blocks for each d in `var_depths`, and VIAR (the base config's
              pre / implicit / post blocks, 1 / 1 / 1 for the digits) at each width in `widths`,
              for each seed (config.seed: init, data order, dropout). num_heads = width // 64 (at
              least 1): head_dim 64, or the width itself below 64. Every run trains the same
              `steps` at the same batch and lr recipe (equal steps, not equal compute): the table
              states each run's model FLOPs (viar_jax.train.mfu; VIAR's at its mean K, m) and
              wall time. Workdirs `<out>/runs/<model>_w<width>_d<depth>_s<seed>` (VIAR's d is the
              nominal depth of its config); a run whose `model/` exists is not trained again, and an
              interrupted one resumes from its checkpoint (loop.train).
  quality     per run and row (VAR: one; VIAR: one per schedule in `viar_schedules`,
              viar_jax.sample.schedule's grammar): `per_class` samples of every digit, the same
              labels and keys for every row (quality_curve.sample_row), digits-FID against the test
              split and class accuracy. Cached per run in `<run>/study_eval.json`, keyed by the
              evaluation settings: a resumed study does not sample again.
  speed       images/s of every (model, width, depth, schedule), all measured in this process at
              the end (never cached): one compiled sampler each (seed `seeds[0]`'s params; speed
              does not depend on the values), then `repeats` rounds that time one call of each in
              turn, so load from other jobs on shared cores falls on every row alike; the median.
  aggregate   mean ± sample std over seeds of FID and accuracy per (model, width, depth, schedule).
  verdicts    computed, not written by hand (`dominance`, `param_matches`): per width, whether every
              VAR point has a VIAR point at least as fast (or with at most as many parameters) whose
              FID is no worse than the VAR's plus the larger of the two stds; and which VAR the best
              VIAR row matches, with VIAR's parameter fraction of it.
Writes study.md, study.json, study_fid_vs_speed.png and study_fid_vs_params.png (FID and accuracy
panels; with the `plot` extra) and grids/ (seed `seeds[0]`'s samples) under `out`.
"""
import copy
import dataclasses
import json
import math
import pathlib
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from viar_jax import plotting, profiling, runtime
from viar_jax.eval import digits_eval, quality_curve
from viar_jax.io import checkpoint, png, run_config
from viar_jax.models import factory
from viar_jax.sample import sampler
from viar_jax.train import loop, mfu, tokenizer_loop

DEFAULT_WIDTHS = (64, 128)
# ~90 min on 2 shared CPU cores (launch.study); add depth 6, VAR at VIAR's training FLOPs, for ~+40 min.
DEFAULT_VAR_DEPTHS = (1, 2, 4)
DEFAULT_SCHEDULES = ('1', '2', '4', '8')
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_STEPS = 400  # half the digits config's 800: three seeds of every run fit the time
HEAD_DIM = 64
EVAL_FILE = 'study_eval.json'
TRAIN_FILE = 'study_train.json'


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training run: VAR with `depth` blocks, or VIAR (depth = its config's nominal depth)."""
  model: str  # 'VAR' or 'VIAR'
  width: int
  depth: int
  seed: int

  @property
  def name(self) -> str:
    return f'{self.model.lower()}_w{self.width}_d{self.depth}_s{self.seed}'

  @property
  def arch(self) -> Tuple[str, int, int]:
    """What fixes the compute: runs that differ only in the seed share it."""
    return self.model, self.width, self.depth


def run_specs(widths: Sequence[int], var_depths: Sequence[int], viar_depth: int,
              seeds: Sequence[int]) -> List[RunSpec]:
  """Seed-major: after the first seed's round every architecture has one run, so a study stopped
  early already has a (single-seed) curve, and the ETA averages over every kind of run."""
  if not widths or not seeds or not var_depths:
    raise ValueError(f'need widths, var_depths and seeds, got {widths}, {var_depths}, {seeds}')
  if min(widths) < 1 or min(var_depths) < 1:
    raise ValueError(f'widths and depths must be >= 1, got {widths}, {var_depths}')
  return [RunSpec(model, w, d, s) for s in seeds for w in widths
          for model, d in [('VAR', d) for d in var_depths] + [('VIAR', viar_depth)]]


def num_heads(width: int) -> int:
  """Heads of HEAD_DIM channels; one head below that width."""
  return max(1, width // HEAD_DIM)


def run_config_for(base, spec: RunSpec, steps: int, train_batch: int, tokenizer_dir):
  """The base config with the spec's model, width, seed and the study's steps / batch."""
  c = copy.deepcopy(base)
  c.seed = spec.seed
  c.model.implicit = spec.model == 'VIAR'
  c.model.embed_dim = spec.width
  c.model.num_heads = num_heads(spec.width)
  c.model.depth = spec.depth
  c.optim.steps = steps
  c.optim.batch_size = train_batch
  c.tokenizer.ckpt = str(pathlib.Path(tokenizer_dir).resolve())  # a resumed study may cd elsewhere
  c.sample_every = 0  # the study samples its own rows; in-training grids only cost time
  return c


# --- compute facts of a run (no training needed) --------------------------------------------------


def compute_facts(c, vae_cfg) -> Dict:
  """Transformer params and model FLOPs of the whole training run (mfu: 6·N·B·T + attention;
  VIAR's implicit layer at its mean no-grad / with-grad iteration counts)."""
  cfg = run_config.transformer_config(c.model, vae_cfg)
  shapes = factory.abstract_params(cfg)
  params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes))
  per_step = mfu.model_flops_per_step(cfg, shapes, c.optim.batch_size, **mfu.mean_iters(cfg))
  layout = f'{cfg.pre_depth}+i+{cfg.post_depth}' if cfg.implicit else str(cfg.depth)
  return {'params': params, 'train_flops': per_step * c.optim.steps, 'layout': layout}


# --- training ---------------------------------------------------------------------------------------


def shared_tokenizer(base, out: pathlib.Path, tokenizer_ckpt, stop) -> Optional[pathlib.Path]:
  """The one tokenizer of the study: given, or trained (or resumed) into `<out>/tokenizer`.
  None when `stop` ended its training early."""
  if tokenizer_ckpt:
    if not (pathlib.Path(tokenizer_ckpt) / 'config.json').exists():
      raise FileNotFoundError(f'tokenizer checkpoint {tokenizer_ckpt} not found (no config.json)')
    return pathlib.Path(tokenizer_ckpt)
  directory = out / 'tokenizer'
  _, params = tokenizer_loop.train_or_load(base, directory, stop=stop)
  return None if params is None else directory


def last_metrics(workdir: pathlib.Path) -> Dict:
  """The last line of a run's train_metrics.jsonl ({} if none): loss and steps/s after compile."""
  path = workdir / 'train_metrics.jsonl'
  lines = path.read_text().splitlines() if path.exists() else []
  return json.loads(lines[-1]) if lines else {}


def recipe(c) -> Dict:
  """What a finished run must have been trained with to be reused by the study."""
  return {'steps': c.optim.steps, 'batch_size': c.optim.batch_size, 'seed': c.seed,
          'tokenizer': c.tokenizer.ckpt}


def finished(c, workdir: pathlib.Path) -> bool:
  """Whether the run has its model/; one of another recipe (an earlier study with other --steps,
  say) raises rather than being mixed in silently."""
  if not (workdir / 'model').exists():
    return False
  path = workdir / TRAIN_FILE
  saved = json.loads(path.read_text()).get('recipe') if path.exists() else None
  if saved is not None and saved != recipe(c):
    raise ValueError(f'{workdir} was trained with {saved}, this study asks for {recipe(c)}: use '
                     'another output directory or delete the run')
  return True


def train_run(c, workdir: pathlib.Path, stop, train: Callable = None) -> bool:
  """Trains one run unless its model/ exists; writes its wall time to study_train.json.
  -> whether the run is complete (False: `stop` ended it early, a rerun resumes it)."""
  if finished(c, workdir):
    return True
  resumed = (workdir / 'checkpoints').exists()
  t0 = time.perf_counter()
  (train or loop.train)(c, workdir, stop=stop)
  seconds = time.perf_counter() - t0
  if not (workdir / 'model').exists():
    return False
  metrics = last_metrics(workdir)
  facts = {'train_s': seconds, 'resumed': resumed, 'steps_per_s': metrics.get('steps_per_s'),
           'final_loss': metrics.get('loss'), 'recipe': recipe(c)}
  (workdir / TRAIN_FILE).write_text(json.dumps(facts, indent=1))
  return True


def _fmt_s(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  return f'{int(seconds // 60)}m{int(seconds % 60):02d}s'


def train_all(specs: List[RunSpec], configs: Dict[RunSpec, object], out: pathlib.Path, stop,
              start: float, train: Callable = None) -> bool:
  """Trains every missing run, with progress and ETA lines. -> False if stopped early."""
  todo = [s for s in specs if not finished(configs[s], out / 'runs' / s.name)]
  print(f'training: {len(specs) - len(todo)} of {len(specs)} runs done already, {len(todo)} to go',
        flush=True)
  t_train = time.perf_counter()
  for i, spec in enumerate(todo, 1):
    t0 = time.perf_counter()
    if not train_run(configs[spec], out / 'runs' / spec.name, stop, train):
      print(f'stopped during {spec.name}: rerun the same command to resume', flush=True)
      return False
    per_run = (time.perf_counter() - t_train) / i  # the mean over every kind of run (seed-major)
    print(f'[train {i}/{len(todo)}] {spec.name} in {_fmt_s(time.perf_counter() - t0)}; elapsed '
          f'{_fmt_s(time.perf_counter() - start)}, training ETA {_fmt_s(per_run * (len(todo) - i))}',
          flush=True)
  return True


# --- quality (cached per run) -----------------------------------------------------------------------


def eval_settings(per_class: int, batch: int, options: Dict, sample_seed: int,
                  evaluator: digits_eval.DigitsEvaluator) -> Dict:
  """What a cached evaluation depends on: a change means evaluating again."""
  return {'per_class': per_class, 'batch': batch, 'options': options, 'sample_seed': sample_seed,
          'classifier': digits_eval.VERSION, 'classifier_seed': evaluator.seed}


def load_cache(path: pathlib.Path, settings: Dict) -> Dict[str, Dict]:
  """Cached rows {schedule label: metrics} of a run if evaluated with `settings`, else {}."""
  if not path.exists():
    return {}
  cached = json.loads(path.read_text())
  return cached['rows'] if cached.get('settings') == json.loads(json.dumps(settings)) else {}


def evaluate_run(spec: RunSpec, workdir: pathlib.Path, tokenizer_dir, rows, labels, settings,
                 evaluator, grid_dir: Optional[pathlib.Path]) -> Dict[str, Dict]:
  """FID and accuracy of every row of one run -> {row label: metrics}; saved after every row, so an
  interrupted evaluation loses at most one row."""
  path = workdir / EVAL_FILE
  done = load_cache(path, settings)
  todo = [r for r in rows if r.schedule not in done]
  if not todo:
    return done
  run = quality_curve.load_run(workdir, implicit=spec.model == 'VIAR', tokenizer_dir=tokenizer_dir)
  for row in todo:
    images, _ = quality_curve.sample_row(row, run, labels, settings['batch'], settings['options'],
                                         settings['sample_seed'], repeats=1)
    done[row.schedule] = {'digits_fid': evaluator.fid(images),
                          'class_accuracy': evaluator.class_accuracy(images, labels)}
    path.write_text(json.dumps({'settings': settings, 'rows': done}, indent=1))
    if grid_dir is not None:
      write_grid(grid_dir / f'{spec.model.lower()}_w{spec.width}_d{spec.depth}_'
                 f'{quality_curve.row_slug(row)}.png', images, settings['per_class'])
  return done


def write_grid(path: pathlib.Path, images: np.ndarray, per_class: int) -> None:
  """One row per digit, at most 10 samples each, 4x enlarged."""
  shown = images.reshape(digits_eval.NUM_CLASSES, per_class, *images.shape[1:])[:, :10]
  png.write_png(path, png.grid(shown.reshape(-1, *images.shape[1:]), cols=shown.shape[1], zoom=4))


def rows_for(spec: RunSpec, schedules: Sequence[str], num_scales: int) -> List[quality_curve.RowSpec]:
  if spec.model == 'VAR':
    return [quality_curve.RowSpec('VAR', '-')]
  return quality_curve.row_specs(schedules, num_scales, with_var=False)


# --- speed (this process, interleaved) ------------------------------------------------------------


def measure_speed(archs: Dict[Tuple, Tuple[pathlib.Path, List]], tokenizer_dir, batch: int,
                  options: Dict, repeats: int) -> Dict[Tuple, Dict]:
  """images/s of every (arch, row): all samplers compiled and warmed up first, then `repeats`
  rounds timing one call of each in turn (shared cores: other jobs' load falls on all rows alike).
  archs: {arch: (a workdir of it, its rows)} -> {(arch, row label): {images_per_s, ...}}."""
  labels = jnp.asarray(np.arange(batch, dtype=np.int32) % digits_eval.NUM_CLASSES)
  key = jax.random.PRNGKey(0)
  calls = {}
  for arch, (workdir, rows) in archs.items():
    vae, vae_params, model, params = quality_curve.load_run(
        workdir, implicit=arch[0] == 'VIAR', tokenizer_dir=tokenizer_dir)
    for row in rows:
      opts = sampler.SampleOptions(**options, iters=row.iters, cache_mode='per_iteration')
      compiled, report = profiling.compile_with_report(sampler.make_sampler(vae, model, opts),
                                                       vae_params, params, key, labels)
      args = (vae_params, params, key, labels)
      jax.block_until_ready(compiled(*args).images)  # warm-up, untimed
      calls[arch, row.schedule] = (compiled, args, report)
  times = {k: [] for k in calls}
  for _ in range(repeats):
    for k, (compiled, args, _) in calls.items():
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(*args).images)
      times[k].append(time.perf_counter() - t0)
  return {k: {'images_per_s': batch / statistics.median(times[k]), 'times_s': times[k],
              'compile_s': calls[k][2].compile_s, 'memory_bytes': calls[k][2].total_bytes}
          for k in calls}


# --- aggregation and verdicts -------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
  """Mean and sample standard deviation (n - 1; 0 for a single value)."""
  values = [float(v) for v in values]
  return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(records: List[Dict]) -> List[Dict]:
  """Per-seed records -> one point per (model, width, depth, schedule): FID and accuracy mean and
  std over seeds, train wall time mean; the seed-independent facts (params, FLOPs, speed) as is."""
  groups: Dict[Tuple, List[Dict]] = {}
  for r in records:
    groups.setdefault((r['model'], r['width'], r['depth'], r['schedule']), []).append(r)
  points = []
  for (model, width, depth, sched), rs in groups.items():
    first = rs[0]
    point = {'model': model, 'width': width, 'depth': depth, 'schedule': sched,
             'label': f'd{depth}' if model == 'VAR' else sched,
             'seeds': [r['seed'] for r in rs], 'params': first['params'],
             'layout': first['layout'], 'train_gflops': first['train_flops'] / 1e9}
    for key in ('digits_fid', 'class_accuracy'):
      point[key], point[key + '_std'] = mean_std([r[key] for r in rs])
    times = [r['train_s'] for r in rs if r.get('train_s') is not None]
    point['train_s'] = statistics.fmean(times) if times else None
    for key in ('images_per_s', 'memory_bytes', 'iters'):
      point[key] = first.get(key)
    points.append(point)
  return sorted(points, key=lambda p: (p['width'], p['model'], p['depth'], p['images_per_s'] or 0))


def no_worse(candidate: Dict, target: Dict, key: str = 'digits_fid') -> bool:
  """candidate's FID is at most target's plus the larger of their stds over seeds (noise)."""
  slack = max(candidate.get(key + '_std', 0.0), target.get(key + '_std', 0.0))
  return candidate[key] <= target[key] + slack


def dominance(var: List[Dict], viar: List[Dict], axis: str) -> List[Tuple[Dict, Optional[Dict]]]:
  """For each VAR point, a VIAR point at least as good on `axis` ('images_per_s': >=, 'params': <=)
  with FID no worse (`no_worse`); of those the best FID; None where there is none.
  VIAR dominates when no entry is None."""
  better = {'images_per_s': lambda u, v: u >= v, 'params': lambda u, v: u <= v}[axis]
  pairs = []
  for v in var:
    cover = [u for u in viar if better(u[axis], v[axis]) and no_worse(u, v)]
    pairs.append((v, min(cover, key=lambda u: u['digits_fid']) if cover else None))
  return pairs


def _pt(p: Dict) -> str:
  name = f'VAR d{p["depth"]}' if p['model'] == 'VAR' else f'VIAR {p["schedule"]}'
  return (f'{name} (w{p["width"]}, {p["images_per_s"]:.0f} images/s, {p["params"] / 1e3:.0f}k '
          f'params, FID {p["digits_fid"]:.2f} ± {p["digits_fid_std"]:.2f})')


def dominance_verdict(where: str, var: List[Dict], viar: List[Dict], axis: str) -> str:
  what = {'images_per_s': 'at least as fast', 'params': 'with at most as many parameters'}[axis]
  on = {'images_per_s': 'speed (images/s)', 'params': 'parameters'}[axis]
  pairs = dominance(var, viar, axis)
  missing = [v for v, u in pairs if u is None]
  if not var or not viar:
    return f'{where}: nothing to compare (VAR points {len(var)}, VIAR points {len(viar)}).'
  if not missing:
    return (f'{where} VIAR dominates VAR in {on}: every VAR point has a VIAR point {what} with '
            f'digits-FID no worse (within one std): ' +
            '; '.join(f'{_pt(v)} <- {_pt(u)}' for v, u in pairs) + '.')
  return (f'{where} VIAR does not dominate VAR in {on}: ' +
          '; '.join(f'{_pt(v)} has no VIAR point {what} with digits-FID no worse' for v in missing)
          + '.')


def param_matches(var: List[Dict], viar: List[Dict]) -> Optional[Tuple[Dict, Optional[Dict]]]:
  """(VIAR's best-FID point, the best-FID VAR point it matches (VIAR's FID no worse within noise)
  or None); None without points."""
  if not var or not viar:
    return None
  best = min(viar, key=lambda u: u['digits_fid'])
  matched = [v for v in var if no_worse(best, v)]
  return best, (min(matched, key=lambda v: v['digits_fid']) if matched else None)


def param_verdict(where: str, var: List[Dict], viar: List[Dict]) -> str:
  match = param_matches(var, viar)
  if match is None:
    return f'{where}: nothing to compare.'
  best, v = match
  if v is None:
    strongest = min(var, key=lambda p: p['digits_fid'])
    return (f'{where} VIAR matches no VAR: its best row {_pt(best)} is worse than every VAR '
            f'(best {_pt(strongest)}).')
  return (f'{where} VIAR\'s best row {_pt(best)} matches {_pt(v)} with '
          f'{100 * best["params"] / v["params"]:.0f} % of its parameters.')


def verdicts(points: List[Dict]) -> List[str]:
  """The plain statements of the report: per width and over all widths together, speed and params
  dominance and the parameter match."""
  widths = sorted({p['width'] for p in points})
  scopes = [(f'At width {w}', [p for p in points if p['width'] == w]) for w in widths]
  if len(widths) > 1:
    scopes.append(('Over all widths together', points))
  lines = []
  for where, ps in scopes:
    var = [p for p in ps if p['model'] == 'VAR']
    viar = [p for p in ps if p['model'] == 'VIAR']
    lines += [dominance_verdict(where, var, viar, 'images_per_s'),
              dominance_verdict(where, var, viar, 'params'), param_verdict(where, var, viar)]
  return lines


# --- report ---------------------------------------------------------------------------------------


def format_table(points: List[Dict]) -> str:
  header = ['model', 'width', 'depth', 'schedule', 'params', 'train GFLOPs/run', 'train s',
            'images/s', 'digits-FID', 'class acc', 'seeds']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for p in points:
    cells = [p['model'], str(p['width']), p['layout'], p['schedule'], f'{p["params"] / 1e3:.0f}k',
             f'{p["train_gflops"]:.3g}',
             f'{p["train_s"]:.0f}' if p['train_s'] is not None else '-',
             f'{p["images_per_s"]:.0f}',
             f'{p["digits_fid"]:.2f} ± {p["digits_fid_std"]:.2f}',
             f'{p["class_accuracy"]:.3f} ± {p["class_accuracy_std"]:.3f}', str(len(p['seeds']))]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def write_report(out: pathlib.Path, points: List[Dict], records: List[Dict], settings: Dict,
                 reference: Dict, lines: List[str]) -> None:
  s = settings
  header = (f'backend {jax.default_backend()} ({jax.devices()[0].device_kind}). Every run: '
            f'{s["steps"]} steps of batch {s["train_batch"]}, peak lr {s["peak_lr"]:.3g} '
            f'({s["lr_schedule"]}), one shared tokenizer ({s["tokenizer"]}: the runs differ in the '
            f'transformer only); equal steps, so training '
            f'compute differs per run (train GFLOPs/run: model FLOPs, VIAR at its mean K, m). '
            f'Evaluation: {s["num_images"]} images ({s["per_class"]} per class) per run and row, '
            f'batch {s["batch"]}, sample seed {s["sample_seed"]}, cfg {s["options"]["cfg"]}, '
            f'top_k {s["options"]["top_k"]}, top_p {s["options"]["top_p"]}; seeds {s["seeds"]}.')
  notes = [f'digits-FID and class acc: mean ± sample std over the training seeds. Real digits: '
           f'{reference["train_subset_size"]} train digits score digits-FID '
           f'{reference["train_subset_fid"]:.2f} (the floor), classifier test accuracy '
           f'{reference["test_accuracy"]:.3f}.',
           f'images/s: batch {s["batch"]} / median of {s["repeats"]} timed calls, every row timed '
           f'in this process in interleaved rounds (after compile and warm-up); parameters: the '
           f'transformer\'s (the tokenizer is shared).',
           'depth: VAR blocks; VIAR pre + implicit (i) + post blocks. VIAR trains with K no-grad '
           f'+ m with-grad iterations drawn per step from {s["viar_iters"]} (the FLOPs use their '
           'means).',
           f'train s: wall time of the training call, compile included; mean over seeds. Runs '
           f'resumed after an interruption (partial time): '
           f'{sorted({r["run"] for r in records if r.get("train_resumed")}) or "none"}.',
           'Dominance: a VIAR point covers a VAR point when at least as fast (or with at most as '
           'many parameters) and its digits-FID is at most the VAR\'s plus the larger of the two '
           'stds.']
  (out / 'study.md').write_text(
      f'# VIAR vs VAR on the digits: quality vs compute\n\n{header}\n\n{format_table(points)}\n\n'
      + '\n'.join(f'* {n}' for n in notes) + '\n\n## Verdicts\n\n'
      + '\n'.join(f'* {line}' for line in lines) + '\n')
  (out / 'study.json').write_text(json.dumps(
      {'backend': jax.default_backend(), 'device': jax.devices()[0].device_kind, 'settings': s,
       'reference': reference, 'points': points, 'records': records, 'verdicts': lines}, indent=1))


def plot(out: pathlib.Path, points: List[Dict], floor: float) -> None:
  panels = [('digits_fid', 'digits-FID (lower is better)'),
            ('class_accuracy', 'class accuracy (higher is better)')]
  plotting.study_curves(out / 'study_fid_vs_speed.png', points, x='images_per_s',
                        xlabel='images / s (sampling)', panels=panels, floors={'digits_fid': floor})
  plotting.study_curves(out / 'study_fid_vs_params.png', points, x='params',
                        xlabel='transformer parameters', panels=panels,
                        floors={'digits_fid': floor}, log_x=True)


# --- driver ---------------------------------------------------------------------------------------


def run(out, *, widths: Sequence[int] = DEFAULT_WIDTHS,
        var_depths: Sequence[int] = DEFAULT_VAR_DEPTHS,
        viar_schedules: Sequence[str] = DEFAULT_SCHEDULES, seeds: Sequence[int] = DEFAULT_SEEDS,
        steps: int = DEFAULT_STEPS, per_class: int = 100, batch: int = 100,
        tokenizer_ckpt: Optional[str] = None, base_config=None,
        evaluator: Optional[digits_eval.DigitsEvaluator] = None, train_batch: Optional[int] = None,
        sample_seed: int = 0, repeats: int = 5, cfg: float = 1.5,
        stop: Optional[runtime.Stop] = None, train: Optional[Callable] = None) -> Optional[List[Dict]]:
  """The whole study (see the module docstring). -> the aggregated points, or None when `stop`
  (default: SIGTERM) ended training early; the same call then resumes.

  base_config: the digits config by default (tokenizer recipe, VIAR blocks, lr recipe, batch).
  train: loop.train's stand-in (tests).
  """
  if steps < 1 or per_class < 1 or batch < 1 or repeats < 1:
    raise ValueError(f'steps, per_class, batch and repeats must be >= 1, got {steps}, '
                     f'{per_class}, {batch}, {repeats}')
  if base_config is None:
    from configs import digits  # pylint: disable=import-outside-toplevel  (the repo's default)
    base_config = digits.get_config()
  if base_config.optim.get('pg', 0.0):
    raise ValueError('the study compares non-progressive runs (config.optim.pg = 0): progressive '
                     'stages change the FLOPs per step')
  start = time.perf_counter()
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  stop = stop or runtime.Stop()
  train_batch = train_batch or base_config.optim.batch_size
  schedules = list(viar_schedules)
  specs = run_specs(widths, var_depths, base_config.model.depth, seeds)

  tokenizer_dir = shared_tokenizer(base_config, out, tokenizer_ckpt, stop)
  if tokenizer_dir is None:
    print('stopped while training the tokenizer: rerun the same command to resume', flush=True)
    return None
  vae_cfg = checkpoint.load_config(tokenizer_dir)
  configs = {s: run_config_for(base_config, s, steps, train_batch, tokenizer_dir) for s in specs}
  facts = {s: compute_facts(configs[s], vae_cfg) for s in specs}  # also validates every config
  num_scales = len(vae_cfg.patch_nums)
  rows = {s: rows_for(s, schedules, num_scales) for s in specs}
  print(f'study: {len(specs)} runs ({len(widths)} widths x ({len(var_depths)} VAR depths + VIAR) x '
        f'{len(seeds)} seeds), {steps} steps each, VIAR rows {schedules}; tokenizer {tokenizer_dir}',
        flush=True)
  if not train_all(specs, configs, out, stop, start, train):
    return None

  # Quality: every run and row, cached per run.
  evaluator = evaluator or digits_eval.get_evaluator()
  options = {'cfg': cfg, 'top_k': 0, 'top_p': 0.0}
  settings_eval = eval_settings(per_class, batch, options, sample_seed, evaluator)
  labels = np.repeat(np.arange(digits_eval.NUM_CLASSES, dtype=np.int32), per_class)
  quality, t_eval = {}, time.perf_counter()
  for i, spec in enumerate(specs, 1):
    grid_dir = out / 'grids' if spec.seed == seeds[0] else None
    quality[spec] = evaluate_run(spec, out / 'runs' / spec.name, tokenizer_dir, rows[spec], labels,
                                 settings_eval, evaluator, grid_dir)
    eta = (time.perf_counter() - t_eval) / i * (len(specs) - i)
    print(f'[eval {i}/{len(specs)}] {spec.name}: ' + ', '.join(
        f'{k} FID {v["digits_fid"]:.2f} acc {v["class_accuracy"]:.3f}'
        for k, v in quality[spec].items()) + f'; elapsed {_fmt_s(time.perf_counter() - start)}, '
          f'eval ETA {_fmt_s(eta)}', flush=True)

  # Speed: every (arch, row) in this process.
  archs = {}
  for spec in specs:
    archs.setdefault(spec.arch, (out / 'runs' / spec.name, rows[spec]))
  print(f'timing {sum(len(r) for _, r in archs.values())} samplers x {repeats} rounds', flush=True)
  speed = measure_speed(archs, tokenizer_dir, batch, options, repeats)

  records = []
  for spec in specs:
    trained = json.loads((out / 'runs' / spec.name / TRAIN_FILE).read_text()) if (
        out / 'runs' / spec.name / TRAIN_FILE).exists() else {}
    for row in rows[spec]:
      records.append({'run': spec.name, 'model': spec.model, 'width': spec.width, 'depth': spec.depth,
                      'seed': spec.seed, 'schedule': row.schedule,
                      'iters': list(row.iters) if row.iters else None, **facts[spec],
                      'train_s': trained.get('train_s'), 'final_loss': trained.get('final_loss'),
                      'train_resumed': trained.get('resumed'),
                      **quality[spec][row.schedule], **speed[spec.arch, row.schedule]})
  points = aggregate(records)
  lines = verdicts(points)
  reference = quality_curve.real_reference(evaluator, per_class)
  optimizer_facts = loop.make_optimizer(configs[specs[0]], num_scales)
  settings = {'widths': list(widths), 'var_depths': list(var_depths), 'viar_schedules': schedules,
              'seeds': list(seeds), 'steps': steps, 'train_batch': train_batch,
              'peak_lr': optimizer_facts[1], 'lr_schedule': optimizer_facts[2],
              'tokenizer': str(tokenizer_dir),
              'viar_iters': {'no_grad': list(base_config.model.no_grad_iters_range),
                             'with_grad': list(base_config.model.with_grad_iters_range)},
              'num_images': int(len(labels)), 'repeats': repeats,
              **settings_eval}
  write_report(out, points, records, settings, reference, lines)
  plot(out, points, reference['train_subset_fid'])
  print(f'\n{format_table(points)}\n\n' + '\n'.join(lines) +
        f'\n\nwrote {out}/study.md, .json, .png in {_fmt_s(time.perf_counter() - start)}', flush=True)
  return points
