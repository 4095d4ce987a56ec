"""Per-chip memory, fits and FLOPs of the real train step (or sampler) on a TPU topology, compiled on
a CPU-only machine by the TPU compiler; nothing runs on a TPU.

    pip install -e '.[tpu-aot]'      # libtpu; preferably in a separate venv
    python -m launch.compile_report --config configs/imagenet.py:viar_d30 --topology v5p:2x4x4 \
        --out out/compile_report
    python -m launch.compile_report --config configs/imagenet.py:var_d30 --topology v5e-256 \
        --config.optim.batch_size=1024 --config.model.remat=full --config.mesh.fsdp=16
    python -m launch.compile_report --config configs/imagenet.py:viar_d30 --topology v5e:1x1 \
        --mode sample --batch 64
    python -m launch.compile_report --config configs/imagenet.py:viar_d30 --topology v5e:2x4 \
        --search_batch     # the largest per-chip batch that fits (one compile per probe)

Topologies: <generation>:<chips per axis> (v4, v5e, v5p, v6e), a Cloud accelerator type (v5p-64 =
32 chips, v5e-256 = 256 chips), or cpu:N. Writes <out>/compile_report.json and prints it as a table
(viar_jax.bench.compile_report).
"""
import os

# Before JAX starts: on a machine with libtpu but no TPU the default backend stays the CPU (the TPU
# devices here are libtpu's compile-only ones).
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from absl import flags  # pylint: disable=wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

from viar_jax import cli  # pylint: disable=wrong-import-position
from viar_jax.bench import compile_report  # pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/digits.py', 'training config file')
_TOPOLOGY = flags.DEFINE_string('topology', None,
                                'e.g. v5p:2x4x4, v5e:16x16, v5p-64, v5e-256 or cpu:8 (required)')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'sample'],
                          'train: the sharded train step; sample: the sampler on one device')
_BATCH = flags.DEFINE_integer('batch', 64, '--mode sample: images per call')
_SEARCH_BATCH = flags.DEFINE_bool('search_batch', False,
                                  'find the largest per-device batch that fits (doubling, then '
                                  'bisection; one compile per probe)')
_OUT = flags.DEFINE_string('out', 'out/compile_report', 'output directory')


def main(argv):
  del argv
  if not _TOPOLOGY.value:
    raise ValueError('--topology is required, e.g. --topology v5p:2x4x4 (v5p-64) or cpu:8')
  compile_report.run(_CONFIG.value, _TOPOLOGY.value, _OUT.value, mode=_MODE.value,
                     batch=_BATCH.value, search_batch=_SEARCH_BATCH.value)


if __name__ == '__main__':
  cli.run(main)
