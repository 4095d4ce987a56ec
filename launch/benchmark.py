"""Sampling throughput and memory: VAR-d{D} vs VIAR (pre 5 / implicit / post 5) at the same width.

    python -m launch.benchmark [--depth 30] [--embed_dim 256] [--batch 2] [--repeats 3] [--quick]
                               [--isolate] [--out out/benchmark]

Both models (and the VQ-VAE decoder inside the sampler) get random parameters: throughput and memory do
not depend on the values. Rows: VAR, then VIAR per iteration schedule (10->10, 5->5, 10->5, 10->2 over
the scales) and KV-cache mode (per_iteration, final_iterate). Per row it reports

  images/s   batch / median wall time of `--repeats` calls of the compiled sampler (after one warm-up
             call), outputs blocked on;
  memory     XLA's compiled memory analysis, temp + argument + output bytes (on every backend), or, with
             `--isolate` where the device reports it, the device's peak bytes in use measured in a fresh
             subprocess per row (the peak counter cannot be reset within a process);
  KV cache   analytic bytes of the caches the sampler preallocates, and of what the reference keeps
             (they differ for per_iteration: we allocate max(iters) full-length groups, the reference
             holds sum_s n_s·pn_s² tokens).

Writes benchmark.md, benchmark.json (and benchmark.png if matplotlib is installed) under --out, and
reports (does not assert) the issue's targets: VIAR 10->2 at >= 2.3x VAR's images/s and <= 0.40x its
memory.
"""
import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from viar_jax.models import solvers, transformer, vqvae
from viar_jax.sample import sampler

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
SCHEDULES = ((10, 10), (5, 5), (10, 5), (10, 2))
QUICK_SCHEDULES = ((2, 2), (2, 1))
TARGET_SPEEDUP = 2.3  # VIAR 10->2 images/s over VAR's
TARGET_MEMORY = 0.40  # VIAR 10->2 memory over VAR's
PARAM_SCALE = 0.02  # std of the random params; small enough that activations stay finite
ROW_PREFIX = 'BENCHMARK_ROW '  # how an --isolate child hands its row back on stdout
MIB = 2**20


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything a row needs, with the backend-dependent defaults resolved (JSON-serialisable)."""
  depth: int
  pre_depth: int
  post_depth: int
  embed_dim: int
  num_heads: int
  batch: int
  dtype: str
  patch_nums: Tuple[int, ...]
  vocab_size: int
  z_channels: int
  vae_ch: int
  image_size: int
  schedules: Tuple[Tuple[int, int], ...]
  repeats: int
  isolate: bool
  cfg: float = 1.5
  top_k: int = 900
  top_p: float = 0.96
  num_classes: int = 1000


@dataclasses.dataclass(frozen=True)
class RowSpec:
  """One benchmark row: VAR (schedule None) or VIAR with an iteration schedule and cache mode."""
  model: str
  schedule: Optional[Tuple[int, int]] = None
  cache_mode: Optional[str] = None

  @property
  def label(self) -> str:
    if self.model == 'VAR':
      return 'VAR'
    return f'VIAR {self.schedule[0]}->{self.schedule[1]} {self.cache_mode}'


# --- settings -------------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--depth', type=int, default=None, help='VAR depth = VIAR nominal depth (30)')
  parser.add_argument('--embed_dim', type=int, default=None,
                      help='width of both models (default 64·depth on GPU/TPU, 256 on CPU)')
  parser.add_argument('--batch', type=int, default=None, help='images per call (8 GPU/TPU, 2 CPU)')
  parser.add_argument('--dtype', default=None, choices=('float32', 'bfloat16', 'float16'),
                      help='block compute dtype (bfloat16 on GPU/TPU, float32 on CPU)')
  parser.add_argument('--patch_nums', default=None,
                      help='comma-separated scales (default the 256px schedule 1,...,16)')
  parser.add_argument('--vae_ch', type=int, default=None, help='VQ-VAE base channels (160 GPU/TPU, 32 CPU)')
  parser.add_argument('--repeats', type=int, default=3, help='timed calls per row (median reported)')
  parser.add_argument('--quick', action='store_true', help='tiny models and schedules (smoke test)')
  parser.add_argument('--isolate', action=argparse.BooleanOptionalAction, default=None,
                      help='one fresh subprocess per row, for device peak memory (default on GPU/TPU)')
  parser.add_argument('--out', default='out/benchmark')
  parser.add_argument('--row', default=None, help=argparse.SUPPRESS)  # internal: an --isolate child
  return parser.parse_args(argv)


def _num_heads(embed_dim: int) -> int:
  """VAR's rule keeps 64 channels per head; fall back to the largest head count that divides C."""
  heads = max(1, embed_dim // 64)
  while embed_dim % heads:
    heads -= 1
  return heads


def resolve(args: argparse.Namespace) -> Settings:
  """Fills the defaults that depend on the backend (or on --quick) and checks the rest."""
  accelerator = jax.default_backend() != 'cpu'
  pick = lambda value, quick, gpu, cpu: value if value is not None else (
      quick if args.quick else (gpu if accelerator else cpu))
  depth = pick(args.depth, 4, 30, 30)
  embed_dim = pick(args.embed_dim, 64, 64 * depth, 256)
  patch_nums = (tuple(int(p) for p in args.patch_nums.split(',')) if args.patch_nums
                else (1, 2, 3, 4) if args.quick else PATCH_NUMS_256)
  if args.repeats < 1:
    raise ValueError(f'--repeats must be >= 1, got {args.repeats}')
  return Settings(
      depth=depth, pre_depth=1 if args.quick else 5, post_depth=1 if args.quick else 5,
      embed_dim=embed_dim, num_heads=_num_heads(embed_dim), batch=pick(args.batch, 2, 8, 2),
      dtype=pick(args.dtype, 'float32', 'bfloat16', 'float32'), patch_nums=patch_nums,
      vocab_size=64 if args.quick else 4096, z_channels=8 if args.quick else 32,
      vae_ch=pick(args.vae_ch, 32, 160, 32),
      # The VQ-VAE downsamples 16x (5 levels), and its latent side must be the finest scale.
      image_size=16 * patch_nums[-1],
      schedules=QUICK_SCHEDULES if args.quick else SCHEDULES, repeats=args.repeats,
      isolate=bool(args.isolate) if args.isolate is not None else (accelerator and _has_peak_stats()))


def settings_from_json(data: Dict) -> Settings:
  data = dict(data, patch_nums=tuple(data['patch_nums']),
              schedules=tuple(tuple(s) for s in data['schedules']))
  return Settings(**data)


def row_specs(settings: Settings) -> List[RowSpec]:
  rows = [RowSpec('VAR')]
  for schedule in settings.schedules:
    for mode in sampler.CACHE_MODES:
      rows.append(RowSpec('VIAR', tuple(schedule), mode))
  return rows


def transformer_config(settings: Settings, implicit: bool) -> transformer.TransformerConfig:
  return transformer.TransformerConfig(
      depth=settings.depth, embed_dim=settings.embed_dim, num_heads=settings.num_heads,
      num_classes=settings.num_classes, patch_nums=settings.patch_nums,
      vocab_size=settings.vocab_size, z_channels=settings.z_channels, implicit=implicit,
      pre_depth=settings.pre_depth, post_depth=settings.post_depth, dtype=settings.dtype)


def vae_config(settings: Settings) -> vqvae.VQVAEConfig:
  return vqvae.VQVAEConfig(vocab_size=settings.vocab_size, z_channels=settings.z_channels,
                           ch=settings.vae_ch, image_size=settings.image_size,
                           patch_nums=settings.patch_nums)


def iters_of(settings: Settings, spec: RowSpec) -> Optional[Tuple[int, ...]]:
  if spec.schedule is None:
    return None
  return solvers.iteration_schedule(*spec.schedule, len(settings.patch_nums))


def sample_options(settings: Settings, spec: RowSpec) -> sampler.SampleOptions:
  return sampler.SampleOptions(cfg=settings.cfg, top_k=min(settings.top_k, settings.vocab_size),
                               top_p=settings.top_p, iters=iters_of(settings, spec),
                               cache_mode=spec.cache_mode or 'per_iteration')


# --- models and memory facts ----------------------------------------------------------------------


def random_params(module, seed: int, *init_args):
  """N(0, 0.02²) params of the shapes `module.init` would make, without compiling the init.

  Drawn with NumPy: jitting hundreds of threefry draws (one per leaf) compiles for minutes on CPU.
  """
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *init_args)['params']
  rng = np.random.default_rng(seed)
  draw = lambda s: jnp.asarray(
      (PARAM_SCALE * rng.standard_normal(s.shape, dtype=np.float32)).astype(s.dtype))
  return jax.tree.map(draw, shapes)


def build_models(settings: Settings, names: Sequence[str] = ('VAR', 'VIAR')) -> Dict[str, Tuple]:
  """{'VAE': (module, params), and (module, params) for each of `names`}, random params."""
  vae = vqvae.VQVAE(vae_config(settings))
  img = jax.ShapeDtypeStruct((1, settings.image_size, settings.image_size, 3), jnp.float32)
  labels = jax.ShapeDtypeStruct((1,), jnp.int32)
  x = jax.ShapeDtypeStruct((1, sum(p * p for p in settings.patch_nums) - settings.patch_nums[0]**2,
                            settings.z_channels), jnp.float32)
  models = {'VAE': (vae, random_params(vae, 0, img))}
  for seed, name in enumerate(names, 1):
    model = transformer.Transformer(transformer_config(settings, implicit=name == 'VIAR'))
    models[name] = (model, random_params(model, seed, labels, x))
  return models


def param_bytes(params) -> int:
  return sum(int(np.prod(p.shape)) * p.dtype.itemsize for p in jax.tree.leaves(params))


def kv_cache_bytes(config: transformer.TransformerConfig, batch: int,
                   iters: Optional[Sequence[int]] = None,
                   cache_mode: Optional[str] = None) -> Dict[str, int]:
  """Analytic KV-cache bytes of one sampler call (CFG doubles the batch to 2B rows).

  allocated: what our sampler preallocates: every block one K and one V buffer of (2B, L, C); VIAR's
    implicit layer max(iters) such groups in per_iteration mode, one in final_iterate mode.
  logical: the same with the implicit part at what the reference's per-iteration cache holds at the
    end, sum_s n_s·pn_s² tokens (group i keeps the scales that ran more than i iterations).
  """
  per_token = 2 * (2 * batch) * config.embed_dim * jnp.dtype(config.dtype).itemsize  # K and V
  full = per_token * config.seq_len
  if not config.implicit:
    return {'allocated': config.depth * full, 'logical': config.depth * full,
            'implicit_allocated': 0, 'implicit_logical': 0}
  explicit = (config.pre_depth + config.post_depth) * full
  if cache_mode == 'per_iteration':
    implicit_allocated = max(iters) * full
    implicit_logical = per_token * sum(n * p * p for n, p in zip(iters, config.patch_nums))
  else:
    implicit_allocated = implicit_logical = full
  return {'allocated': explicit + implicit_allocated, 'logical': explicit + implicit_logical,
          'implicit_allocated': implicit_allocated, 'implicit_logical': implicit_logical}


def _has_peak_stats() -> bool:
  stats = jax.devices()[0].memory_stats()
  return bool(stats) and 'peak_bytes_in_use' in stats


def device_peak_bytes() -> Optional[int]:
  """Peak device bytes in use since the process started (None where the backend has no counter)."""
  stats = jax.devices()[0].memory_stats()
  return int(stats['peak_bytes_in_use']) if stats and 'peak_bytes_in_use' in stats else None


# --- one row --------------------------------------------------------------------------------------


def compile_sampler(sample, args) -> Tuple[object, float, Dict[str, int]]:
  """-> (executable, compile seconds, XLA's compiled memory analysis in bytes incl. 'total')."""
  t0 = time.perf_counter()
  compiled = sample.lower(*args).compile()
  seconds = time.perf_counter() - t0
  analysis = compiled.memory_analysis()
  memory = {'temp': int(analysis.temp_size_in_bytes),
            'argument': int(analysis.argument_size_in_bytes),
            'output': int(analysis.output_size_in_bytes),
            'alias': int(analysis.alias_size_in_bytes)}  # outputs reusing argument buffers
  memory['total'] = memory['temp'] + memory['argument'] + memory['output'] - memory['alias']
  return compiled, seconds, memory


def time_calls(fn, args, repeats: int) -> List[float]:
  """Wall seconds of `repeats` calls after one untimed warm-up, each blocked on its outputs."""
  jax.block_until_ready(fn(*args))  # first-call allocations, thread pools
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return times


def measure_row(settings: Settings, spec: RowSpec, models: Dict[str, Tuple]) -> Dict:
  """Compiles the row's sampler once, reads XLA's memory analysis, times `repeats` calls."""
  vae, vae_params = models['VAE']
  model, params = models[spec.model]
  options = sample_options(settings, spec)
  args = (vae_params, params, jax.random.PRNGKey(0),
          sampler.random_labels(jax.random.PRNGKey(1), settings.batch, settings.num_classes))
  # Timing the AOT-compiled executable avoids a second compile on the first jitted call.
  compiled, compile_s, memory = compile_sampler(sampler.make_sampler(vae, model, options), args)
  times = time_calls(compiled, args, settings.repeats)
  seconds = statistics.median(times)
  return {'model': spec.model, 'label': spec.label,
          'schedule': None if spec.schedule is None else list(spec.schedule),
          'iters': None if options.iters is None else list(options.iters),
          'cache_mode': spec.cache_mode, 'compile_s': compile_s, 'times_s': times,
          'seconds': seconds, 'images_per_s': settings.batch / seconds,
          'compiled_memory': memory, 'compiled_total_bytes': memory['total'],
          'device_peak_bytes': device_peak_bytes() if settings.isolate else None,
          'param_bytes': param_bytes(params),
          'kv_cache': kv_cache_bytes(model.config, settings.batch, options.iters, spec.cache_mode)}


def run_isolated(settings: Settings, spec: RowSpec) -> Dict:
  """Runs one row in a fresh interpreter, so the device's peak counter covers that row alone."""
  payload = json.dumps({'settings': dataclasses.asdict(settings), 'spec': dataclasses.asdict(spec)})
  root = pathlib.Path(__file__).resolve().parents[1]
  done = subprocess.run([sys.executable, '-m', 'launch.benchmark', '--row', payload], cwd=root,
                        stdout=subprocess.PIPE, text=True, check=True)
  for line in done.stdout.splitlines():
    if line.startswith(ROW_PREFIX):
      return json.loads(line[len(ROW_PREFIX):])
  raise RuntimeError(f'row {spec.label}: the subprocess printed no result:\n{done.stdout}')


def run_child(payload: str) -> None:
  """The --isolate child: builds only what its row needs and prints the row as one JSON line."""
  data = json.loads(payload)
  settings = settings_from_json(data['settings'])
  schedule = data['spec']['schedule']
  spec = RowSpec(**dict(data['spec'], schedule=tuple(schedule) if schedule else None))
  models = build_models(settings, names=(spec.model,))  # only this row's params on the device
  print(ROW_PREFIX + json.dumps(measure_row(settings, spec, models)), flush=True)


# --- report ---------------------------------------------------------------------------------------


def memory_kind(settings: Settings) -> str:
  if settings.isolate and _has_peak_stats():
    return 'device peak (fresh process per row)'
  return 'XLA compiled: temp + argument + output'


def memory_bytes(row: Dict) -> int:
  """The row's memory measure: the device peak where measured, else the compiled total."""
  peak = row.get('device_peak_bytes')
  return peak if peak else row['compiled_total_bytes']


def add_ratios(rows: List[Dict]) -> None:
  var = next(r for r in rows if r['model'] == 'VAR')
  for row in rows:
    row['memory_bytes'] = memory_bytes(row)
    row['speedup_vs_var'] = row['images_per_s'] / var['images_per_s']
    row['memory_vs_var'] = row['memory_bytes'] / memory_bytes(var)


def format_table(rows: List[Dict], settings: Settings) -> str:
  header = ['model', 'schedule', 'cache mode', 'images/s', 'x VAR', f'memory MiB ({memory_kind(settings)})',
            'x VAR', 'KV-cache MiB (allocated)', 'KV-cache MiB (reference logical)', 'compile s']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for r in rows:
    model = f'VAR-d{settings.depth}' if r['model'] == 'VAR' else (
        f'VIAR-d{settings.depth} ({settings.pre_depth}+1+{settings.post_depth})')
    schedule = '-' if r['schedule'] is None else f'{r["schedule"][0]}->{r["schedule"][1]}'
    cells = [model, schedule, r['cache_mode'] or '-', f'{r["images_per_s"]:.3f}',
             f'{r["speedup_vs_var"]:.2f}', f'{r["memory_bytes"] / MIB:.1f}', f'{r["memory_vs_var"]:.3f}',
             f'{r["kv_cache"]["allocated"] / MIB:.2f}', f'{r["kv_cache"]["logical"] / MIB:.2f}',
             f'{r["compile_s"]:.1f}']
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def table_notes(rows: List[Dict], settings: Settings) -> str:
  schedules = sorted({(tuple(r['schedule']), tuple(r['iters'])) for r in rows if r['schedule']})
  notes = [f'Schedules (iterations per scale, solvers.iteration_schedule over {len(settings.patch_nums)} '
           f'scales): ' + '; '.join(f'{a}->{b} = {it}' for (a, b), it in schedules) + '.',
           'KV-cache MiB (allocated): our sampler preallocates full-length (2B, L, C) K and V buffers per '
           'block; the VIAR implicit layer gets max(iters) of them in per_iteration mode, 1 in '
           'final_iterate mode. (reference logical): the implicit part counted as the reference holds it, '
           'sum_s n_s * pn_s^2 tokens in per_iteration mode.',
           'Memory includes the params (argument bytes) and the sampler outputs (tokens, images and the '
           'guided logits of every scale, the same for both models).']
  return '\n'.join(f'* {n}' for n in notes)


def target_rows(rows: List[Dict], settings: Settings) -> List[Dict]:
  """VIAR rows at the issue's 10->2 schedule, or at the last (most aggressive) one of a --quick run."""
  target = (10, 2) if (10, 2) in settings.schedules else settings.schedules[-1]
  return [r for r in rows if r['schedule'] is not None and tuple(r['schedule']) == tuple(target)]


def check_targets(rows: List[Dict], settings: Settings) -> List[Dict]:
  results = []
  for r in target_rows(rows, settings):
    results.append({'label': r['label'], 'speedup_vs_var': r['speedup_vs_var'],
                    'memory_vs_var': r['memory_vs_var'],
                    'speedup_met': r['speedup_vs_var'] >= TARGET_SPEEDUP,
                    'memory_met': r['memory_vs_var'] <= TARGET_MEMORY})
  return results


def format_targets(targets: List[Dict], settings: Settings) -> str:
  lines = [f'Targets (reported, not asserted): VIAR 10->2 >= {TARGET_SPEEDUP}x VAR-d{settings.depth} '
           f'images/s and <= {TARGET_MEMORY:.2f}x its memory.']
  if (10, 2) not in settings.schedules:
    lines.append(f'(10->2 is not in this run; checking {settings.schedules[-1][0]}->'
                 f'{settings.schedules[-1][1]} instead.)')
  for t in targets:
    met = lambda ok: 'met' if ok else 'NOT met'
    lines.append(f'  {t["label"]}: throughput {t["speedup_vs_var"]:.2f}x ({met(t["speedup_met"])}), '
                 f'memory {t["memory_vs_var"]:.3f}x ({met(t["memory_met"])})')
  return '\n'.join(lines)


def describe(settings: Settings) -> str:
  device = jax.devices()[0]
  return (f'backend {jax.default_backend()}, device {device.device_kind} ({device}), '
          f'jax {jax.__version__}\n'
          f'config: width C={settings.embed_dim} ({settings.num_heads} heads), VAR depth {settings.depth}, '
          f'VIAR {settings.pre_depth}+implicit+{settings.post_depth} (nominal depth {settings.depth}), '
          f'batch {settings.batch} (x2 for CFG), dtype {settings.dtype}, patch_nums '
          f'{settings.patch_nums} (L={sum(p * p for p in settings.patch_nums)}), vocab '
          f'{settings.vocab_size}, z {settings.z_channels}, VQ-VAE ch {settings.vae_ch} at '
          f'{settings.image_size}px, cfg {settings.cfg}, top_k '
          f'{min(settings.top_k, settings.vocab_size)}, top_p {settings.top_p}, repeats '
          f'{settings.repeats}, memory: {memory_kind(settings)}')


def write_outputs(out_dir: pathlib.Path, settings: Settings, header: str, table: str, notes: str,
                  targets_text: str, rows: List[Dict], targets: List[Dict]) -> None:
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / 'benchmark.md').write_text(
      f'# Sampling benchmark\n\n```\n{header}\n```\n\n{table}\n\n{notes}\n\n```\n{targets_text}\n```\n')
  (out_dir / 'benchmark.json').write_text(json.dumps(
      {'backend': jax.default_backend(), 'device': jax.devices()[0].device_kind,
       'memory_kind': memory_kind(settings), 'settings': dataclasses.asdict(settings), 'rows': rows,
       'targets': targets}, indent=1))
  write_plot(out_dir / 'benchmark.png', rows)


def write_plot(path: pathlib.Path, rows: List[Dict]) -> None:
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    print('matplotlib is not installed: no plot written')
    return
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  labels = [r['label'] for r in rows]
  for ax, key, title in ((axes[0], 'speedup_vs_var', 'images/s vs VAR'),
                         (axes[1], 'memory_vs_var', 'memory vs VAR')):
    ax.barh(labels, [r[key] for r in rows])
    ax.axvline(1.0, color='k', lw=0.8)
    ax.set_title(title)
    ax.invert_yaxis()
  axes[1].set_yticklabels([])
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  print(f'plot written to {path}')


# --- driver ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> List[Dict]:
  """The whole benchmark: prints progress and the table, writes --out; returns the rows."""
  start = time.perf_counter()
  settings = resolve(args)
  header = describe(settings)
  print(header, flush=True)
  specs = row_specs(settings)
  models = None if settings.isolate else build_models(settings)
  if models is not None:
    print('params: ' + ', '.join(f'{n} {param_bytes(p) / MIB:.1f} MiB' for n, (_, p) in models.items()),
          flush=True)
  rows = []
  for i, spec in enumerate(specs, 1):
    row = run_isolated(settings, spec) if settings.isolate else measure_row(settings, spec, models)
    rows.append(row)
    print(f'[{i}/{len(specs)}] {spec.label}: compile {row["compile_s"]:.1f} s, '
          f'{row["images_per_s"]:.3f} images/s (median of {settings.repeats}), memory '
          f'{memory_bytes(row) / MIB:.1f} MiB, elapsed {time.perf_counter() - start:.0f} s', flush=True)
  add_ratios(rows)
  table, notes = format_table(rows, settings), table_notes(rows, settings)
  targets = check_targets(rows, settings)
  targets_text = format_targets(targets, settings)
  print(f'\n{table}\n\n{notes}\n')
  write_outputs(pathlib.Path(args.out), settings, header, table, notes, targets_text, rows, targets)
  print(f'wrote {pathlib.Path(args.out) / "benchmark.md"} and benchmark.json; total '
        f'{time.perf_counter() - start:.0f} s\n')
  print(targets_text)
  return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
  # An --isolate parent must not reserve most of the accelerator's memory for itself (JAX's default),
  # or its children would run short; the measures used here do not depend on preallocation.
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  args = parse_args(argv)
  if args.row is not None:
    run_child(args.row)
  else:
    run(args)


if __name__ == '__main__':
  main()
