"""The model dataclasses from a run config's sections: the one bridge from ml_collections.

    vae_cfg = run_config.vqvae_config(c.tokenizer.vqvae)        # -> VQVAEConfig
    cfg = run_config.transformer_config(c.model, vae_cfg)       # -> TransformerConfig

The transformer takes its scales, vocabulary and latent width from the tokenizer it is paired with;
a model section that names them must agree. Checkpoints' config.json files go through
`dataclass_from` too (viar_jax.io.checkpoint).
"""
import dataclasses
from typing import Any, Mapping

from viar_jax.models import compat, transformer, vqvae


def _plain(section) -> dict:
  """A ConfigDict or mapping as a dict of plain values (placeholders -> None)."""
  return section.to_dict() if hasattr(section, 'to_dict') else dict(section)


def dataclass_from(cls, values: Mapping[str, Any], where: str):
  """`cls(**values)` with lists as tuples; unknown keys are an error naming `where`."""
  values = _plain(values)
  unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
  if unknown:
    raise ValueError(f'{where} has fields {sorted(unknown)} unknown to {cls.__name__}')
  return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def vqvae_config(section) -> vqvae.VQVAEConfig:
  """From `config.tokenizer.vqvae`."""
  return dataclass_from(vqvae.VQVAEConfig, section, 'config.tokenizer.vqvae')


def transformer_config(section, tokenizer: vqvae.VQVAEConfig) -> transformer.TransformerConfig:
  """From `config.model`; scales, vocabulary and latent width default to the tokenizer's, and a
  section that names them must agree with it (`compat.check_pair`)."""
  values = _plain(section)
  for name in ('patch_nums', 'vocab_size', 'z_channels'):
    values.setdefault(name, getattr(tokenizer, name))
  config = dataclass_from(transformer.TransformerConfig, values, 'config.model')
  compat.check_pair(tokenizer, config)
  return config
