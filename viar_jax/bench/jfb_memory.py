"""JFB training memory: XLA temp bytes of a VIAR loss + grad step vs K (no-grad) and m_max (with-grad).

K should cost nothing (lax.while_loop behind stop_gradient) and every extra differentiated iteration
about one carry (B·L·C floats) thanks to the checkpointed scan. XLA's compiled memory analysis is
meaningful on CPU too.
"""
import time
from typing import Dict, List

import jax

from viar_jax import profiling
from viar_jax.io import released
from viar_jax.models import transformer

SMALL_PATCH_NUMS = (1, 2, 3, 4, 6, 8)
POINTS = ((0, 2), (10, 2), (20, 2), (0, 4), (0, 8), (0, 12), (20, 12))  # (K, m)


def viar_d30_config(embed_dim: int, patch_nums, m_max: int) -> transformer.TransformerConfig:
  """VIAR-d30's block layout (5 pre / implicit / 5 post) at width `embed_dim`, 64 channels a head."""
  return transformer.TransformerConfig(
      depth=30, embed_dim=embed_dim, num_heads=max(1, embed_dim // 64), num_classes=10,
      patch_nums=patch_nums, vocab_size=4096, z_channels=32, implicit=True, pre_depth=5,
      post_depth=5, with_grad_iters_range=(1, m_max))


def run(embed_dim: int = 128, batch: int = 2, full_scales: bool = False) -> List[Dict]:
  """Prints one table row per (K, m) in POINTS; returns the rows (temp bytes, compile seconds)."""
  patch_nums = released.PATCH_NUMS_256 if full_scales else SMALL_PATCH_NUMS
  cfg = viar_d30_config(embed_dim, patch_nums, 1)
  carry = batch * cfg.seq_len * cfg.embed_dim * 4
  print(f'VIAR pre 5 / implicit / post 5, C={cfg.embed_dim}, L={cfg.seq_len}, batch {batch}, '
        f'backend {jax.default_backend()}; one carry = {carry / 2**20:.2f} MiB')
  print(f'{"K (no-grad)":>12} {"m (with-grad)":>14} {"temp MiB":>10} {"vs K=0,m=2":>11} {"compile s":>10}')
  base, rows = None, []
  for k, m in POINTS:
    t0 = time.perf_counter()
    temp = profiling.viar_grad_step_memory(viar_d30_config(embed_dim, patch_nums, m), batch, k,
                                           m).temp_bytes
    seconds = time.perf_counter() - t0
    base = base or temp
    print(f'{k:>12} {m:>14} {temp / 2**20:>10.2f} {temp / base:>11.3f} {seconds:>10.1f}')
    rows.append({'no_grad_iters': k, 'with_grad_iters': m, 'temp_bytes': temp, 'compile_s': seconds})
  return rows
