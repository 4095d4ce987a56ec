"""A tokenizer and a transformer from their checkpoints, the tokenizer set to the transformer's scales.

    vae, vae_params, model, params = pair.load(vae_ckpt, model_ckpt)

The tokenizer CNN is resolution-agnostic: a tokenizer trained at one resolution serves a transformer
whose finest scale implies another (the released VQ-VAE serves 256px and 512px models).
"""
from typing import Tuple

from viar_jax.io import checkpoint
from viar_jax.models import compat, factory, transformer, vqvae


def configs(vae_ckpt, model_ckpt) -> Tuple[vqvae.VQVAEConfig, transformer.TransformerConfig]:
  """Both configs (tokenizer fitted), without reading any params."""
  vae_cfg, cfg = checkpoint.load_config(vae_ckpt), checkpoint.load_config(model_ckpt)
  return compat.fit_tokenizer(vae_cfg, cfg, (vae_ckpt, model_ckpt)), cfg


def image_size(vae_ckpt, model_ckpt) -> int:
  """Side of the images the pair samples: finest token grid x tokenizer downsampling."""
  vae_cfg, _ = configs(vae_ckpt, model_ckpt)
  return vae_cfg.image_size


def load(vae_ckpt, model_ckpt):
  """-> (VQVAE module, its params, Transformer module, its params)."""
  vae_cfg, vae_params = checkpoint.load(vae_ckpt)
  cfg, params = checkpoint.load(model_ckpt)
  vae_cfg = compat.fit_tokenizer(vae_cfg, cfg, (vae_ckpt, model_ckpt))
  return vqvae.VQVAE(vae_cfg), vae_params, factory.module_for(cfg), params
