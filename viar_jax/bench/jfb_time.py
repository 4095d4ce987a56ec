"""JFB training time vs m: one compiled `jit(grad)` timed at several differentiated-iteration counts.

Two programs, each compiled once with K and m as traced arguments (no recompile per m):
  implicit layer   `solvers.jfb_fixed_point` over VIAR's implicit layer alone, m_max = 12: steps past m
                   are skipped (`lax.cond`), so time should grow ~linearly in m from ~0.
  VIAR step        the whole teacher-forced loss + grad (5 pre / implicit / 5 post blocks), where the
                   pre/post blocks are a floor that every m pays.
The figure of merit is time(m=1) / time(m=12) of the implicit layer (target <= 0.35; it was 0.83
when skipped steps were computed and discarded). Times are medians of interleaved repeats.
"""
import time
from typing import Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from viar_jax.bench import jfb_memory
from viar_jax.io import released
from viar_jax.models import factory, implicit, solvers, transformer

M_VALUES = (1, 2, 4, 8, 12)
M_MAX = 12


def _median_times(fn, args_of_m, m_values: Sequence[int], repeats: int) -> Dict[int, float]:
  """Median seconds per m, interleaving the m values so machine noise hits them alike."""
  jax.block_until_ready(fn(*args_of_m(m_values[0])))  # compile once
  times = {m: [] for m in m_values}
  for _ in range(repeats):
    for m in m_values:
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args_of_m(m)))
      times[m].append(time.perf_counter() - t0)
  return {m: float(np.median(ts)) for m, ts in times.items()}


def implicit_layer_grad(cfg: transformer.TransformerConfig, batch: int, no_grad_iters: int = 0):
  """(jitted grad of sum(z*²) w.r.t. the implicit layer's params, args_of_m)."""
  params = implicit.ImplicitLayer.params_of(factory.random_params(cfg, std=0.02))
  layer = transformer.implicit_layer(cfg)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, cfg.seq_len, cfg.embed_dim)), jnp.float32)
  cond = jnp.asarray(rng.normal(size=(batch, cfg.embed_dim)), jnp.float32)
  mask = jnp.asarray(transformer.block_causal_mask(cfg.patch_nums))

  def loss(p, k, m):
    step = lambda p, z, inj: layer.apply({'params': p}, z, inj, cond, mask)
    z = solvers.jfb_fixed_point(step, p, x, x, no_grad_iters=k, with_grad_iters=m,
                                max_with_grad_iters=M_MAX)
    return jnp.mean(jnp.square(z))

  grad = jax.jit(jax.grad(loss))
  return grad, lambda m: (params, jnp.int32(no_grad_iters), jnp.int32(m))


def model_grad(cfg: transformer.TransformerConfig, batch: int, no_grad_iters: int = 0):
  """(jitted grad of the teacher-forced cross-entropy w.r.t. all params, args_of_m)."""
  model = factory.module_for(cfg)
  params = factory.random_params(cfg, std=0.02)
  rng = np.random.default_rng(0)
  labels = jnp.asarray(rng.integers(0, cfg.num_classes, batch), jnp.int32)
  x = jnp.asarray(rng.normal(size=factory.teacher_forcing_shapes(cfg, batch)[1].shape), jnp.float32)
  targets = jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, cfg.seq_len)), jnp.int32)

  def loss(p, k, m):
    logits = model.apply({'params': p}, labels, x, no_grad_iters=k, with_grad_iters=m)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))

  grad = jax.jit(jax.grad(loss))
  return grad, lambda m: (params, jnp.int32(no_grad_iters), jnp.int32(m))


def run(embed_dim: int = 256, batch: int = 2, full_scales: bool = False, repeats: int = 3,
        m_values: Sequence[int] = M_VALUES) -> List[Dict]:
  """Prints the table; returns rows {'program', 'with_grad_iters', 'seconds', 'vs_m_max'}."""
  patch_nums = released.PATCH_NUMS_256 if full_scales else jfb_memory.SMALL_PATCH_NUMS
  cfg = jfb_memory.viar_d30_config(embed_dim, patch_nums, M_MAX)
  print(f'VIAR pre 5 / implicit / post 5, C={cfg.embed_dim}, L={cfg.seq_len}, batch {batch}, '
        f'm_max {M_MAX}, K 0, backend {jax.default_backend()}; median of {repeats}')
  print(f'{"program":>15} {"m":>3} {"ms":>9} {"vs m=" + str(max(m_values)):>8}')
  rows = []
  for name, build in (('implicit layer', implicit_layer_grad), ('VIAR step', model_grad)):
    fn, args_of_m = build(cfg, batch)
    times = _median_times(fn, args_of_m, m_values, repeats)
    for m in m_values:
      ratio = times[m] / times[max(m_values)]
      print(f'{name:>15} {m:>3} {times[m] * 1e3:>9.1f} {ratio:>8.3f}')
      rows.append({'program': name, 'with_grad_iters': m, 'seconds': times[m], 'vs_m_max': ratio})
  return rows
