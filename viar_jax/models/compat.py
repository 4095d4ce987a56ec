"""Whether a tokenizer can feed a transformer: the one check for every place that pairs them."""
import dataclasses

from viar_jax.models import transformer, vqvae


def fit_tokenizer(vae_cfg: vqvae.VQVAEConfig, cfg: transformer.TransformerConfig,
                  sources=('the tokenizer', 'the transformer')) -> vqvae.VQVAEConfig:
  """`vae_cfg` checked against `cfg` and set to the transformer's scales.

  The tokenizer CNN is resolution-agnostic, so a tokenizer trained at one resolution serves a
  transformer whose finest scale implies another (the released VQ-VAE serves 256px and 512px
  models): the image side becomes finest scale x the tokenizer's downsampling. The codebook must
  match: vocab_size and z_channels. `sources` name where the two configs came from (e.g. checkpoint
  directories), for the messages.
  """
  if not isinstance(vae_cfg, vqvae.VQVAEConfig):
    raise ValueError(f'{sources[0]} holds a {type(vae_cfg).__name__}, not a tokenizer (VQVAEConfig)')
  if not isinstance(cfg, transformer.TransformerConfig):
    raise ValueError(f'{sources[1]} holds a {type(cfg).__name__}, not a transformer '
                     '(TransformerConfig)')
  mismatched = [f'{name}: tokenizer {getattr(vae_cfg, name)} vs transformer {getattr(cfg, name)}'
                for name in ('vocab_size', 'z_channels') if getattr(vae_cfg, name) != getattr(cfg, name)]
  if mismatched:
    raise ValueError('the tokenizer cannot feed this transformer: ' + '; '.join(mismatched))
  if vae_cfg.patch_nums == cfg.patch_nums:
    return vae_cfg
  return dataclasses.replace(vae_cfg, patch_nums=cfg.patch_nums,
                             image_size=cfg.patch_nums[-1] * vae_cfg.downsample)


def check_pair(vae_cfg: vqvae.VQVAEConfig, cfg: transformer.TransformerConfig) -> None:
  """Raises unless the tokenizer, exactly as configured, feeds the transformer (same scales too)."""
  fitted = fit_tokenizer(vae_cfg, cfg)
  if fitted != vae_cfg:
    raise ValueError(f'tokenizer patch_nums {vae_cfg.patch_nums} != transformer patch_nums '
                     f'{cfg.patch_nums}; use compat.fit_tokenizer to set the tokenizer to the '
                     f'transformer\'s scales')
