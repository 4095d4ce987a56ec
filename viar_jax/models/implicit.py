"""VIAR's implicit layer F(z; x, c) = Block(P([z; x]), c), weight-tied across its iterations.

The layer owns the names of its parameters (`PARAM_NAMES`): the transformer shares its scope, so
they sit at the top level of the model's params next to `pre_blocks_*` / `post_blocks_*`, exactly
as the converter and released checkpoints lay them out. Training (JFB), both sampler cache modes
and the sharding rules select the layer's params through `params_of` rather than by spelling names.
"""
from typing import TYPE_CHECKING, Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from viar_jax.models import blocks

if TYPE_CHECKING:
  from viar_jax.models.transformer import TransformerConfig


class ImplicitProjection(nn.Module):
  """P: Linear(2C -> 2C) -> GELU(tanh) -> Linear(2C -> C), on [z ; x], computed in `dtype`."""
  init_std: float
  dtype: str = 'float32'

  @nn.compact
  def __call__(self, z_BLC, x_BLC):
    c = z_BLC.shape[-1]
    h = nn.Dense(2 * c, name='fc1', kernel_init=blocks.trunc_normal(self.init_std),
                 dtype=self.dtype)(jnp.concatenate([z_BLC, x_BLC], axis=-1))
    return nn.Dense(c, name='fc2', kernel_init=blocks.trunc_normal(self.init_std),
                    dtype=self.dtype)(jax.nn.gelu(h, approximate=True))


class ImplicitLayer(nn.Module):
  """One iteration z -> F(z; x, c); `cache` as in `blocks.AdaLNBlock` (returns (z, new_cache))."""
  config: 'TransformerConfig'
  drop_path_rate: float = 0.0

  PARAM_NAMES = ('implicit_block', 'implicit_proj')  # the attribute names set in setup

  def setup(self):
    self.implicit_block = blocks.AdaLNBlock(self.config, self.drop_path_rate)
    self.implicit_proj = ImplicitProjection(self.config.init_std, self.config.dtype)

  def __call__(self, z_BLC, x_BLC, cond, mask_LS=None, deterministic: bool = True,
               cache: Optional[blocks.Cache] = None):
    # P computes in the config's dtype; the block's residual stream starts in the state's dtype
    # (float32 under half-precision compute, see Transformer.__call__), so F keeps its precision.
    h_BLC = self.implicit_proj(z_BLC, x_BLC).astype(z_BLC.dtype)
    return self.implicit_block(h_BLC, cond, mask_LS, deterministic, cache)

  @classmethod
  def params_of(cls, model_params: Mapping[str, Any]) -> dict:
    """The layer's own params, picked out of the whole model's params."""
    return {name: model_params[name] for name in cls.PARAM_NAMES}

  def pure(self):
    """This layer unbound from its parent: `pure().apply({'params': params_of(p)}, ...)` is F as a
    function of explicit params, for loops (JFB, the sampler) that must not close over the model."""
    return self.clone(parent=None)
