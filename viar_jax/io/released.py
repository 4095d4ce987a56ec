"""The reference's models in one table: architecture, released PyTorch file, ImageNet-256 recipe.

    name                 file                     model
    vae_ch160v4096z32    vae_ch160v4096z32.pth    multi-scale VQ-VAE (any resolution)
    var_d16 .. var_d30   var_d{16,20,24,30}.pth   VAR, 256px
    var_d36              var_d36.pth              VAR with shared AdaLN, 512px (no recipe here)
    viar_d30             viar.pth                 VIAR, width of d30, 5 pre / 5 post blocks
    viar_d16             (not released)           VIAR, width of d16, 3 pre / 3 post, VAR-d16's recipe

Sources: VAR.md §1-4, VIAR.md §1-2. `convert_file` (launch.convert) turns a file into a viar-jax
checkpoint; `configs/imagenet.py` builds the training configs from the recipes.
"""
import dataclasses
import time
from typing import Dict, Optional

import jax
import numpy as np

from viar_jax.io import checkpoint, convert, writable
from viar_jax.models import factory, transformer, vqvae

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
TOKENIZER = 'vae_ch160v4096z32'
TOKENIZER_FILE = 'vae_ch160v4096z32.pth'
IMAGENET_TRAIN_IMAGES = 1_281_167


@dataclasses.dataclass(frozen=True)
class Recipe:
  """The reference's ImageNet-256 training recipe (lr = tblr · batch_size / 256, warm-up ep/50)."""
  batch_size: int
  epochs: int
  tblr: float
  wpe: float  # final lr fraction
  twde: Optional[float] = None  # final weight decay (cosine from 0.05); None: constant 0.05


@dataclasses.dataclass(frozen=True)
class Preset:
  """One transformer of the reference: `file` None if not released, `recipe` None if not trained here."""
  model: transformer.TransformerConfig
  file: Optional[str] = None
  recipe: Optional[Recipe] = None


_T = transformer.TransformerConfig
PRESETS: Dict[str, Preset] = {
    'var_d16': Preset(_T(depth=16, aln_gamma_init=1e-3), 'var_d16.pth',
                      Recipe(batch_size=768, epochs=200, tblr=1e-4, wpe=0.1)),
    'var_d20': Preset(_T(depth=20, aln_gamma_init=1e-3), 'var_d20.pth',
                      Recipe(batch_size=768, epochs=250, tblr=1e-4, wpe=0.1)),
    'var_d24': Preset(_T(depth=24, aln_gamma_init=1e-4), 'var_d24.pth',
                      Recipe(batch_size=768, epochs=350, tblr=8e-5, wpe=0.01)),
    'var_d30': Preset(_T(depth=30, aln_gamma_init=1e-5), 'var_d30.pth',
                      Recipe(batch_size=1024, epochs=350, tblr=8e-5, wpe=0.01, twde=0.08)),
    'var_d36': Preset(_T(depth=36, shared_aln=True, patch_nums=PATCH_NUMS_512, aln_gamma_init=5e-6),
                      'var_d36.pth'),
    'viar_d30': Preset(_T(depth=30, implicit=True, pre_depth=5, post_depth=5, aln_gamma_init=1e-5),
                       'viar.pth', Recipe(batch_size=512, epochs=550, tblr=8e-5, wpe=0.01, twde=0.08)),
    'viar_d16': Preset(_T(depth=16, implicit=True, pre_depth=3, post_depth=3, aln_gamma_init=1e-3),
                       recipe=Recipe(batch_size=768, epochs=200, tblr=1e-4, wpe=0.1)),
}
del _T
RECIPES = tuple(name for name, p in PRESETS.items() if p.recipe)
FILES = {TOKENIZER: TOKENIZER_FILE, **{name: p.file for name, p in PRESETS.items() if p.file}}
NAMES = tuple(FILES)  # what launch.convert converts


def tokenizer_config(patch_nums=PATCH_NUMS_256) -> vqvae.VQVAEConfig:
  """The released tokenizer at the resolution implied by `patch_nums` (same weights for both)."""
  return vqvae.VQVAEConfig(image_size=16 * patch_nums[-1], patch_nums=tuple(patch_nums))


def config(name: str):
  """The VQVAEConfig or TransformerConfig of a preset (released or not)."""
  if name == TOKENIZER:
    return tokenizer_config()
  if name not in PRESETS:
    raise ValueError(f'unknown model {name!r}; expected one of {(TOKENIZER, *PRESETS)}')
  return PRESETS[name].model


def recipe(name: str) -> Recipe:
  if name not in RECIPES:
    raise ValueError(f'no training recipe {name!r}; expected one of {RECIPES}')
  return PRESETS[name].recipe


def name_from_file(path: str) -> str:
  base = path.replace('\\', '/').rsplit('/', 1)[-1]
  for name, file in FILES.items():
    if base == file:
      return name
  raise ValueError(f'cannot tell the model from the file name {base!r}; pass --model (one of {NAMES})')


def reference_buffers(name: str) -> Dict[str, tuple]:
  """Buffer keys (and shapes) that the released state dicts carry besides the parameters."""
  cfg = config(name)
  if isinstance(cfg, vqvae.VQVAEConfig):
    return {'quantize.ema_vocab_hit_SV': (len(cfg.patch_nums), cfg.vocab_size)}
  out = {'lvl_1L': (1, cfg.seq_len), 'attn_bias_for_masking': (1, 1, cfg.seq_len, cfg.seq_len)}
  stacks = ([f'pre_blocks.{i}' for i in range(cfg.pre_depth)] + ['implicit_block'] +
            [f'post_blocks.{i}' for i in range(cfg.post_depth)]) if cfg.implicit else \
      [f'blocks.{i}' for i in range(cfg.depth)]
  out.update({f'{s}.attn.zero_k_bias': (cfg.embed_dim,) for s in stacks})
  return out


def convert_file(src: str, dst: str, model: Optional[str] = None) -> dict:
  """Strictly converts a released file (model named by `model` or the file name) into a checkpoint.

  -> {'model': name, 'parameters': count, 'dst': checkpoint directory}.
  """
  name = model or name_from_file(src)
  cfg = config(name)
  writable.ensure_dir(dst, 'output directory')  # before reading a multi-GB file
  t0 = time.perf_counter()
  state_dict = convert.load_reference_state_dict(src)
  print(f'read {len(state_dict)} tensors from {src} in {time.perf_counter() - t0:.1f}s; model {name}')
  params = convert.convert_state_dict(state_dict, factory.abstract_params(cfg))
  del state_dict
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  out = checkpoint.save(dst, params, cfg)
  print(f'wrote {out} ({count:,} parameters) in {time.perf_counter() - t0:.1f}s')
  return {'model': name, 'parameters': count, 'dst': str(out)}
