"""Compile-time memory facts from XLA (meaningful on CPU too, unlike peak device stats)."""
from typing import Dict

import jax
import jax.numpy as jnp

from viar_jax.models import transformer


def compiled_memory(fn, *args, **jit_kwargs) -> Dict[str, int]:
  """Bytes XLA reserves for `jax.jit(fn)(*args)`: temp (activations, scratch), arguments, outputs."""
  analysis = jax.jit(fn, **jit_kwargs).lower(*args).compile().memory_analysis()
  return {'temp': int(analysis.temp_size_in_bytes),
          'argument': int(analysis.argument_size_in_bytes),
          'output': int(analysis.output_size_in_bytes)}


def cross_entropy(logits_BLV, targets_BL):
  """Mean token cross-entropy, fp32."""
  logp = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, targets_BL[..., None], axis=-1))


def viar_grad_step_memory(config: transformer.TransformerConfig, batch: int, no_grad_iters: int,
                          with_grad_iters: int) -> Dict[str, int]:
  """Compiled memory of loss + grad of a VIAR teacher-forced step with K and m fixed.

  `config.with_grad_iters_range[1]` sets the scan length of the differentiated phase (m_max).
  """
  model = transformer.Transformer(config)
  labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
  x = jax.ShapeDtypeStruct((batch, config.seq_len - config.patch_nums[0]**2, config.z_channels),
                           jnp.float32)
  targets = jax.ShapeDtypeStruct((batch, config.seq_len), jnp.int32)
  params = jax.eval_shape(lambda l, v: model.init(jax.random.PRNGKey(0), l, v), labels, x)['params']

  def loss_and_grad(params, labels, x, targets):
    def loss(p):
      logits = model.apply({'params': p}, labels, x, no_grad_iters=no_grad_iters,
                           with_grad_iters=with_grad_iters)
      return cross_entropy(logits, targets)
    return jax.value_and_grad(loss)(params)

  return compiled_memory(loss_and_grad, params, labels, x, targets)
