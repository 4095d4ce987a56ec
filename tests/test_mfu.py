"""Model FLOPs and MFU: the per-token parameter count, the attention term, the device peaks."""
import types

import pytest

from viar_jax.models import factory, transformer
from viar_jax.train import mfu

SMALL = dict(embed_dim=64, num_heads=1, num_classes=10, patch_nums=(1, 2, 3), vocab_size=32,
             z_channels=4)


@pytest.mark.parametrize('implicit', [False, True])
def test_per_token_params_count_the_matmuls_applied_to_every_token(implicit):
  c = 64
  cfg = transformer.TransformerConfig(depth=4, **SMALL, implicit=implicit, pre_depth=1, post_depth=1)
  explicit, implicit_count = mfu.per_token_params(factory.abstract_params(cfg))
  per_block = 12 * c * c  # qkv 3C², proj C², FFN 8C² (AdaLN projections act once per sample)
  io = c * 32 + 4 * c  # head, word embedding
  blocks = 2 if implicit else 4
  assert explicit == blocks * per_block + io
  assert implicit_count == ((per_block + 6 * c * c) if implicit else 0)  # P: 2C·2C + 2C·C


def test_model_flops_formula():
  cfg = transformer.TransformerConfig(depth=4, **SMALL, implicit=True, pre_depth=1, post_depth=1)
  params = factory.abstract_params(cfg)
  n_explicit, n_implicit = mfu.per_token_params(params)
  pairs = mfu.attention_pairs(cfg, cfg.seq_len)
  assert pairs == 1 * 1 + 4 * 5 + 9 * 14  # each scale attends to itself and every coarser one
  attention = 4 * 64 * 2 * pairs
  want = 6 * n_explicit * 2 * 14 + 3 * 2 * attention + (2 * 3 + 6 * 2) * (n_implicit * 2 * 14 + attention)
  assert mfu.model_flops_per_step(cfg, params, 2, no_grad_iters=3, with_grad_iters=2) == want
  # A progressive stage's prefix costs less.
  assert mfu.model_flops_per_step(cfg, params, 2, num_tokens=5) < want


def test_peaks_and_utilisation():
  assert mfu.peak_flops('TPU v5 lite') == 197e12 and mfu.peak_flops('TPU v5') == 459e12
  assert mfu.peak_flops('NVIDIA H100 PCIe') == 756e12 and mfu.peak_flops('NVIDIA H100 80GB HBM3') == 989e12
  assert mfu.peak_flops('cpu') is None
  h100 = types.SimpleNamespace(device_kind='NVIDIA H100 80GB HBM3')
  assert mfu.utilisation(989e12, 1.0, [h100, h100]) == pytest.approx(0.5)
  assert mfu.utilisation(1e12, 1.0, [types.SimpleNamespace(device_kind='cpu')]) is None
