"""Sampling throughput and memory: VAR-d{D} vs VIAR (pre 5 / implicit / post 5) at the same width.

    rows = sampling.run(sampling.resolve(quick=True), 'out/benchmark')   # launch.benchmark's flags

Both models (and the VQ-VAE decoder inside the sampler) get random parameters: throughput and memory do
not depend on the values. Rows: VAR, then VIAR per iteration schedule (10->10, 5->5, 10->5, 10->2 over
the scales) and KV-cache mode (per_iteration, final_iterate). Per row it reports

  images/s   batch / median wall time of `repeats` calls of the compiled sampler (after one warm-up
             call), outputs blocked on;
  memory     XLA's compiled memory (profiling.CompileReport: argument + output + temp - aliased bytes,
             on every backend), or, with `isolate` where the device reports it, the device's peak
             bytes in use measured in a fresh subprocess per row (the peak counter cannot be reset
             within a process);
  KV cache   analytic bytes of the caches the sampler preallocates, and of what the reference keeps
             (they differ for per_iteration: we allocate max(iters) full-length groups, the reference
             holds sum_s n_s·pn_s² tokens).

Writes benchmark.md, benchmark.json (and benchmark.png with the `plot` extra) under `out`, and
reports (does not assert) the issue's targets: VIAR 10->2 at >= 2.3x VAR's images/s and <= 0.40x its
memory.

Against the official PyTorch sampler (`reference_src`, a FoundationVision/VAR checkout, with `torch`
installed): the VAR row's calls and the reference's `autoregressive_infer_cfg` at the same shapes,
batch, CFG and top-k/top-p alternate call by call (both see the same machine load; torch on as many
threads as there are cores), and so do the two VQ-VAE decoders alone. The comparison table has the
whole call, the decode alone, the transformer part (their difference) and the VIAR rows (VIAR has
no public code: its reference is `autoregressive_infer_cfg` with the implicit loop, made of the
reference's own modules, torch_reference.build_viar; per_iteration rows only), with the speedup over the reference, our compiled FLOPs and the share
of the matmul floor (FLOPs / a measured 4096² matmul rate) reached. Without torch or the sources the
same table has JAX-only rows. Preset `var_d16_cpu`: VAR-d16 shapes (C=1024, 16 heads, vocab 4096,
VQ-VAE ch 160 at 256px), batch 4, fp32, VIAR 3+implicit+3 at 10->10 and 10->2 (per_iteration).
"""
import dataclasses
import json
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from viar_jax import plotting, profiling, xla_options
from viar_jax.bench import torch_reference
from viar_jax.io import released
from viar_jax.models import factory, transformer, vqvae
from viar_jax.sample import sampler, schedule


SCHEDULES = ((10, 10), (5, 5), (10, 5), (10, 2))
QUICK_SCHEDULES = ((2, 2), (2, 1))
TARGET_SPEEDUP = 2.3  # VIAR 10->2 images/s over VAR's
TARGET_MEMORY = 0.40  # VIAR 10->2 memory over VAR's
PARAM_SCALE = 0.02  # std of the random params; small enough that activations stay finite
ROW_PREFIX = 'BENCHMARK_ROW '  # how an --isolate child hands its row back on stdout
MIB = 2**20
DTYPES = ('float32', 'bfloat16', 'float16')


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
  cache_modes: Tuple[str, ...] = sampler.CACHE_MODES  # VIAR rows per schedule


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

# Named shape sets; explicit arguments override them. var_d16_cpu: the released VAR-d16 and its
# tokenizer at 256px, the shapes of the PyTorch comparison (--reference_src).
PRESETS = {
    'var_d16_cpu': dict(depth=16, embed_dim=1024, batch=4, dtype='float32', vae_ch=160,
                        pre_depth=3, post_depth=3, schedules=((10, 10), (10, 2)),
                        cache_modes=('per_iteration',)),
}


def _num_heads(embed_dim: int) -> int:
  """VAR's rule keeps 64 channels per head; fall back to the largest head count that divides C."""
  heads = max(1, embed_dim // 64)
  while embed_dim % heads:
    heads -= 1
  return heads


def resolve(*, depth: Optional[int] = None, embed_dim: Optional[int] = None,
            batch: Optional[int] = None, dtype: Optional[str] = None,
            patch_nums: Optional[Sequence[int]] = None, vae_ch: Optional[int] = None,
            repeats: int = 3, quick: bool = False, isolate: Optional[bool] = None,
            preset: Optional[str] = None) -> Settings:
  """Fills the defaults that depend on the backend (or on `quick`) and checks the rest.

  None means the default: depth 30; width 64·depth on GPU/TPU, 256 on CPU; batch 8 / 2; dtype
  bfloat16 / float32; the 256px scales; VQ-VAE channels 160 / 32; isolate where the device counts
  its peak memory. `quick`: tiny models (depth 4, width 64, scales 1-4) and schedules. `preset`: a
  name in PRESETS, whose values replace the defaults (explicit arguments still win).
  """
  if preset is not None and preset not in PRESETS:
    raise ValueError(f'--preset must be one of {tuple(PRESETS)}, got {preset!r}')
  if preset is not None and quick:
    raise ValueError('--preset and --quick exclude each other')
  fixed = dict(PRESETS.get(preset, {}))
  depth, embed_dim, batch, dtype, vae_ch = (
      fixed.pop(name) if value is None and name in fixed else value
      for name, value in (('depth', depth), ('embed_dim', embed_dim), ('batch', batch),
                          ('dtype', dtype), ('vae_ch', vae_ch)))
  accelerator = jax.default_backend() != 'cpu'
  pick = lambda value, small, gpu, cpu: value if value is not None else (
      small if quick else (gpu if accelerator else cpu))
  depth = pick(depth, 4, 30, 30)
  embed_dim = pick(embed_dim, 64, 64 * depth, 256)
  patch_nums = (tuple(int(p) for p in patch_nums) if patch_nums
                else (1, 2, 3, 4) if quick else released.PATCH_NUMS_256)
  if repeats < 1:
    raise ValueError(f'--repeats must be >= 1, got {repeats}')
  if dtype is not None and dtype not in DTYPES:
    raise ValueError(f'--dtype must be one of {DTYPES}, got {dtype!r}')
  settings = Settings(
      depth=depth, pre_depth=1 if quick else 5, post_depth=1 if quick else 5,
      embed_dim=embed_dim, num_heads=_num_heads(embed_dim), batch=pick(batch, 2, 8, 2),
      dtype=pick(dtype, 'float32', 'bfloat16', 'float32'), patch_nums=patch_nums,
      vocab_size=64 if quick else 4096, z_channels=8 if quick else 32,
      vae_ch=pick(vae_ch, 32, 160, 32),
      # The VQ-VAE downsamples 16x (5 levels), and its latent side must be the finest scale.
      image_size=16 * patch_nums[-1],
      schedules=QUICK_SCHEDULES if quick else SCHEDULES, repeats=repeats,
      isolate=bool(isolate) if isolate is not None else (
          accelerator and profiling.device_peak_bytes() is not None))
  fixed = {k: v for k, v in fixed.items() if k in ('pre_depth', 'post_depth', 'schedules', 'cache_modes')}
  return dataclasses.replace(settings, **fixed)


def settings_from_json(data: Dict) -> Settings:
  data = dict(data, patch_nums=tuple(data['patch_nums']),
              schedules=tuple(tuple(s) for s in data['schedules']),
              cache_modes=tuple(data.get('cache_modes', sampler.CACHE_MODES)))
  return Settings(**data)


def row_specs(settings: Settings) -> List[RowSpec]:
  rows = [RowSpec('VAR')]
  for ramp in settings.schedules:
    for mode in settings.cache_modes:
      rows.append(RowSpec('VIAR', tuple(ramp), mode))
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
  return schedule.iteration_schedule(*spec.schedule, len(settings.patch_nums))


def sample_options(settings: Settings, spec: RowSpec) -> sampler.SampleOptions:
  return sampler.SampleOptions(cfg=settings.cfg, top_k=min(settings.top_k, settings.vocab_size),
                               top_p=settings.top_p, iters=iters_of(settings, spec),
                               cache_mode=spec.cache_mode or 'per_iteration')


# --- models and memory facts ----------------------------------------------------------------------


def build_models(settings: Settings, names: Sequence[str] = ('VAR', 'VIAR')) -> Dict[str, Tuple]:
  """{'VAE': (module, params), and (module, params) for each of `names`}, random params."""
  vae_cfg = vae_config(settings)
  models = {'VAE': (vqvae.VQVAE(vae_cfg), factory.random_params(vae_cfg, 0, PARAM_SCALE))}
  for seed, name in enumerate(names, 1):
    cfg = transformer_config(settings, implicit=name == 'VIAR')
    models[name] = (transformer.Transformer(cfg), factory.random_params(cfg, seed, PARAM_SCALE))
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


# --- one row --------------------------------------------------------------------------------------


def _wall(call) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(call())
  return time.perf_counter() - t0


def time_calls(fn, args, repeats: int) -> List[float]:
  """Wall seconds of `repeats` calls after one untimed warm-up, each blocked on its outputs."""
  return time_interleaved(fn, args, repeats)[0]


def time_interleaved(fn, args, repeats: int, other=None) -> Tuple[List[float], List[float]]:
  """(ours, other's) wall seconds of `repeats` calls each after one untimed warm-up of each; `other`
  (a no-argument call, e.g. the PyTorch reference) runs right after each of ours, so that both see
  the same load of a shared machine. Without `other` its list is empty."""
  jax.block_until_ready(fn(*args))  # first-call allocations, thread pools
  if other is not None:
    other()
  times, other_times = [], []
  for _ in range(repeats):
    times.append(_wall(lambda: fn(*args)))
    if other is not None:
      other_times.append(_wall(other))
  return times, other_times


def measure_row(settings: Settings, spec: RowSpec, models: Dict[str, Tuple],
                reference: Optional[Dict] = None) -> Dict:
  """Compiles the row's sampler once, reads XLA's memory analysis, times `repeats` calls; for VAR
  with `reference` (see `load_reference`), interleaved with the PyTorch sampler's calls."""
  vae, vae_params = models['VAE']
  model, params = models[spec.model]
  options = sample_options(settings, spec)
  args = (vae_params, params, jax.random.PRNGKey(0),
          sampler.random_labels(jax.random.PRNGKey(1), settings.batch, settings.num_classes))
  # Timing the AOT-compiled executable avoids a second compile on the first jitted call.
  compiled, report = profiling.compile_with_report(sampler.make_sampler(vae, model, options), *args)
  other = None
  if reference is not None and spec.model == 'VAR':
    other = torch_reference.sample_call(reference['var'], settings, np.asarray(args[3]))
  elif reference is not None and spec.cache_mode == 'per_iteration':  # the reference's semantics
    other = torch_reference.viar_sample_call(reference['viar'], settings, np.asarray(args[3]),
                                             options.iters)
  times, reference_times = time_interleaved(compiled, args, settings.repeats, other)
  seconds = statistics.median(times)
  return {'reference_times_s': reference_times or None,
          'reference_seconds': statistics.median(reference_times) if reference_times else None,
          'model': spec.model, 'label': spec.label,
          'schedule': None if spec.schedule is None else list(spec.schedule),
          'iters': None if options.iters is None else list(options.iters),
          'cache_mode': spec.cache_mode, 'compile_s': report.compile_s, 'times_s': times,
          'seconds': seconds, 'images_per_s': settings.batch / seconds,
          'compiled_memory': report.as_dict(), 'compiled_total_bytes': report.total_bytes,
          'flops': report.flops,
          'device_peak_bytes': profiling.device_peak_bytes() if settings.isolate else None,
          'param_bytes': param_bytes(params),
          'kv_cache': kv_cache_bytes(model.config, settings.batch, options.iters, spec.cache_mode)}


def run_isolated(settings: Settings, spec: RowSpec) -> Dict:
  """Runs one row in a fresh interpreter, so the device's peak counter covers that row alone."""
  payload = json.dumps({'settings': dataclasses.asdict(settings), 'spec': dataclasses.asdict(spec)})
  child = 'import sys; from viar_jax.bench import sampling; sampling.run_child(sys.argv[1])'
  root = pathlib.Path(__file__).resolve().parents[2]
  done = subprocess.run([sys.executable, '-c', child, payload], cwd=root, stdout=subprocess.PIPE,
                        text=True, check=True)
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
  if settings.isolate and profiling.device_peak_bytes() is not None:
    return 'device peak (fresh process per row)'
  return 'XLA compiled: argument + output + temp - aliased'


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
  notes = [f'Schedules (iterations per scale, schedule.iteration_schedule over {len(settings.patch_nums)} '
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
                  targets_text: str, rows: List[Dict], targets: List[Dict],
                  comparison: Optional[Dict] = None) -> None:
  out_dir.mkdir(parents=True, exist_ok=True)
  versus = '' if comparison is None else f'\n## Against the PyTorch reference\n\n{comparison["text"]}\n'
  (out_dir / 'benchmark.md').write_text(
      f'# Sampling benchmark\n\n```\n{header}\n```\n\n{table}\n\n{notes}\n\n```\n{targets_text}\n```\n'
      + versus)
  (out_dir / 'benchmark.json').write_text(json.dumps(
      {'backend': jax.default_backend(), 'device': jax.devices()[0].device_kind,
       'memory_kind': memory_kind(settings), 'settings': dataclasses.asdict(settings), 'rows': rows,
       'targets': targets, 'comparison': comparison}, indent=1))
  plotting.ratio_bars(out_dir / 'benchmark.png', [r['label'] for r in rows],
                      [('images/s vs VAR', [r['speedup_vs_var'] for r in rows]),
                       ('memory vs VAR', [r['memory_vs_var'] for r in rows])])


# --- comparison with the PyTorch reference --------------------------------------------------------


def load_reference(settings: Settings, src: Optional[str]) -> Tuple[Optional[Dict], str]:
  """({'vae', 'var', 'viar'} reference modules at the settings' shapes, or None; a line saying
  which). 'viar' is made of the reference's modules (torch_reference.build_viar)."""
  if not src:
    return None, 'reference: none given (--reference_src); JAX-only rows'
  try:
    ref = torch_reference.load(src)
    vae, var = torch_reference.build(ref, settings)
  except torch_reference.ReferenceUnavailable as e:
    return None, f'reference: unavailable ({e}); JAX-only rows'
  import torch  # pylint: disable=import-outside-toplevel  (load() succeeded, so torch is there)
  return ({'vae': vae, 'var': var, 'viar': torch_reference.build_viar(ref, vae, settings)},
          f'reference: PyTorch {torch.__version__} eager, FoundationVision/VAR from {src}, '
          f'{torch.get_num_threads()} threads (VIAR: its sampler with the implicit loop, of the '
          f'same modules; VIAR has no public code)')


def measure_decoder(settings: Settings, models: Dict[str, Tuple],
                    reference: Optional[Dict] = None) -> Dict:
  """The VQ-VAE decode alone (post_quant_conv + decoder + clamp of one f̂), ours compiled, interleaved
  with the reference's `fhat_to_img` where given."""
  vae, vae_params = models['VAE']
  n = settings.patch_nums[-1]
  f_hat = jax.random.normal(jax.random.PRNGKey(0), (settings.batch, n, n, settings.z_channels))
  decode = jax.jit(lambda p, f: vae.apply({'params': p}, f, method=vqvae.VQVAE.fhat_to_img))
  compiled, report = profiling.compile_with_report(decode, vae_params, f_hat)
  other = None if reference is None else torch_reference.decode_call(reference['vae'], settings)
  times, reference_times = time_interleaved(compiled, (vae_params, f_hat), settings.repeats, other)
  return {'times_s': times, 'seconds': statistics.median(times), 'flops': report.flops,
          'reference_times_s': reference_times or None,
          'reference_seconds': statistics.median(reference_times) if reference_times else None}


def matmul_gflops(n: int = 4096, repeats: int = 3) -> float:
  """This machine's fp32 rate on one n x n matmul (best of `repeats`), the yardstick of the floor."""
  x = jnp.ones((n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul).lower(x, x).compile()
  best = min(time_interleaved(matmul, (x, x), repeats)[0])
  return 2 * n**3 / best / 1e9


def comparison_rows(rows: List[Dict], decoder: Dict, settings: Settings) -> List[Dict]:
  """The issue's table: VAR whole call, decode alone, transformer part (difference), VIAR rows."""
  var = next(r for r in rows if r['model'] == 'VAR')
  both = lambda ours, ref: {'ours_s': ours, 'reference_s': ref,
                            'speedup': ref / ours if ref and ours else None}
  ref_transformer = (var['reference_seconds'] - decoder['reference_seconds']
                     if var['reference_seconds'] and decoder['reference_seconds'] else None)
  out = [dict(label=f'VAR-d{settings.depth} whole call incl. {settings.image_size}² decode',
              **both(var['seconds'], var['reference_seconds'])),
         dict(label='VQ-VAE decode alone', **both(decoder['seconds'], decoder['reference_seconds'])),
         dict(label='transformer part (difference)',
              **both(var['seconds'] - decoder['seconds'], ref_transformer))]
  for r in rows:
    if r['model'] == 'VIAR':
      out.append(dict(label=f'VIAR-d{settings.depth} ({settings.pre_depth}+1+{settings.post_depth}) '
                      f'{r["schedule"][0]}->{r["schedule"][1]} {r["cache_mode"]}, whole call',
                      **both(r['seconds'], r['reference_seconds'])))
  return out


def format_comparison(table: List[Dict], var_row: Dict, decoder: Dict, rate_gflops: float,
                      reference_line: str) -> str:
  seconds = lambda s: '-' if s is None else f'{s:.2f} s'
  lines = [reference_line,
           f'viar-jax: XLA ({jax.default_backend()}) on {torch_reference.cpu_threads()} cores, '
           f'{xla_options.summary()}; medians of interleaved calls',
           '', '| | PyTorch reference | viar-jax | speedup (reference / ours) |', '|---|---|---|---|']
  for r in table:
    speedup = '-' if r['speedup'] is None else f'{r["speedup"]:.2f}x'
    lines.append(f'| {r["label"]} | {seconds(r["reference_s"])} | {seconds(r["ours_s"])} | {speedup} |')
  if var_row.get('flops') and rate_gflops:
    floor = var_row['flops'] / (rate_gflops * 1e9)
    dec = f', {decoder["flops"] / 1e12:.3g} of it the decoder' if decoder.get('flops') else ''
    lines += ['', f'Our compiled VAR sampler: {var_row["flops"] / 1e12:.3g} TFLOP per call{dec}; a 4096² '
              f'fp32 matmul runs at {rate_gflops:.0f} GFLOP/s here, so the floor is {floor:.1f} s and the '
              f'whole call reaches {floor / var_row["seconds"]:.0%} of it.']
  return '\n'.join(lines)


def run_comparison(rows: List[Dict], decoder: Dict, settings: Settings, reference_line: str) -> Dict:
  var = next(r for r in rows if r['model'] == 'VAR')
  table = comparison_rows(rows, decoder, settings)
  rate = matmul_gflops()
  text = format_comparison(table, var, decoder, rate, reference_line)
  return {'rows': table, 'decoder': decoder, 'matmul_gflops': rate, 'reference': reference_line,
          'text': text}


# --- driver ---------------------------------------------------------------------------------------


def run(settings: Settings, out, reference_src: Optional[str] = None) -> List[Dict]:
  """The whole benchmark: prints progress and the table, writes reports to `out`; returns the rows.

  Then the comparison table (see the module doc): against the PyTorch reference where
  `reference_src` and torch import, JAX-only rows otherwise.

  An isolated run should start with XLA_PYTHON_CLIENT_PREALLOCATE=false (launch.benchmark sets it):
  a parent holding most of the accelerator's memory would starve its row subprocesses.
  """
  start = time.perf_counter()
  out = pathlib.Path(out)
  header = describe(settings)
  print(header, flush=True)
  specs = row_specs(settings)
  reference, reference_line = load_reference(settings, reference_src)
  print(reference_line, flush=True)
  models = None if settings.isolate else build_models(settings)
  if models is not None:
    print('params: ' + ', '.join(f'{n} {param_bytes(p) / MIB:.1f} MiB' for n, (_, p) in models.items()),
          flush=True)
  rows = []
  for i, spec in enumerate(specs, 1):
    if settings.isolate:  # the reference shares no process with an isolated row
      row = run_isolated(settings, spec)
    else:
      row = measure_row(settings, spec, models, reference)
    rows.append(row)
    print(f'[{i}/{len(specs)}] {spec.label}: compile {row["compile_s"]:.1f} s, '
          f'{row["images_per_s"]:.3f} images/s (median of {settings.repeats}), memory '
          f'{memory_bytes(row) / MIB:.1f} MiB, elapsed {time.perf_counter() - start:.0f} s', flush=True)
  add_ratios(rows)
  table, notes = format_table(rows, settings), table_notes(rows, settings)
  targets = check_targets(rows, settings)
  targets_text = format_targets(targets, settings)
  print(f'\n{table}\n\n{notes}\n')
  decoder = measure_decoder(settings, models or build_models(settings, names=()), reference)
  comparison = run_comparison(rows, decoder, settings, reference_line)
  print(comparison['text'] + '\n')
  write_outputs(out, settings, header, table, notes, targets_text, rows, targets, comparison)
  print(f'wrote {out / "benchmark.md"} and benchmark.json; total '
        f'{time.perf_counter() - start:.0f} s\n')
  print(targets_text)
  return rows
