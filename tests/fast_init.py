"""Random params from abstract shapes: skips compiling a module's init (10-30 s on 2 cores) where a
test only needs some weights, not the reference initialisation."""
import jax
import numpy as np

from viar_jax.io import checkpoint


def random_params(config, seed: int = 0, std: float = 0.1):
  """Gaussian params (std `std`, norm scales around 1) for the module `config` builds."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    value = rng.normal(0.0, std, leaf.shape)
    if "'scale'" in name and leaf.ndim == 1:  # GroupNorm / LayerNorm scales
      value += 1.0
    return value.astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, checkpoint.abstract_params(config))
