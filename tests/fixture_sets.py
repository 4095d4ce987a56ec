"""Discovery of reference fixture sets: every directory under tests/fixtures/ holding a config.json.

Models, and the names of the arrays to compare, are derived from a set's own config.json and
arrays, so a new set (other sizes, iteration counts, schedules, optional arrays left out) is picked
up without code changes.
"""
import functools
import json
import pathlib
from typing import Dict, List, Tuple

import numpy as np

from viar_jax.io import convert, reference_config
from viar_jax.models import factory, transformer, vqvae

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


def tokenizer(set_dir: pathlib.Path) -> Tuple[vqvae.VQVAE, Dict]:
  """The set's VQ-VAE and its converted params."""
  cfg = vqvae_config(set_dir)
  return vqvae.VQVAE(cfg), convert.convert_state_dict(state_dict(set_dir, 'vqvae'),
                                                      factory.abstract_params(cfg))


def model(set_dir: pathlib.Path, name: str) -> Tuple[transformer.Transformer, Dict]:
  """The set's VAR ('var') or VIAR ('viar') transformer and its converted params."""
  cfg = reference_config.transformer_config(config(set_dir), name)
  return transformer.Transformer(cfg), convert.convert_state_dict(state_dict(set_dir, name),
                                                                   factory.abstract_params(cfg))


def training_iters(set_dir: pathlib.Path) -> Tuple[int, int]:
  """(no-grad K, with-grad m) the VIAR teacher-forcing arrays were made with.

  From config.json's pinned counts where it records them, else from the arrays' cfg/ entries; a
  set holding both must agree.
  """
  section, data = config(set_dir)['viar'], arrays(set_dir, 'viar')
  from_arrays = (int(data['cfg/no_grad_iters']), int(data['cfg/with_grad_iters']))
  if 'pinned_no_grad_iters' not in section:
    return from_arrays
  pinned = (int(section['pinned_no_grad_iters']), int(section['pinned_with_grad_iters']))
  assert pinned == from_arrays, f'{set_dir}: config.json pins {pinned}, viar.npz holds {from_arrays}'
  return pinned


def full_unroll_grad_prefix(set_dir: pathlib.Path) -> str:
  """Prefix of the gradients with every one of the K + m iterations differentiated, no JFB."""
  return f'grad_ng0_wg{sum(training_iters(set_dir))}/'


def generation_schedules(set_dir: pathlib.Path) -> List[str]:
  """Names of the VIAR generation schedules the set holds (`cfg/iters_<name>` arrays)."""
  return sorted(k[len('cfg/iters_'):] for k in arrays(set_dir, 'viar') if k.startswith('cfg/iters_'))


def generation_setting(set_dir: pathlib.Path, data: Dict[str, np.ndarray], key: str):
  """`cfg` or `top_k` of generation: the arrays' `cfg/<key>`, else config.json's generation section."""
  return data[f'cfg/{key}'] if f'cfg/{key}' in data else config(set_dir)['generation'][key]
