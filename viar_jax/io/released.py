"""Configs of the released PyTorch checkpoints (VAR.md §1-3, VIAR.md §1).

    name                 file                     model
    vae_ch160v4096z32    vae_ch160v4096z32.pth    multi-scale VQ-VAE (any resolution)
    var_d16 .. var_d30   var_d{16,20,24,30}.pth   VAR, 256px
    var_d36              var_d36.pth              VAR with shared AdaLN, 512px
    viar_d30             viar.pth                 VIAR, width of d30, 5 pre / 5 post blocks
"""
from typing import Dict, Union

from viar_jax.models import transformer, vqvae

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
Config = Union[vqvae.VQVAEConfig, transformer.TransformerConfig]

TRANSFORMERS: Dict[str, transformer.TransformerConfig] = {
    'var_d16': transformer.TransformerConfig(depth=16, aln_gamma_init=1e-3),
    'var_d20': transformer.TransformerConfig(depth=20, aln_gamma_init=1e-3),
    'var_d24': transformer.TransformerConfig(depth=24, aln_gamma_init=1e-4),
    'var_d30': transformer.TransformerConfig(depth=30, aln_gamma_init=1e-5),
    'var_d36': transformer.TransformerConfig(depth=36, shared_aln=True, patch_nums=PATCH_NUMS_512,
                                             aln_gamma_init=5e-6),
    'viar_d30': transformer.TransformerConfig(depth=30, implicit=True, pre_depth=5, post_depth=5,
                                              aln_gamma_init=1e-5),
}
FILES = {'vae_ch160v4096z32': 'vae_ch160v4096z32.pth', 'var_d16': 'var_d16.pth',
         'var_d20': 'var_d20.pth', 'var_d24': 'var_d24.pth', 'var_d30': 'var_d30.pth',
         'var_d36': 'var_d36.pth', 'viar_d30': 'viar.pth'}
NAMES = tuple(FILES)


def tokenizer_config(patch_nums=PATCH_NUMS_256) -> vqvae.VQVAEConfig:
  """The released tokenizer at the resolution implied by `patch_nums` (same weights for both)."""
  return vqvae.VQVAEConfig(image_size=16 * patch_nums[-1], patch_nums=tuple(patch_nums))


def config(name: str) -> Config:
  if name == 'vae_ch160v4096z32':
    return tokenizer_config()
  if name not in TRANSFORMERS:
    raise ValueError(f'unknown released model {name!r}; expected one of {NAMES}')
  return TRANSFORMERS[name]


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
