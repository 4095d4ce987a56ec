"""Discovery of reference fixture sets: every directory under tests/fixtures/ holding a config.json.

Models are built from that config.json alone, so a new set is picked up without code changes.
"""
import functools
import json
import pathlib
from typing import Dict, List

import numpy as np

from viar_jax.io import reference_config
from viar_jax.models import vqvae

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'


def discover() -> List[pathlib.Path]:
  return sorted(p.parent for p in FIXTURES.glob('*/config.json'))


def set_ids() -> List[str]:
  return [p.name for p in discover()]


@functools.lru_cache(maxsize=None)
def config(set_dir: pathlib.Path) -> Dict:
  return json.loads((set_dir / 'config.json').read_text())


@functools.lru_cache(maxsize=None)
def arrays(set_dir: pathlib.Path, name: str) -> Dict[str, np.ndarray]:
  """All arrays of `<set>/<name>.npz` (loaded once per test session)."""
  with np.load(set_dir / f'{name}.npz') as z:
    return {k: z[k] for k in z.files}


def state_dict(set_dir: pathlib.Path, name: str) -> Dict[str, np.ndarray]:
  return {k[3:]: v for k, v in arrays(set_dir, name).items() if k.startswith('sd/')}


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
  return np.transpose(x, (0, 2, 3, 1))


def vqvae_config(set_dir: pathlib.Path) -> vqvae.VQVAEConfig:
  return reference_config.vqvae_config(config(set_dir))
