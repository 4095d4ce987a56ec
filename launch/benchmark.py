"""Sampling throughput and memory: VAR-d{D} vs VIAR (pre 5 / implicit / post 5) at the same width.

    python -m launch.benchmark [--depth 30] [--embed_dim 256] [--batch 2] [--repeats 3] [--quick]
                               [--isolate | --noisolate] [--out out/benchmark]
    python -m launch.benchmark --preset var_d16_cpu --reference_src /path/to/VAR   # vs PyTorch

Random parameters (throughput and memory do not depend on the values); rows VAR, then VIAR per
iteration schedule and KV-cache mode. Writes benchmark.md, benchmark.json and benchmark.png under
--out; see viar_jax.bench.sampling for what each column measures. Then the table against the official
PyTorch sampler (--reference_src, a FoundationVision/VAR checkout, with the `torch` extra installed;
VIAR rows against that sampler with the implicit loop, made of its modules), or its JAX-only rows
without them. On CPU the launcher's XLA flags apply (viar_jax/xla_options.py; the table says which).
"""
import os

from absl import flags

from viar_jax import cli
from viar_jax.bench import sampling

_DEPTH = flags.DEFINE_integer('depth', None, 'VAR depth = VIAR nominal depth (30)')
_EMBED_DIM = flags.DEFINE_integer('embed_dim', None,
                                  'width of both models (default 64·depth on GPU/TPU, 256 on CPU)')
_BATCH = flags.DEFINE_integer('batch', None, 'images per call (8 GPU/TPU, 2 CPU)')
_DTYPE = flags.DEFINE_enum('dtype', None, sampling.DTYPES,
                           'block compute dtype (bfloat16 on GPU/TPU, float32 on CPU)')
_PATCH_NUMS = flags.DEFINE_list('patch_nums', None,
                                'comma-separated scales (default the 256px schedule 1,...,16)')
_VAE_CH = flags.DEFINE_integer('vae_ch', None, 'VQ-VAE base channels (160 GPU/TPU, 32 CPU)')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'timed calls per row (median reported)')
_QUICK = flags.DEFINE_bool('quick', False, 'tiny models and schedules (smoke test)')
_ISOLATE = flags.DEFINE_bool('isolate', None,
                             'one fresh subprocess per row, for device peak memory (default on GPU/TPU)')
_OUT = flags.DEFINE_string('out', 'out/benchmark', 'output directory')
_PRESET = flags.DEFINE_enum('preset', None, list(sampling.PRESETS),
                            'named shapes (var_d16_cpu: VAR-d16 / VIAR 3+1+3, batch 4, fp32, VQ-VAE '
                            'ch 160 at 256px); explicit flags override')
_REFERENCE_SRC = flags.DEFINE_string('reference_src', None,
                                     'FoundationVision/VAR checkout to time the PyTorch sampler against '
                                     '(needs torch); JAX-only rows without it')


def main(argv):
  del argv
  # An --isolate parent must not reserve most of the accelerator's memory for itself (JAX's default),
  # or its children would run short; the measures used here do not depend on preallocation.
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  settings = sampling.resolve(
      depth=_DEPTH.value, embed_dim=_EMBED_DIM.value, batch=_BATCH.value, dtype=_DTYPE.value,
      patch_nums=_PATCH_NUMS.value, vae_ch=_VAE_CH.value, repeats=_REPEATS.value, quick=_QUICK.value,
      isolate=_ISOLATE.value, preset=_PRESET.value)
  sampling.run(settings, _OUT.value, reference_src=_REFERENCE_SRC.value)


if __name__ == '__main__':
  cli.run(main)
