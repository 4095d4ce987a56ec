"""JFB training memory: XLA temp bytes of a VIAR loss + grad step vs K (no-grad) and m_max (with-grad).

    python -m launch.bench_jfb_memory [--embed_dim 128] [--batch 2] [--full_scales]

Uses XLA's compiled memory analysis (meaningful on CPU). Prints one table; K should cost nothing
(lax.while_loop behind stop_gradient) and every extra differentiated iteration about one carry
(B·L·C floats) thanks to the checkpointed scan.
"""
import argparse
import time

import jax
import jax.numpy as jnp

from viar_jax import profiling
from viar_jax.models import transformer


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--embed_dim', type=int, default=128)
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--full_scales', action='store_true', help='256px schedule (L = 680)')
  args = parser.parse_args()
  patch_nums = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16) if args.full_scales else (1, 2, 3, 4, 6, 8)

  def config(m_max):
    return transformer.TransformerConfig(
        depth=30, embed_dim=args.embed_dim, num_heads=max(1, args.embed_dim // 64), num_classes=10,
        patch_nums=patch_nums, vocab_size=4096, z_channels=32, implicit=True, pre_depth=5,
        post_depth=5, with_grad_iters_range=(1, m_max))

  cfg = config(1)
  carry = args.batch * cfg.seq_len * cfg.embed_dim * 4
  print(f'VIAR pre 5 / implicit / post 5, C={cfg.embed_dim}, L={cfg.seq_len}, batch {args.batch}, '
        f'backend {jax.default_backend()}; one carry = {carry / 2**20:.2f} MiB')
  print(f'{"K (no-grad)":>12} {"m (with-grad)":>14} {"temp MiB":>10} {"vs K=0,m=2":>11} {"compile s":>10}')
  base = None
  for k, m in [(0, 2), (10, 2), (20, 2), (0, 4), (0, 8), (0, 12), (20, 12)]:
    t0 = time.perf_counter()
    temp = profiling.viar_grad_step_memory(config(m), args.batch, k, m)['temp']
    base = base or temp
    print(f'{k:>12} {m:>14} {temp / 2**20:>10.2f} {temp / base:>11.3f} {time.perf_counter() - t0:>10.1f}')


if __name__ == '__main__':
  main()
