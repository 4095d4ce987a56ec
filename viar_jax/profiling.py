"""What XLA says about a compiled program (memory, FLOPs, compile time) and the device's peak memory.

One compile report for training, the benchmarks and the quality curve:

    compiled, report = profiling.compile_with_report(jax.jit(step), state, batch)
    print(report.line('train step'))  # train step: compiled in 3.1 s; 41.2 MiB per device (...)

Memory is MaxText's formula over `compiled.memory_analysis()`: arguments + outputs + temp − aliased
(outputs that reuse donated argument buffers would otherwise be counted twice). It is XLA's static
buffer assignment, so it is meaningful on CPU too, unlike the device's peak counter.
"""
import dataclasses
import time
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from viar_jax.models import factory, transformer

MIB = 2**20


@dataclasses.dataclass(frozen=True)
class CompileReport:
  """Per-device bytes XLA reserves for one compiled program, its FLOPs and its compile time.

  Attributes:
    argument_bytes: inputs (params, optimizer state, batch ...).
    output_bytes: results.
    temp_bytes: activations and scratch.
    alias_bytes: outputs living in donated argument buffers (counted in both of the above).
      The four byte counts are None where the backend gives no memory analysis.
    flops: XLA's cost analysis; None where the backend gives none.
    compile_s: wall seconds of lowering + compiling; None when not timed.
  """
  argument_bytes: Optional[int]
  output_bytes: Optional[int]
  temp_bytes: Optional[int]
  alias_bytes: Optional[int]
  flops: Optional[float] = None
  compile_s: Optional[float] = None

  @property
  def total_bytes(self) -> Optional[int]:
    if self.argument_bytes is None:
      return None
    return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

  @classmethod
  def of(cls, compiled, compile_s: Optional[float] = None) -> 'CompileReport':
    """The report of a `jax.stages.Compiled` (from `jitted.lower(...).compile()`)."""
    mem = compiled.memory_analysis()
    if mem is None:
      return cls(None, None, None, None, flops=_flops(compiled), compile_s=compile_s)
    return cls(argument_bytes=int(mem.argument_size_in_bytes),
               output_bytes=int(mem.output_size_in_bytes),
               temp_bytes=int(mem.temp_size_in_bytes), alias_bytes=int(mem.alias_size_in_bytes),
               flops=_flops(compiled), compile_s=compile_s)

  def as_dict(self) -> Dict[str, Any]:
    """JSON-ready: 'argument', 'output', 'temp', 'alias', 'total' (bytes), 'flops', 'compile_s'."""
    return {'argument': self.argument_bytes, 'output': self.output_bytes, 'temp': self.temp_bytes,
            'alias': self.alias_bytes, 'total': self.total_bytes, 'flops': self.flops,
            'compile_s': self.compile_s}

  def line(self, name: str = 'program') -> str:
    """One line for a log: compile time, total memory and its parts (MiB), GFLOPs."""
    parts = [f'{name}:']
    if self.compile_s is not None:
      parts.append(f'compiled in {self.compile_s:.1f} s;')
    if self.total_bytes is None:
      parts.append('no memory analysis')
    else:
      parts.append(f'{self.total_bytes / MIB:.1f} MiB per device (arguments '
                   f'{self.argument_bytes / MIB:.1f} + outputs {self.output_bytes / MIB:.1f} + temp '
                   f'{self.temp_bytes / MIB:.1f} - aliased {self.alias_bytes / MIB:.1f})')
    if self.flops is not None:
      parts[-1] += ';'
      parts.append(f'{self.flops / 1e9:.3g} GFLOP')
    return ' '.join(parts)


def _flops(compiled) -> Optional[float]:
  try:
    costs = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (not every backend / PjRt plugin implements it)
    return None
  if isinstance(costs, (list, tuple)):  # older jax: one dict per partition
    costs = costs[0] if costs else None
  if not costs or 'flops' not in costs:
    return None
  return float(costs['flops'])


def compile_with_report(jitted, *args, compiler_options: Optional[Dict[str, Any]] = None,
                        **kwargs) -> Tuple[Any, CompileReport]:
  """AOT-compiles a jitted function for `args` (arrays or ShapeDtypeStructs), timed;
  `compiler_options` go to `Lowered.compile` (XLA / libtpu flags), the other keywords to `lower`.

  Returns:
    (the compiled executable, call it instead of `jitted` to avoid a second compile; its report).
  """
  t0 = time.perf_counter()
  compiled = jitted.lower(*args, **kwargs).compile(compiler_options)
  return compiled, CompileReport.of(compiled, time.perf_counter() - t0)


def compile_report(fn, *args, **jit_kwargs) -> CompileReport:
  """The report of `jax.jit(fn, **jit_kwargs)` for `args`; nothing runs."""
  return compile_with_report(jax.jit(fn, **jit_kwargs), *args)[1]


def device_peak_bytes(device: Optional[jax.Device] = None) -> Optional[int]:
  """Peak bytes in use on `device` (default the first) since the process started; None where the
  backend keeps no such counter (CPU). It cannot be reset: measure one program per process."""
  stats = (device or jax.devices()[0]).memory_stats()
  return int(stats['peak_bytes_in_use']) if stats and 'peak_bytes_in_use' in stats else None


def cross_entropy(logits_BLV, targets_BL):
  """Mean token cross-entropy, fp32."""
  logp = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, targets_BL[..., None], axis=-1))


def viar_grad_step_memory(config: transformer.TransformerConfig, batch: int, no_grad_iters: int,
                          with_grad_iters: int) -> CompileReport:
  """Compile report of loss + grad of a VIAR teacher-forced step with K and m fixed.

  `config.with_grad_iters_range[1]` sets the scan length of the differentiated phase (m_max).
  """
  model = factory.module_for(config)
  labels, x = factory.teacher_forcing_shapes(config, batch)
  targets = jax.ShapeDtypeStruct((batch, config.seq_len), jnp.int32)

  def loss_and_grad(params, labels, x, targets):
    def loss(p):
      logits = model.apply({'params': p}, labels, x, no_grad_iters=no_grad_iters,
                           with_grad_iters=with_grad_iters)
      return cross_entropy(logits, targets)
    return jax.value_and_grad(loss)(params)

  return compile_report(loss_and_grad, factory.abstract_params(config), labels, x, targets)
