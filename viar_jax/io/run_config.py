"""The model dataclasses from a run config's sections: the one bridge from ml_collections.

    vae_cfg = run_config.vqvae_config(c.tokenizer.vqvae)        # -> VQVAEConfig
    cfg = run_config.transformer_config(c.model, vae_cfg)       # -> TransformerConfig

The transformer takes its scales, vocabulary and latent width from the tokenizer it is paired with;
a model section that names them must agree. Checkpoints' config.json files go through
`dataclass_from` too (viar_jax.io.checkpoint).
"""
import dataclasses
from typing import Any, Mapping

import numpy as np

from viar_jax.models import transformer, vqvae

# Facts of the tokenizer that the transformer must share.
TOKENIZER_FIELDS = ('patch_nums', 'vocab_size', 'z_channels')


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
  """From `config.model`, with TOKENIZER_FIELDS taken from the tokenizer's config."""
  values = _plain(section)
  for k in TOKENIZER_FIELDS:
    if k in values and tuple(np.atleast_1d(values[k])) != tuple(np.atleast_1d(getattr(tokenizer, k))):
      raise ValueError(f'config.model.{k}={values[k]} is inconsistent with the tokenizer '
                       f'({getattr(tokenizer, k)})')
  values.update({k: getattr(tokenizer, k) for k in TOKENIZER_FIELDS})
  return dataclass_from(transformer.TransformerConfig, values, 'config.model')
