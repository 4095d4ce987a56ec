"""Our configs from a reference `config.json` (the format of the parity fixture sets).

Lets a fixture set (or a converted checkpoint described the same way) be rebuilt from its
`config.json` alone.
"""
from typing import Mapping

from viar_jax.models import transformer, vqvae


def vqvae_config(cfg: Mapping) -> vqvae.VQVAEConfig:
  v = cfg['vqvae']
  return vqvae.VQVAEConfig(
      vocab_size=v['vocab_size'], z_channels=v['z_channels'], ch=v['ch'], ch_mult=tuple(v['ch_mult']),
      num_res_blocks=v['num_res_blocks'], in_channels=v['in_channels'],
      image_size=cfg['image']['size'], patch_nums=tuple(v['v_patch_nums']), beta=v['beta'],
      using_znorm=v['using_znorm'], quant_resi=v['quant_resi'],
      share_quant_resi=v['share_quant_resi'], default_qresi_counts=v['default_qresi_counts'],
      quant_conv_ks=v['quant_conv_ks'], using_sa=v['using_sa'], using_mid_sa=v['using_mid_sa'])


def transformer_config(cfg: Mapping, model: str) -> transformer.TransformerConfig:
  """`model` is 'var' or 'viar' (the section of config.json)."""
  t = cfg[model]
  implicit = bool(t.get('use_implicit', False))
  return transformer.TransformerConfig(
      depth=t.get('depth_nominal', t.get('depth')), embed_dim=t['embed_dim'],
      num_heads=t['num_heads'], num_classes=t['num_classes'], patch_nums=tuple(t['patch_nums']),
      vocab_size=cfg['vqvae']['vocab_size'], z_channels=cfg['vqvae']['z_channels'],
      mlp_ratio=t['mlp_ratio'], attn_l2_norm=t['attn_l2_norm'], shared_aln=t['shared_aln'],
      norm_eps=t['norm_eps'], drop_rate=t['drop_rate'], attn_drop_rate=t['attn_drop_rate'],
      drop_path_rate=t['drop_path_rate'], cond_drop_rate=t['cond_drop_rate_used'],
      implicit=implicit, pre_depth=t.get('pre_depth', 0), post_depth=t.get('post_depth', 0),
      no_grad_iters_range=tuple(t.get('implicit_no_grad_iters_range_default', (0, 10))),
      with_grad_iters_range=tuple(t.get('implicit_with_grad_iters_range_default', (1, 12))))
