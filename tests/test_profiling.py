"""profiling.CompileReport: MaxText's memory formula, FLOPs, the one-line format; device peak bytes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from viar_jax import profiling


def test_report_of_a_matmul_with_a_donated_input():
  n = 64
  a = jnp.ones((n, n), jnp.float32)
  step = jax.jit(lambda a, b: (a @ b, a + 1.0), donate_argnums=0)  # a + 1 can reuse a's buffer
  compiled, report = profiling.compile_with_report(step, a, a)
  mem = compiled.memory_analysis()
  assert report.argument_bytes == mem.argument_size_in_bytes == 2 * n * n * 4
  assert report.alias_bytes == mem.alias_size_in_bytes == n * n * 4  # the donated, reused buffer
  assert report.total_bytes == (mem.argument_size_in_bytes + mem.output_size_in_bytes
                                + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
  assert report.flops is not None and report.flops >= 2 * n**3  # the matmul's multiply-adds
  assert report.compile_s > 0
  out, _ = compiled(jnp.ones((n, n)), a)  # the compiled executable is returned, and runs
  np.testing.assert_allclose(out, n)
  assert report.as_dict()['total'] == report.total_bytes
  assert profiling.compile_report(lambda a, b: a @ b, a, a).alias_bytes == 0


def test_line_is_one_line_with_every_part():
  report = profiling.CompileReport(argument_bytes=3 * 2**20, output_bytes=2**20, temp_bytes=2**21,
                                   alias_bytes=2**20, flops=2.5e9, compile_s=1.25)
  assert report.total_bytes == 5 * 2**20
  assert report.line('train step') == (
      'train step: compiled in 1.2 s; 5.0 MiB per device (arguments 3.0 + outputs 1.0 + temp 2.0 - '
      'aliased 1.0); 2.5 GFLOP')
  unknown = profiling.CompileReport(None, None, None, None)
  assert unknown.total_bytes is None and unknown.line() == 'program: no memory analysis'


def test_device_peak_bytes_is_an_int_or_none():
  peak = profiling.device_peak_bytes()
  if jax.default_backend() == 'cpu':
    assert peak is None  # XLA:CPU keeps no peak counter
  else:
    assert isinstance(peak, int) and peak >= 0


@pytest.mark.gpu
def test_peak_bytes_and_compile_report_on_the_gpu(gpu):
  """On a GPU the peak counter exists and sees a 64 MiB buffer; the report reads its program."""
  x = jax.device_put(jnp.zeros((16, 2**20), jnp.float32), gpu)  # 64 MiB
  jax.block_until_ready(x)
  assert profiling.device_peak_bytes(gpu) >= 64 * 2**20
  # x is committed to the GPU, so the program is compiled for it.
  compiled, report = profiling.compile_with_report(jax.jit(lambda a: (a * 2.0).sum()), x)
  assert float(compiled(x)) == 0.0
  assert report.argument_bytes == 64 * 2**20 and report.output_bytes == 4
