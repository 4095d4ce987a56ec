"""Our configs from a reference `config.json` (the format of the parity fixture sets).

Lets a fixture set (or a converted checkpoint described the same way) be rebuilt from its
`config.json` alone.
"""
from typing import Mapping

from viar_jax import vqvae


def vqvae_config(cfg: Mapping) -> vqvae.VQVAEConfig:
  v = cfg['vqvae']
  return vqvae.VQVAEConfig(
      vocab_size=v['vocab_size'], z_channels=v['z_channels'], ch=v['ch'], ch_mult=tuple(v['ch_mult']),
      num_res_blocks=v['num_res_blocks'], in_channels=v['in_channels'],
      image_size=cfg['image']['size'], patch_nums=tuple(v['v_patch_nums']), beta=v['beta'],
      using_znorm=v['using_znorm'], quant_resi=v['quant_resi'],
      share_quant_resi=v['share_quant_resi'], default_qresi_counts=v['default_qresi_counts'],
      quant_conv_ks=v['quant_conv_ks'], using_sa=v['using_sa'], using_mid_sa=v['using_mid_sa'])
