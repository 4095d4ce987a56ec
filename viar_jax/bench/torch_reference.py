"""The official PyTorch VAR sampler (FoundationVision/VAR) at a sampling benchmark's shapes.

    ref = torch_reference.load('/path/to/VAR')            # the repository root (holds models/)
    vae, var = torch_reference.build(ref, settings)        # random weights, eval mode
    call = torch_reference.sample_call(var, settings, labels_B)
    call()                                                 # autoregressive_infer_cfg incl. decode
    viar = torch_reference.build_viar(ref, vae, settings)  # VIAR of the reference's modules
    call = torch_reference.viar_sample_call(viar, settings, labels_B, iters)

Nothing here is vendored: the sources come from `src` (a checkout of the public repository) and
`torch` from the environment (the project's `torch` extra). The repository's training-only imports
are stubbed where absent: `dist` (its single-process helpers) and `huggingface_hub` (the Hub mixin of
`VARHF`, unused here). VIAR has no public code: `build_viar` / `viar_sample_call` make its sampler of
the reference's modules, `autoregressive_infer_cfg` with the implicit loop and per-iteration caches.
"""
import importlib
import os
import sys
import types
from typing import Callable, Tuple

import numpy as np


class ReferenceUnavailable(RuntimeError):
  """torch or the reference sources cannot be imported; the message says why."""


def cpu_threads() -> int:
  """The cores this process may run on (what XLA:CPU's thread pool uses too)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _stub_missing_modules():
  """The reference imports `dist` (a repo-local module of distributed helpers) and
  `huggingface_hub` at import time; a single CPU process needs neither."""
  try:
    importlib.import_module('dist')
  except ImportError:
    sys.modules['dist'] = types.SimpleNamespace(
        get_device=lambda: 'cpu', initialized=lambda: False, get_world_size=lambda: 1)
  try:
    importlib.import_module('huggingface_hub')
  except ImportError:
    sys.modules['huggingface_hub'] = types.SimpleNamespace(PyTorchModelHubMixin=object)


def load(src: str):
  """-> the reference's `models` package from the repository root `src`, torch on `cpu_threads()`
  threads. Raises ReferenceUnavailable."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ReferenceUnavailable(f'torch is not installed ({e}); pip install -e ".[torch]"') from e
  if not os.path.isfile(os.path.join(src, 'models', 'var.py')):
    raise ReferenceUnavailable(f'{src} holds no models/var.py (expected a FoundationVision/VAR checkout)')
  sys.path.insert(0, os.path.abspath(src))
  _stub_missing_modules()
  try:
    models = importlib.import_module('models')
  except Exception as e:  # pylint: disable=broad-except  (any import failure: report and go JAX-only)
    raise ReferenceUnavailable(f'importing the reference from {src} failed: {e!r}') from e
  finally:
    sys.path.remove(os.path.abspath(src))
  torch.set_num_threads(cpu_threads())
  return models


def build(ref, settings) -> Tuple:
  """(VQVAE, VAR) of the reference at the settings' shapes, with its own initialisation (VAR:
  `init_weights` as `build_vae_var` calls it; VQ-VAE: PyTorch defaults). Timing does not depend on
  the values. Flash / fused kernels off: CPU eager, as the reference runs without CUDA."""
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  vae = ref.VQVAE(vocab_size=settings.vocab_size, z_channels=settings.z_channels, ch=settings.vae_ch,
                  test_mode=True, share_quant_resi=4, v_patch_nums=settings.patch_nums)
  return vae.eval(), _var(ref, vae, settings, settings.depth)


def _var(ref, vae, settings, depth: int):
  var = ref.VAR(vae_local=vae, num_classes=settings.num_classes, depth=depth,
                embed_dim=settings.embed_dim, num_heads=settings.num_heads,
                drop_path_rate=0.1 * depth / 24, attn_l2_norm=True,
                patch_nums=settings.patch_nums, flash_if_available=False, fused_if_available=False)
  var.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
  return var.eval()


def build_viar(ref, vae, settings) -> Tuple:
  """VIAR made of the reference's own modules (there is no public VIAR code): a reference VAR of
  pre + 1 + post blocks, block `pre_depth` being the weight-tied implicit block, and the projection
  P = Linear(2C, 2C) -> GELU(tanh) -> Linear(2C, C) on [z ; x]. -> (var, projection)."""
  import torch  # pylint: disable=import-outside-toplevel
  c = settings.embed_dim
  projection = torch.nn.Sequential(torch.nn.Linear(2 * c, 2 * c), torch.nn.GELU(approximate='tanh'),
                                   torch.nn.Linear(2 * c, c))
  return _var(ref, vae, settings, settings.pre_depth + 1 + settings.post_depth), projection.eval()


def sample_call(var, settings, labels_B) -> Callable[[], object]:
  """A no-argument call of `autoregressive_infer_cfg` with the settings' batch, CFG and top-k/p,
  seeded, returning the decoded images (B, 3, H, W)."""
  import torch  # pylint: disable=import-outside-toplevel
  labels = torch.as_tensor(np.array(labels_B), dtype=torch.long)
  top_k = min(settings.top_k, settings.vocab_size)

  def call():
    with torch.inference_mode():
      return var.autoregressive_infer_cfg(B=len(labels), label_B=labels, g_seed=0, cfg=settings.cfg,
                                          top_k=top_k, top_p=settings.top_p)
  return call


def viar_sample_call(viar, settings, labels_B, iters) -> Callable[[], object]:
  """A no-argument call of `autoregressive_infer_cfg` (the reference code, line for line) with VIAR's
  middle: pre blocks, `iters[s]` iterations z <- Block(P([z ; x])) of the implicit block at scale s,
  post blocks. Iteration i reads and extends its own KV cache (what iteration i wrote at the earlier
  scales that ran more than i iterations): the per-iteration semantics of our `per_iteration` mode."""
  import torch  # pylint: disable=import-outside-toplevel
  from models.helpers import sample_with_top_k_top_p_  # pylint: disable=import-outside-toplevel
  var, projection = viar
  pre, implicit, post = (var.blocks[:settings.pre_depth], var.blocks[settings.pre_depth],
                         var.blocks[settings.pre_depth + 1:])
  labels = torch.as_tensor(np.array(labels_B), dtype=torch.long)
  top_k = min(settings.top_k, settings.vocab_size)
  b = len(labels)

  def call():
    with torch.inference_mode():
      rng = var.rng
      rng.manual_seed(0)
      sos = cond_BD = var.class_emb(torch.cat((labels, torch.full_like(labels, var.num_classes))))
      lvl_pos = var.lvl_embed(var.lvl_1L) + var.pos_1LC
      next_token_map = (sos.unsqueeze(1).expand(2 * b, var.first_l, -1)
                        + var.pos_start.expand(2 * b, var.first_l, -1) + lvl_pos[:, :var.first_l])
      cur_L, f_hat = 0, sos.new_zeros(b, var.Cvae, var.patch_nums[-1], var.patch_nums[-1])
      caches = [(None, None)] * max(iters)
      for blk in var.blocks:
        blk.attn.kv_caching(True)
      for si, pn in enumerate(var.patch_nums):
        ratio = si / var.num_stages_minus_1
        cur_L += pn * pn
        cond = var.shared_ada_lin(cond_BD)
        x = next_token_map
        for blk in pre:
          x = blk(x=x, cond_BD=cond, attn_bias=None)
        z = x
        for i in range(iters[si]):
          implicit.attn.cached_k, implicit.attn.cached_v = caches[i]
          z = implicit(x=projection(torch.cat((z, x), dim=-1)), cond_BD=cond, attn_bias=None)
          caches[i] = implicit.attn.cached_k, implicit.attn.cached_v
        x = z
        for blk in post:
          x = blk(x=x, cond_BD=cond, attn_bias=None)
        logits_BlV = var.get_logits(x, cond_BD)
        t = settings.cfg * ratio
        logits_BlV = (1 + t) * logits_BlV[:b] - t * logits_BlV[b:]
        idx_Bl = sample_with_top_k_top_p_(logits_BlV, rng=rng, top_k=top_k, top_p=settings.top_p,
                                          num_samples=1)[:, :, 0]
        h_BChw = var.vae_quant_proxy[0].embedding(idx_Bl).transpose_(1, 2).reshape(b, var.Cvae, pn, pn)
        f_hat, next_token_map = var.vae_quant_proxy[0].get_next_autoregressive_input(
            si, len(var.patch_nums), f_hat, h_BChw)
        if si != var.num_stages_minus_1:
          next_token_map = next_token_map.view(b, var.Cvae, -1).transpose(1, 2)
          next_token_map = (var.word_embed(next_token_map)
                            + lvl_pos[:, cur_L:cur_L + var.patch_nums[si + 1] ** 2]).repeat(2, 1, 1)
      for blk in var.blocks:
        blk.attn.kv_caching(False)
      return var.vae_proxy[0].fhat_to_img(f_hat).add_(1).mul_(0.5)
  return call


def decode_call(vae, settings) -> Callable[[], object]:
  """A no-argument call of the reference `fhat_to_img` on a random f̂ (B, Cvae, n, n)."""
  import torch  # pylint: disable=import-outside-toplevel
  n = settings.patch_nums[-1]
  f_hat = torch.randn(settings.batch, settings.z_channels, n, n, generator=torch.Generator().manual_seed(0))

  def call():
    with torch.inference_mode():
      return vae.fhat_to_img(f_hat)
  return call
