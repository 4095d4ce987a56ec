"""The official PyTorch VAR sampler (FoundationVision/VAR) at a sampling benchmark's shapes.

    ref = torch_reference.load('/path/to/VAR')            # the repository root (holds models/)
    vae, var = torch_reference.build(ref, settings)        # random weights, eval mode
    call = torch_reference.sample_call(var, settings, labels_B)
    call()                                                 # autoregressive_infer_cfg incl. decode

Nothing here is vendored: the sources come from `src` (a checkout of the public repository) and
`torch` from the environment (the project's `torch` extra). The repository's training-only imports
are stubbed where absent: `dist` (its single-process helpers) and `huggingface_hub` (the Hub mixin of
`VARHF`, unused here). Only VAR has a public reference; VIAR rows stay JAX-only.
"""
import importlib
import os
import sys
import types
from typing import Callable, Tuple


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
  var = ref.VAR(vae_local=vae, num_classes=settings.num_classes, depth=settings.depth,
                embed_dim=settings.embed_dim, num_heads=settings.num_heads,
                drop_path_rate=0.1 * settings.depth / 24, attn_l2_norm=True,
                patch_nums=settings.patch_nums, flash_if_available=False, fused_if_available=False)
  var.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
  return vae.eval(), var.eval()


def sample_call(var, settings, labels_B) -> Callable[[], object]:
  """A no-argument call of `autoregressive_infer_cfg` with the settings' batch, CFG and top-k/p,
  seeded, returning the decoded images (B, 3, H, W)."""
  import torch  # pylint: disable=import-outside-toplevel
  labels = torch.as_tensor(labels_B, dtype=torch.long)
  top_k = min(settings.top_k, settings.vocab_size)

  def call():
    with torch.inference_mode():
      return var.autoregressive_infer_cfg(B=len(labels), label_B=labels, g_seed=0, cfg=settings.cfg,
                                          top_k=top_k, top_p=settings.top_p)
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
