"""Model FLOPs utilisation: the FLOPs a step must do, over what the devices could do in that time.

Model FLOPs of one VAR / VIAR training step on B sequences of T tokens (T = L, or a progressive
stage's prefix), counting multiply-adds as 2 FLOPs and the backward pass as twice the forward:
  explicit blocks, word embedding and head   6 · N_explicit · B·T  +  3 · A_explicit
  implicit layer, K no-grad + m with-grad    (2K + 6m) · (N_implicit · B·T + A_layer)
where N are the per-token matmul parameters (attention qkv / proj, FFN, VIAR's projection P, head,
word embedding: not the AdaLN projections, applied once per sample, nor embedding tables) and A the
attention matmuls of the forward pass: 4 · C · B · (query, key) pairs the block-causal mask allows,
per block. Rematerialisation and JFB's checkpointed recompute are not model FLOPs (they are in the
compiler's count, which the log shows beside it as hardware FLOP/s).
"""
from typing import Optional

import jax
import numpy as np

from viar_jax.models import implicit, transformer

# Dense bfloat16 peak FLOP/s of one JAX device (a chip; a core for TPU v2/v3), vendor figures
# without sparsity. Longest matching prefix of `device.device_kind` wins.
PEAK_FLOPS = {
    'TPU v2': 22.5e12, 'TPU v3': 61.5e12, 'TPU v4': 275e12, 'TPU v5 lite': 197e12,
    'TPU v5': 459e12, 'TPU v6 lite': 918e12, 'TPU7x': 2307e12,
    'NVIDIA A100': 312e12, 'NVIDIA H100': 989e12, 'NVIDIA H100 PCIe': 756e12,
    'NVIDIA H100 NVL': 835e12, 'NVIDIA H200': 989e12, 'NVIDIA GH200': 989e12,
    'NVIDIA B200': 2250e12, 'NVIDIA L4': 121e12, 'NVIDIA L40S': 362e12,
}
_PER_TOKEN_MATMULS = ('mat_qkv', 'proj', 'fc1', 'fc2', 'head', 'word_embed')


def peak_flops(device_kind: str) -> Optional[float]:
  """Peak FLOP/s of a device kind; None for one not in PEAK_FLOPS (the CPU, unknown chips)."""
  matches = [k for k in PEAK_FLOPS if device_kind.startswith(k)]
  return PEAK_FLOPS[max(matches, key=len)] if matches else None


def per_token_params(params) -> tuple:
  """(N_explicit, N_implicit): per-token matmul kernel sizes of a transformer's params (or shapes)."""
  implicit_names = set(implicit.ImplicitLayer.PARAM_NAMES)
  explicit = implicit_count = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    names = [getattr(k, 'key', str(k)) for k in path]
    if names[-1] != 'kernel' or 'ada_lin' in names or not set(names) & set(_PER_TOKEN_MATMULS):
      continue
    size = int(np.prod(leaf.shape))
    if implicit_names & set(names):
      implicit_count += size
    else:
      explicit += size
  return explicit, implicit_count


def attention_pairs(config: transformer.TransformerConfig, num_tokens: int) -> int:
  """(query, key) pairs the block-causal mask allows among the first `num_tokens` tokens."""
  return int(transformer.block_causal_mask(config.patch_nums)[:num_tokens, :num_tokens].sum())


def model_flops_per_step(config: transformer.TransformerConfig, params, batch: int,
                         num_tokens: Optional[int] = None, no_grad_iters: float = 0,
                         with_grad_iters: float = 0) -> float:
  """Model FLOPs of one training step (see the module docstring); K and m may be averages."""
  tokens = config.seq_len if num_tokens is None else num_tokens
  n_explicit, n_implicit = per_token_params(params)
  attention = 4 * config.embed_dim * batch * attention_pairs(config, tokens)  # one block, forward
  explicit_blocks = (config.pre_depth + config.post_depth) if config.implicit else config.depth
  flops = 6 * n_explicit * batch * tokens + 3 * explicit_blocks * attention
  if config.implicit:
    flops += (2 * no_grad_iters + 6 * with_grad_iters) * (n_implicit * batch * tokens + attention)
  return float(flops)


def mean_iters(config: transformer.TransformerConfig) -> dict:
  """VIAR's K and m are drawn per step: their means over the config's ranges (model_flops_per_step
  keywords); {} for VAR."""
  if not config.implicit:
    return {}
  return dict(no_grad_iters=float(np.mean(config.no_grad_iters_range)),
              with_grad_iters=float(np.mean(config.with_grad_iters_range)))


def utilisation(model_flops: float, step_seconds: float, devices) -> Optional[float]:
  """MFU in [0, 1]: model FLOPs / (step time · Σ device peaks); None if a device's peak is unknown."""
  peaks = [peak_flops(d.device_kind) for d in devices]
  if not peaks or None in peaks or step_seconds <= 0:
    return None
  return model_flops / (step_seconds * sum(peaks))
