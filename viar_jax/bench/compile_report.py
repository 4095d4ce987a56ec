"""The TPU compiler's verdict on a run's memory and sharding, from a CPU-only machine.

    devices = compile_report.topology_devices('v5p:2x4x4')   # or 'v5p-64', 'v5e-256', 'cpu:8'
    report = compile_report.train_report(config, devices, 'v5p:2x4x4')   # the real train step
    report = compile_report.sample_report(config, devices, 'v5e:1x1', batch=64)   # one chip
    compile_report.write(report, 'out/compile_report'); print(compile_report.table(report))

The train step is the one `loop.train` runs (`train_step.sharded_train_step` with the config's model,
optimizer, (data, fsdp) mesh, replicated implicit layer and donated state), lowered from shapes
(no checkpoint is read; the tokenizer's params are ShapeDtypeStructs) and compiled by libtpu for the
devices of a TPU topology (`jax.experimental.topologies`, extra `tpu-aot`). Nothing runs on a TPU.
`cpu:N` compiles the same program for N CPU devices (tests; no HBM verdict).

Memory per device is `profiling.CompileReport` (arguments + outputs + temp - aliased). The HBM
limit is the one the TPU compiler enforces, read from its out-of-memory message for a probe program
(e.g. 15.75 GiB of a v5e's 16 GiB); where that fails, the chip's nominal HBM (HBM_BYTES, Google
Cloud TPU docs). A program over the limit does not compile: the report then has fits=False, the
compiler's message and the bytes it says were required, and its per-part memory from a second
compile that may exceed HBM (libtpu's xla_tpu_no_crash_on_oom; a program never to be run).

FLOPs: `flops_per_device` is XLA's cost analysis of the partitioned (per-device) program,
`flops_per_step` that times the device count; VIAR's data-dependent while loops (K no-grad
iterations) are counted once by the compiler, so `model_flops_per_step` (viar_jax.train.mfu, with
the mean K and m) is the better count of the work for VIAR.
"""
import copy
import importlib.util
import json
import math
import pathlib
import re
from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding

from viar_jax import profiling
from viar_jax.io import run_config
from viar_jax.models import factory, transformer, vqvae
from viar_jax.sample import sampler
from viar_jax.train import loop, mfu, sharding, train_step

GIB = 2**30
# Nominal HBM per JAX device (one chip; v4 and v5p in megacore mode), Google Cloud TPU docs
# (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e). Used only where the compiler's limit is unknown.
HBM_BYTES = {'TPU v4': 32 * GIB, 'TPU v5 lite': 16 * GIB, 'TPU v5': 95 * GIB,
             'TPU v6 lite': 32 * GIB}
# libtpu's generation names -> chip config (v4: both cores of a chip as one device, as JAX uses it).
GENERATIONS = {'v4': 'megacore', 'v5e': 'default', 'v5p': 'default', 'v6e': 'default'}
# Cloud accelerator types -> topologies. v4-N / v5p-N count TensorCores (2 per chip); v5e-N /
# v6e-N count chips (cloud.google.com/tpu/docs/v5p, .../v5e).
_CUBE_SHAPES = {4: '2x2x1', 8: '2x2x2', 16: '2x2x4', 32: '2x4x4', 64: '4x4x4', 128: '4x4x8',
                256: '4x8x8', 512: '8x8x8'}  # chips -> shape
_PLANE_SHAPES = {1: '1x1', 4: '2x2', 8: '2x4', 16: '4x4', 32: '4x8', 64: '8x8', 128: '8x16',
                 256: '16x16'}
ACCELERATOR_TYPES = {
    **{f'{g}-{2 * n}': f'{g}:{s}' for g in ('v4', 'v5p') for n, s in _CUBE_SHAPES.items()},
    **{f'{g}-{n}': f'{g}:{s}' for g in ('v5e', 'v6e') for n, s in _PLANE_SHAPES.items()},
}
MISSING_EXTRA = ("compiling for a TPU topology needs libtpu, the optional extra 'tpu-aot' "
                 "(jax[tpu] at the project's JAX version); install it, preferably in a separate "
                 "venv: python -m venv ~/venv-tpu && ~/venv-tpu/bin/pip install -e '.[tpu-aot]'")
# libtpu: finish compiling a program over HBM (its memory analysis for a report; never to run).
NO_CRASH_ON_OOM = {'xla_tpu_no_crash_on_oom': True}
_TOPOLOGY = re.compile(r'^(?P<gen>[a-z0-9]+):(?P<shape>\d+(?:x\d+){1,2})$')
_UNITS = {'B': 1, 'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40}


def resolve_topology(name: str) -> str:
  """A topology name as libtpu spells it ('v5p-64' -> 'v5p:2x4x4'); 'cpu:N' stays."""
  name = ACCELERATOR_TYPES.get(name.strip().lower(), name.strip().lower())
  if re.fullmatch(r'cpu:\d+', name):
    return name
  m = _TOPOLOGY.match(name)
  if not m or m['gen'] not in GENERATIONS:
    raise ValueError(
        f'unknown topology {name!r}: expected <generation>:<chips per axis> with generation one of '
        f'{sorted(GENERATIONS)} (e.g. v5p:2x4x4, v5e:16x16), an accelerator type (e.g. v5p-64 = '
        f'32 chips, v5e-256 = 256 chips), or cpu:N')
  return name


def topology_devices(name: str) -> List[jax.Device]:
  """The devices of a topology: compile-only TPU devices from libtpu, or the first N CPU devices."""
  name = resolve_topology(name)
  if name.startswith('cpu:'):
    n, cpus = int(name[4:]), jax.devices('cpu')
    if not 1 <= n <= len(cpus):
      raise ValueError(f'{name} needs {n} CPU devices but JAX has {len(cpus)}; set XLA_FLAGS='
                       f'--xla_force_host_platform_device_count={max(n, 1)} before starting')
    return cpus[:n]
  if importlib.util.find_spec('libtpu') is None:
    raise ImportError(MISSING_EXTRA)
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  gen, shape = name.split(':')
  dims = [int(d) for d in shape.split('x')] + [1]
  bounds = tuple(min(d, b) for d, b in zip(dims, (2, 2, 1)))  # a host holds up to 2x2x1 chips
  try:
    return list(topologies.get_topology_desc(
        platform='tpu', topology_name=name, chip_config_name=GENERATIONS[gen],
        chips_per_host_bounds=bounds, num_slices=1).devices)
  except jax.errors.JaxRuntimeError as e:
    if 'lockfile' in str(e):
      raise OSError(f'libtpu is in use by another process on this machine ({e}); wait for it, or '
                    'set ALLOW_MULTIPLE_LIBTPU_LOAD=1 (safe for compile-only use)') from e
    raise ValueError(f'libtpu rejects topology {name!r}: {e}') from e


def _bytes(number: str, unit: str) -> int:
  return int(float(number) * _UNITS[unit.upper()])


def parse_oom(message: str) -> Dict[str, Optional[int]]:
  """{'required_bytes', 'hbm_bytes'} from a TPU compiler out-of-memory message (None if absent)."""
  required = hbm = None
  m = re.search(r'required for [^(]*\(([\d.]+)([KMGT]?)\)\s*exceeds available HBM \(([\d.]+)'
                r'([KMGT]?)\)', message)
  if m:
    required, hbm = _bytes(m[1], m[2] or 'B'), _bytes(m[3], m[4] or 'B')
  m = re.search(r'Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm', message)
  if m:
    required, hbm = _bytes(m[1], m[2]), _bytes(m[3], m[4])
  return {'required_bytes': required, 'hbm_bytes': hbm}


def _is_oom(error: Exception) -> bool:
  return 'RESOURCE_EXHAUSTED' in str(error) or 'Ran out of memory' in str(error)


def hbm_limit(device: jax.Device):
  """(bytes, source) of the HBM a program may use on `device`; (None, reason) off TPU."""
  if device.platform != 'tpu':
    return None, f'{device.platform}: no HBM verdict'
  probe = jax.jit(lambda: jnp.zeros((2**42,), jnp.uint8),  # 4 TiB: over every chip's HBM
                  out_shardings=SingleDeviceSharding(device))
  try:
    probe.lower().compile()
  except jax.errors.JaxRuntimeError as e:
    limit = parse_oom(str(e))['hbm_bytes']
    if limit:
      return limit, 'the TPU compiler (its out-of-memory limit)'
  nominal = HBM_BYTES.get(device.device_kind)
  return nominal, ('nominal chip HBM (Google Cloud TPU docs)' if nominal else
                   f'unknown for {device.device_kind!r}')


def _compile(jitted, *args, breakdown: bool = True):
  """(CompileReport, None), or (CompileReport or None, the compiler's message) for a program that
  does not fit: with `breakdown`, its memory then comes from a second compile that lets it exceed
  HBM (libtpu's xla_tpu_no_crash_on_oom)."""
  try:
    return profiling.compile_with_report(jitted, *args)[1], None
  except jax.errors.JaxRuntimeError as e:
    if not _is_oom(e):
      raise
    error = str(e)
  if not breakdown:
    return None, error
  try:
    return profiling.compile_with_report(jitted, *args, compiler_options=NO_CRASH_ON_OOM)[1], error
  except jax.errors.JaxRuntimeError:
    return None, error


def _prepared(c):
  """A copy of the config whose tokenizer comes from its checkpoint's config.json when that exists,
  else from config.tokenizer.vqvae (the compile needs shapes only, never the weights)."""
  c = copy.deepcopy(c)
  ckpt = c.tokenizer.ckpt
  source = f'checkpoint {ckpt}'
  if ckpt and not pathlib.Path(ckpt, 'config.json').exists():
    with c.unlocked():
      c.tokenizer.ckpt = ''
    source = f'config.tokenizer.vqvae (checkpoint {ckpt} not found; only its shapes matter)'
  elif not ckpt:
    source = 'config.tokenizer.vqvae'
  return c, source


def _param_count(tree) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def _memory(report: Optional[profiling.CompileReport], error: Optional[str], limit, limit_source):
  """The report's memory, HBM and fits fields."""
  out = {'hbm_bytes_per_device': limit, 'hbm_source': limit_source}
  if error is not None:  # the compiler refused it: does not fit
    oom = parse_oom(error)
    limit = limit or oom['hbm_bytes']
    out.update(fits=False, compiler_error=error.strip().splitlines()[0][:2000],
               hbm_bytes_per_device=limit, required_bytes=oom['required_bytes'])
  if report is None:
    return dict(out, per_device=None, compile_s=None)
  per_device = {'argument_bytes': report.argument_bytes, 'output_bytes': report.output_bytes,
                'temp_bytes': report.temp_bytes, 'alias_bytes': report.alias_bytes,
                'total_bytes': report.total_bytes}
  if error is None:
    fits = None if limit is None or report.total_bytes is None else report.total_bytes <= limit
    out.update(fits=fits, compiler_error=None, required_bytes=report.total_bytes)
  return dict(out, per_device=per_device, compile_s=report.compile_s)


def _flops(report, num_devices: int):
  flops = None if report is None else report.flops
  return {'flops_per_device': flops,
          'flops_per_step': None if flops is None else flops * num_devices}


def _header(mode: str, topology: str, devices, model_cfg, tokenizer_source: str) -> Dict[str, Any]:
  return {'mode': mode, 'topology': topology, 'num_devices': len(devices),
          'num_hosts': len({d.process_index for d in devices}),
          'device_kind': devices[0].device_kind, 'platform': devices[0].platform,
          'model': {'kind': 'VIAR' if model_cfg.implicit else 'VAR', 'depth': model_cfg.depth,
                    'embed_dim': model_cfg.embed_dim, 'seq_len': model_cfg.seq_len,
                    'dtype': model_cfg.dtype, 'remat': model_cfg.remat,
                    'attn_implementation': model_cfg.attn_implementation},
          'tokenizer': tokenizer_source}


def train_report(c, devices: Sequence[jax.Device], topology: str = '', breakdown: bool = True
                 ) -> Dict[str, Any]:
  """Compiles the config's train step for `devices` and reports its per-device memory and FLOPs.

  The config is checked first (`loop.check_run_config`: the mesh covers the devices, the global batch
  divides the mesh and the host count, the model section is valid), before any compile. A
  progressive run is reported at its full-scale stage, its largest. `breakdown`: for a program
  that does not fit, compile it a second time past the HBM limit for its per-part memory.
  """
  devices = list(devices)
  c, tokenizer_source = _prepared(c)
  num_hosts = len({d.process_index for d in devices})
  data, fsdp = loop.check_run_config(c, len(devices), num_hosts)
  vae_cfg = loop.tokenizer_config(c)
  model_cfg = run_config.transformer_config(c.model, vae_cfg)
  vae, model = vqvae.VQVAE(vae_cfg), transformer.Transformer(model_cfg)
  mesh = sharding.make_mesh(data, fsdp, devices=devices)
  replicate = sharding.IMPLICIT_MODULES if c.mesh.replicate_implicit else ()
  optimizer = loop.make_optimizer(c, len(model_cfg.patch_nums))[0]
  sharded = train_step.sharded_train_step(model, vae, optimizer, mesh, replicate=replicate,
                                          label_smoothing=c.optim.label_smoothing)
  state = jax.eval_shape(sharded.create, jax.random.PRNGKey(0))
  batch = c.optim.batch_size
  args = (state, factory.abstract_params(vae_cfg), factory.image_shape(vae_cfg, batch, jnp.uint8),
          jax.ShapeDtypeStruct((batch,), jnp.int32))
  limit, limit_source = hbm_limit(devices[0])
  with jax.set_mesh(mesh):  # as loop.train: attention kernels (TPU splash) per device of the mesh
    report, error = _compile(sharded.step, *args, breakdown=breakdown)
  return {**_header('train', topology, devices, model_cfg, tokenizer_source),
          'mesh': {'data': data, 'fsdp': fsdp}, 'global_batch': batch,
          'per_device_batch': batch // len(devices),
          'mu_dtype': c.optim.get('mu_dtype', 'float32'),
          'replicate_implicit': bool(c.mesh.replicate_implicit),
          'params': _param_count(state.params),
          **_memory(report, error, limit, limit_source), **_flops(report, len(devices)),
          'model_flops_per_step': mfu.model_flops_per_step(model_cfg, state.params, batch,
                                                           **mfu.mean_iters(model_cfg))}


def sample_report(c, devices: Sequence[jax.Device], topology: str = '', batch: int = 64,
                  breakdown: bool = True) -> Dict[str, Any]:
  """Compiles the config's sampler (c.sample's cfg / top-k / top-p) for `batch` images on the first
  device and reports its memory and FLOPs."""
  if batch < 1:
    raise ValueError(f'the sample batch must be >= 1, got {batch}')
  device = list(devices)[0]
  c, tokenizer_source = _prepared(c)
  vae_cfg = loop.tokenizer_config(c)
  model_cfg = run_config.transformer_config(c.model, vae_cfg)
  options = sampler.SampleOptions(cfg=c.sample.cfg, top_k=c.sample.top_k, top_p=c.sample.top_p)
  fn = sampler.make_sampler(vqvae.VQVAE(vae_cfg), transformer.Transformer(model_cfg), options)
  on_device = SingleDeviceSharding(device)
  place = lambda tree: jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=on_device), tree)
  params = factory.abstract_params(model_cfg)
  args = (place(factory.abstract_params(vae_cfg)), place(params),
          jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=on_device),
          jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=on_device))
  limit, limit_source = hbm_limit(device)
  report, error = _compile(fn, *args, breakdown=breakdown)
  return {**_header('sample', topology, [device], model_cfg, tokenizer_source),
          'mesh': None, 'global_batch': batch, 'per_device_batch': batch,
          'sample': {'cfg': options.cfg, 'top_k': options.top_k, 'top_p': options.top_p},
          'params': _param_count(params), **_memory(report, error, limit, limit_source),
          **_flops(report, 1)}


def largest_batch(c, devices: Sequence[jax.Device], topology: str = '', mode: str = 'train',
                  start: int = 1, limit: int = 4096) -> Dict[str, Any]:
  """The largest per-device batch that fits (train: global batch = per-device x devices), by
  doubling from `start` then bisecting; every probe is one compile. Returns
  {'per_device_batch', 'report' (of that batch; None if even `start` does not fit), 'probes'}."""
  n = 1 if mode == 'sample' else len(devices)

  def probe(per_device):
    if mode == 'sample':
      return sample_report(c, devices, topology, per_device, breakdown=False)
    trial = copy.deepcopy(c)
    trial.optim.batch_size = per_device * n
    return train_report(trial, devices, topology, breakdown=False)

  probes, best, lo, hi = [], None, 0, None  # lo fits (0: none yet), hi does not
  b = start
  while hi is None or hi - lo > 1:
    report = probe(b)
    if report['fits'] is None:
      raise ValueError(f'{report["device_kind"]} has no known HBM limit: no batch search')
    probes.append({'per_device_batch': b, 'fits': report['fits'],
                   'total_bytes': report['required_bytes']})
    print(f'per-device batch {b}: {"fits" if report["fits"] else "does not fit"} '
          f'({_gib(report["required_bytes"])} of {_gib(report["hbm_bytes_per_device"])})',
          flush=True)
    if report['fits']:
      lo, best = b, report
    else:
      hi = b
    if hi is None:
      if b >= limit:
        break
      b = min(2 * b, limit)
    else:
      b = (lo + hi) // 2
      if b == lo:
        break
  return {'per_device_batch': lo, 'report': best, 'probes': probes}


def _gib(n) -> str:
  if n is None:
    return 'n/a'
  return f'{n / GIB:.2f} GiB' if abs(n) >= GIB else f'{n / 2**20:.1f} MiB'


def table(report: Dict[str, Any]) -> str:
  """The report as a two-column table (what `write` also saves as JSON)."""
  m, per = report['model'], report['per_device'] or {}
  mesh = report['mesh']
  rows = [
      ('mode', report['mode']),
      ('topology', f'{report["topology"]} ({report["num_devices"]} x {report["device_kind"]}, '
                   f'{report["num_hosts"]} host(s))'),
      ('model', f'{m["kind"]} depth {m["depth"]}, C={m["embed_dim"]}, L={m["seq_len"]}, '
                f'{m["dtype"]}, remat {m["remat"]}'),
      ('params', f'{report["params"]:,}'),
      ('mesh', 'one device' if mesh is None else ' x '.join(f'{k}={v}' for k, v in mesh.items())),
      ('global batch', f'{report["global_batch"]} ({report["per_device_batch"]} per device)'),
  ]
  for key in ('argument_bytes', 'output_bytes', 'temp_bytes', 'alias_bytes', 'total_bytes'):
    rows.append((f'per device: {key[:-6]}', _gib(per.get(key))))
  if report['compiler_error']:
    rows.append(('per device: required', f'{_gib(report["required_bytes"])} (the compiler\'s '
                                         'out-of-memory message)'))
    rows.append(('compiler says', report['compiler_error'][:200]))
    if per:
      rows.append(('', 'the parts above: compiled once more past the HBM limit'))
  rows += [
      ('HBM per device', f'{_gib(report["hbm_bytes_per_device"])} ({report["hbm_source"]})'),
      ('fits', {True: 'yes', False: 'NO', None: 'n/a'}[report['fits']]),
      ('FLOPs per step', 'n/a' if report['flops_per_step'] is None else
       f'{report["flops_per_step"]:.4g} (compiler: {report["flops_per_device"]:.4g} per device)'),
  ]
  if report.get('model_flops_per_step') is not None:
    rows.append(('model FLOPs per step', f'{report["model_flops_per_step"]:.4g}'))
  if report.get('compile_s') is not None:
    rows.append(('compile', f'{report["compile_s"]:.1f} s'))
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


def write(report: Dict[str, Any], out_dir, name: str = 'compile_report.json') -> pathlib.Path:
  path = pathlib.Path(out_dir)
  path.mkdir(parents=True, exist_ok=True)
  path = path / name
  path.write_text(json.dumps(report, indent=2, default=float) + '\n')
  return path


def run(c, topology: str, out_dir, mode: str = 'train', batch: int = 64,
        search_batch: bool = False) -> Dict[str, Any]:
  """launch.compile_report: the report (or, with search_batch, the largest per-device batch and its
  report), printed and written to `out_dir`/compile_report.json."""
  if mode not in ('train', 'sample'):
    raise ValueError(f"mode must be 'train' or 'sample', got {mode!r}")
  name = resolve_topology(topology)
  devices = topology_devices(name)
  if search_batch:
    found = largest_batch(c, devices, name, mode)
    if found['report'] is None:
      raise ValueError(f'not even a per-device batch of 1 fits on {name}')
    report = dict(found['report'], batch_search=found['probes'])
    print(f'largest per-device batch that fits: {found["per_device_batch"]}')
  elif mode == 'train':
    report = train_report(c, devices, name)
  else:
    report = sample_report(c, devices, name, batch)
  print(table(report))
  print(f'wrote {write(report, out_dir)}', flush=True)
  return report
