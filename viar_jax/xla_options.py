"""XLA flags our launchers set, per platform: chosen by measurement, set in one place.

    xla_options.use_tuned_flags()   # before JAX starts its backends (cli.run does it for launchers)

XLA:CPU (jaxlib 0.10) hands dots, convolutions and element-wise fusions to YNNPACK by default. On the
x86 hosts we measure (AMD EPYC Zen 4 with AVX-512, 2 threads, fp32) its kernels are slower than
XLA's own (Eigen) ones, so we switch them off (`--xla_cpu_experimental_ynn_fusion_type=`, empty):

  | fp32, 2 threads                                  | YNNPACK (default) | off          |
  |--------------------------------------------------|-------------------|--------------|
  | 4096² matmul                                     | 160 GFLOP/s       | 190 GFLOP/s  |
  | 3x3 conv, 4 x 256² x 160 -> 160, NHWC            | 105 GFLOP/s       | 179 GFLOP/s  |
  | VQ-VAE decode, batch 4 at 256² (1.56 TFLOP)      | 13.9 s            | 9.4 s        |
  | VAR-d16 sampler, batch 4, CFG, incl. decode      | 29.3 s            | 24.9 s       |

Outputs agree to fp32 rounding (the greedy parity tests stay token-identical). The flag is a CPU
debug option: GPU and TPU compilers accept it and ignore it. XLA reads XLA_FLAGS once, when JAX
starts its backends, so this is a process-wide choice: a flag the user already put in XLA_FLAGS
wins, and `VIAR_JAX_XLA_CPU_DEFAULTS=1` keeps XLA's defaults (to compare, or on a host where
YNNPACK is faster: measure with `launch.benchmark`). Programs built outside the launchers (tests, a
notebook) call `use_tuned_flags()` first to get the same.
"""
import os

from jax._src import xla_bridge  # whether the backends (which read XLA_FLAGS once) have started

CPU_FLAGS = {'xla_cpu_experimental_ynn_fusion_type': ''}  # '' = no YNNPACK fusions
KEEP_DEFAULTS_ENV = 'VIAR_JAX_XLA_CPU_DEFAULTS'


def use_tuned_flags() -> None:
  """Adds our flags to XLA_FLAGS, unless the user set them or asked for XLA's defaults.

  Raises:
    RuntimeError: the flags would change but JAX's backends have already started (too late).
  """
  if os.environ.get(KEEP_DEFAULTS_ENV, '0') not in ('', '0'):
    return
  user = os.environ.get('XLA_FLAGS', '')
  missing = [f'--{name}={value}' for name, value in CPU_FLAGS.items() if f'--{name}' not in user]
  if not missing:
    return
  if xla_bridge.backends_are_initialized():
    raise RuntimeError('xla_options.use_tuned_flags() must run before JAX starts its backends '
                       '(before the first computation or jax.devices() call)')
  os.environ['XLA_FLAGS'] = ' '.join([user, *missing]).strip()


def summary() -> str:
  """The XLA flags and glibc tunables in effect (viar_jax/huge_pages.py), for start-up logs."""
  return (f"XLA_FLAGS='{os.environ.get('XLA_FLAGS', '')}', "
          f"GLIBC_TUNABLES='{os.environ.get('GLIBC_TUNABLES', '')}'")
