"""VAR's optimiser as optax: global-norm clip -> AdamW with per-step lr and weight-decay schedules.

Reference: VAR `utils/lr_control.py` (`lr_wd_annealing`, `filter_params`) and `train_step.py`; see
shared/spec/VAR.md §4. At iteration `it` the reference sets lr(it) and wd(it) on the param groups,
clips the gradients to global L2 norm `tclip`, then runs `torch.optim.AdamW`, i.e.

  p <- p·(1 - lr·wd·wd_sc) - lr · m̂ / (√v̂ + eps)      (wd_sc = 0 for the no-decay group)

`optax.adamw` computes the same update: -lr · (m̂ / (√v̂ + eps) + wd·p), with its schedule counts
starting at 0 on the first update like the reference's first iteration.
"""
import math
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

# Substrings of a '/'-joined param path that put a >= 2-D param into the no-decay group: the
# reference's `nowd_keys`. Only pos_1LC, pos_start, lvl_embed, scale_mul, ada_gss occur in VAR/VIAR.
NO_DECAY_KEYS = ('cls_token', 'start_token', 'task_token', 'cfg_uncond', 'pos_embed', 'pos_1LC',
                 'pos_start', 'start_pos', 'lvl_embed', 'gamma', 'beta', 'ada_gss', 'moe_bias',
                 'scale_mul')


def peak_lr_from_tblr(tblr: float, global_batch: int) -> float:
  """Peak lr = tblr · global_batch / 256 (global_batch includes gradient accumulation)."""
  return tblr * global_batch / 256


def _decay_curve(kind: str, wpe: float) -> Callable:
  """Post-warm-up lr factor as a function of the progress p in [0, 1]; 1 at p = 0, wpe at p = 1."""
  def plateau_then_linear(t):  # 1 for p < t, then linear from 1 to wpe
    return lambda p: jnp.where(p < t, 1.0, wpe + (1 - wpe) * (1 - p) / (1 - t))

  if kind == 'cos':
    return lambda p: wpe + (1 - wpe) * (0.5 + 0.5 * jnp.cos(math.pi * p))
  if kind == 'lin':
    return plateau_then_linear(0.15)
  if kind == 'lin0':
    return plateau_then_linear(0.05)
  if kind == 'lin00':
    return lambda p: wpe + (1 - wpe) * (1 - p)
  if kind == 'exp':
    t = 0.15
    return lambda p: jnp.where(p < t, 1.0, jnp.exp((p - t) / (1 - t) * math.log(wpe)))
  if kind.startswith('lin'):  # 'linT' (progressive training): 1 -> mid over [0, T), then -> wpe
    try:
      t = float(kind[3:])
    except ValueError:
      t = -1.0
    if 0 < t < 1:
      mid = (1 + wpe + (1 - wpe) * (1 - t)) / 2
      return lambda p: jnp.where(p < t, 1 + (mid - 1) * p / t,
                                 wpe + (mid - wpe) * (1 - p) / (1 - t))
  raise ValueError(f"unknown lr schedule {kind!r}; expected 'lin0', 'lin', 'lin00', 'cos', 'exp' "
                   f"or 'linT' with 0 < T < 1")


def lr_schedule(peak_lr: float, total_steps: int, warmup_steps: int, wp0: float = 0.005,
                wpe: float = 0.01, kind: str = 'lin0') -> optax.Schedule:
  """The reference lr: linear warm-up from wp0·peak to peak, then `kind` decays it to wpe·peak.

  Warm-up (step < warmup_steps): peak · (wp0 + (1 - wp0) · step / warmup_steps). After it, with
  p = (step - warmup_steps) / (total_steps - 1 - warmup_steps), 'lin0' keeps the peak for p < 0.05
  and then falls linearly to wpe·peak at the last step (total_steps - 1). 'lin' is the same with a
  0.15 plateau, 'lin00' linear without plateau, 'cos' half a cosine. Unlike the reference, p is
  clipped to 1, so steps past the end stay at wpe·peak (the linear kinds would turn negative).
  """
  warmup_steps = round(warmup_steps)
  if total_steps < 1 or warmup_steps < 0:
    raise ValueError(f'need total_steps >= 1 and warmup_steps >= 0, got {total_steps} and '
                     f'{warmup_steps}')
  curve = _decay_curve(kind, wpe)  # fails on an unknown kind now, not at the first step
  span = max(total_steps - 1 - warmup_steps, 1)  # the reference divides by zero when <= 0

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = wp0 + (1 - wp0) * step / max(warmup_steps, 1)
    p = jnp.clip((step - warmup_steps) / span, 0.0, 1.0)
    return peak_lr * jnp.where(step < warmup_steps, warm, curve(p))
  return schedule


def wd_schedule(twd: float, twde: Optional[float], total_steps: int) -> optax.Schedule:
  """Weight decay, cosine from twd at step 0 to twde at the last step; constant twd if twde is None.

  wd(step) = twde + (twd - twde) · (½ + ½·cos(π · step / (total_steps - 1))), then held at twde.
  """
  twde = twd if twde is None else twde
  span = max(total_steps - 1, 1)

  def schedule(step):
    p = jnp.clip(jnp.asarray(step, jnp.float32) / span, 0.0, 1.0)
    return twde + (twd - twde) * (0.5 + 0.5 * jnp.cos(math.pi * p))
  return schedule


def param_name(path) -> str:
  """A jax key path as 'blocks_0/attn/mat_qkv/kernel'."""
  return jax.tree_util.keystr(path, simple=True, separator='/')


def decay_mask(params):
  """Pytree of bools like `params`: True where weight decay applies (the reference's 'D' group).

  No decay for 1-D params, names ending in 'bias' and names containing a `NO_DECAY_KEYS` entry (e.g.
  pos_1LC (1, L, C), scale_mul_1H11 (1, H, 1, 1), ada_gss (1, 1, 6, C) although they are >= 2-D).
  Works on arrays and on `jax.ShapeDtypeStruct`s.
  """
  def decays(path, leaf):
    name = param_name(path)
    return (len(leaf.shape) >= 2 and not name.endswith('bias')
            and not any(key in name for key in NO_DECAY_KEYS))
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(*, peak_lr: float, total_steps: int, warmup_steps: int, wpe: float = 0.01,
                   wp0: float = 0.005, schedule: str = 'lin0', twd: float = 0.05,
                   twde: Optional[float] = None, betas: Tuple[float, float] = (0.9, 0.95),
                   eps: float = 1e-8, clip_norm: Optional[float] = 2.0,
                   mu_dtype=None) -> optax.GradientTransformation:
  """Clip to global norm `clip_norm` (None or <= 0: no clipping), then AdamW with VAR's schedules.

  Weight decay is decoupled and scaled by the lr like torch.optim.AdamW, on `decay_mask` leaves.
  `mu_dtype` sets the first-moment dtype (e.g. jnp.bfloat16 to save memory); None keeps the params'.
  """
  adamw = optax.adamw(
      lr_schedule(peak_lr, total_steps, warmup_steps, wp0=wp0, wpe=wpe, kind=schedule),
      b1=betas[0], b2=betas[1], eps=eps, mu_dtype=mu_dtype,
      weight_decay=wd_schedule(twd, twde, total_steps), mask=decay_mask)
  if clip_norm is None or clip_norm <= 0:
    return adamw
  # torch's clip_grad_norm_ scales by clip / (norm + 1e-6), optax by clip / norm: they differ by a
  # relative 1e-6 / norm < 1e-6 / clip_norm, negligible next to float32 training noise.
  return optax.chain(optax.clip_by_global_norm(clip_norm), adamw)


def make_tokenizer_optimizer(*, lr: float, steps: int, clip_norm: float = 1.0,
                             betas: Tuple[float, float] = (0.9, 0.95),
                             final_lr_fraction: float = 0.05) -> optax.GradientTransformation:
  """The tokenizer's optimizer (config.tokenizer.lr, .steps): clip, then AdamW without decay.

  lr: linear warm-up from 0 over max(1, steps // 20) steps to `lr`, then a cosine to
  final_lr_fraction · lr at `steps`.
  """
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), steps,
                                                lr * final_lr_fraction)
  return optax.chain(optax.clip_by_global_norm(clip_norm),
                     optax.adamw(schedule, b1=betas[0], b2=betas[1], weight_decay=0.0))


def make_discriminator_optimizer(*, lr: float) -> optax.GradientTransformation:
  """The patch discriminator's (config.tokenizer.disc_lr): constant Adam(b1=0.5, b2=0.9) as taming."""
  return optax.adam(lr, b1=0.5, b2=0.9)
