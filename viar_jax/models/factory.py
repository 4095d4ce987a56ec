"""Shapes and params of the modules a config builds, without compiling an init.

    labels, x_BLCv = factory.teacher_forcing_shapes(transformer_config, batch)   # ShapeDtypeStructs
    template = factory.abstract_params(config)  # ShapeDtypeStruct tree; allocates nothing
    params = factory.random_params(config, seed=0)  # numpy-drawn weights of those shapes

One owner for these facts: the trainer, checkpoints, sharding, benchmarks, profiling and the tests all
ask here instead of rebuilding example inputs.
"""
from typing import Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from viar_jax.models import transformer, vqvae

Config = Union[transformer.TransformerConfig, vqvae.VQVAEConfig]


def teacher_forcing_shapes(config: transformer.TransformerConfig, batch: int
                           ) -> Tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
  """(labels (B,) int32, teacher-forcing input (B, L - pn_0², Cvae) float32) of a transformer."""
  labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
  x_BLCv = jax.ShapeDtypeStruct((batch, config.seq_len - config.patch_nums[0]**2, config.z_channels),
                                jnp.float32)
  return labels, x_BLCv


def image_shape(config: vqvae.VQVAEConfig, batch: int, dtype=jnp.float32) -> jax.ShapeDtypeStruct:
  """(B, H, W, C) images at the tokenizer's native resolution: float32 in [-1, 1] as the models take
  them, or uint8 as the training loader yields them (the train steps convert on the device)."""
  return jax.ShapeDtypeStruct((batch, config.image_size, config.image_size, config.in_channels),
                              dtype)


def module_for(config: Config) -> nn.Module:
  if isinstance(config, vqvae.VQVAEConfig):
    return vqvae.VQVAE(config)
  if isinstance(config, transformer.TransformerConfig):
    return transformer.Transformer(config)
  raise TypeError(f'no module is built from a {type(config).__name__}')


def example_inputs(config: Config, batch: int = 1) -> tuple:
  """Abstract positional inputs of the module's `__call__` (what `init` traces)."""
  if isinstance(config, vqvae.VQVAEConfig):
    return (image_shape(config, batch),)
  return teacher_forcing_shapes(config, batch)


def abstract_module_params(module: nn.Module, *init_args, method=None):
  """Param shapes of any Linen module for abstract (or concrete) `init` args; allocates nothing."""
  init = lambda *a: module.init(jax.random.PRNGKey(0), *a, method=method)
  return jax.eval_shape(init, *init_args)['params']


def abstract_params(config: Config):
  """Param shapes (ShapeDtypeStruct tree) of the module a config builds."""
  return abstract_module_params(module_for(config), *example_inputs(config))


def init_params(config: Config, key: jax.Array):
  """The reference initialisation (compiles the module's init)."""
  return module_for(config).init(key, *[jnp.zeros(s.shape, s.dtype) for s in example_inputs(config)]
                                 )['params']


def random_params(config_or_template, seed: int = 0, std: float = 0.1):
  """Gaussian params (std `std`; norm scales around 1) of a config's module, or of a shape tree.

  Skips compiling the init (10-30 s on 2 cores) where only some weights are needed: tests,
  benchmarks, memory checks. Not the reference initialisation.
  """
  template = config_or_template
  if isinstance(config_or_template, (transformer.TransformerConfig, vqvae.VQVAEConfig)):
    template = abstract_params(config_or_template)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    value = rng.normal(0.0, std, leaf.shape)
    if "'scale'" in jax.tree_util.keystr(path) and leaf.ndim == 1:  # GroupNorm / LayerNorm scales
      value += 1.0
    return jnp.asarray(value.astype(leaf.dtype))

  return jax.tree_util.tree_map_with_path(draw, template)
