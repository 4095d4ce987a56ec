"""Reconstruction quality of a trained tokenizer: digits-FID, class accuracy, codebook usage, and a
`reconstructions.png` of real digits over their reconstructions from every scale prefix.

    from viar_jax.eval import tokenizer_quality
    m = tokenizer_quality.evaluate(vae, params, out_dir)   # digits: FID / accuracy / usage + PNG
    m = tokenizer_quality.evaluate(vae, params, out_dir, images=batch_uint8)  # other data: usage + PNG

On the digits the metrics follow the issue's protocol: `NUM_EVAL` (1000) train digits, chosen with a
fixed seed, are tokenized and decoded; their reconstructions' digits-FID is measured against the test
split (`digits_eval`), next to the FID of the same 1000 real digits (the floor at this sample count)
and the harness's reference (all 1500 train digits). Codebook usage per scale is the fraction of the
vocabulary hit at that scale over those images; perplexity is exp(entropy) of the scale's code
histogram (= vocab_size when uniform). Reconstructions are rounded to uint8 as `launch.sample` does.
"""
import functools
import json
from typing import Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from viar_jax.io import png
from viar_jax.models import quantizer, vqvae

NUM_EVAL = 1000
GRID_COLS = 16
METRICS_FILE = 'reconstruction_metrics.json'
PNG_FILE = 'reconstructions.png'


@functools.partial(jax.jit, static_argnums=0)
def _prefix_decode(vae: vqvae.VQVAE, params, images_BHWC):
  """-> (decoded image after every scale prefix, list over scales (B, H, W, C) in [-1, 1];
  token maps per scale)."""
  def run(m, x):
    rq = m.quantize.residual_pass(m.encode(x))
    return [m.fhat_to_img(f) for f in rq.f_hats], rq.indices
  return vae.apply({'params': params}, images_BHWC, method=run)


def reconstruct(vae: vqvae.VQVAE, params, images_uint8, batch_size: int = 250):
  """uint8 (N, H, W, C) -> (prefix reconstructions: list over scales of uint8 (N, H, W, C), the last
  the full reconstruction; token maps: list over scales of int32 (N, pn²)). Fixed batch: one compile."""
  images_uint8 = np.asarray(images_uint8)
  n = len(images_uint8)
  outs, idxs = [], []
  for i in range(0, n, batch_size):
    chunk = images_uint8[i:i + batch_size]
    padded = np.pad(chunk, ((0, batch_size - len(chunk)),) + ((0, 0),) * 3)
    x = jnp.asarray(padded, jnp.float32) / 127.5 - 1.0
    decoded, idx = _prefix_decode(vae, params, x)
    outs.append([png.to_uint8(np.asarray(d)[:len(chunk)]) for d in decoded])
    idxs.append([np.asarray(t)[:len(chunk)] for t in idx])
  per_scale = [np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))]
  indices = [np.concatenate([t[k] for t in idxs]) for k in range(len(idxs[0]))]
  return per_scale, indices


def code_stats(indices: Sequence[np.ndarray], vocab_size: int) -> Dict[str, List[float]]:
  """Per-scale codebook usage (fraction of codes hit) and perplexity of token maps."""
  hits = jnp.stack([jnp.bincount(jnp.asarray(t).reshape(-1), length=vocab_size) for t in indices])
  usage, perplexity = quantizer.usage_and_perplexity(hits)
  return {'usage': [float(u) for u in usage], 'perplexity': [float(p) for p in perplexity]}


def write_grid(out_dir, real_uint8, prefix_uint8: Sequence[np.ndarray], cols: int = GRID_COLS):
  """`reconstructions.png`: a row of real images, then one row of their reconstructions per scale
  prefix (1 scale, 1..2, ..., all K = the tokenizer's reconstruction), `cols` images per row."""
  cols = min(cols, len(real_uint8))
  rows = [real_uint8[:cols]] + [p[:cols] for p in prefix_uint8]
  rows = [np.repeat(r, 3, axis=-1) if r.shape[-1] == 1 else r for r in rows]
  size = real_uint8.shape[1]
  grid = png.grid(np.concatenate(rows), cols=cols, zoom=max(1, 64 // size))
  return png.write_png(epath.Path(out_dir) / PNG_FILE, grid)


def eval_subset(num: int = NUM_EVAL, seed: int = 0, data_dir=None):
  """The fixed `num` train digits (and labels) of the protocol: a seeded choice, in split order."""
  from viar_jax.eval import digits_eval  # pylint: disable=g-import-not-at-top
  images, labels = digits_eval.load_split('train', data_dir)
  pick = np.sort(np.random.default_rng(seed).choice(len(images), num, replace=False))
  return images[pick], labels[pick]


def evaluate(vae: vqvae.VQVAE, params, out_dir=None, images=None, labels=None,
             evaluator=None, num: int = NUM_EVAL, seed: int = 0, data_dir=None) -> Dict:
  """Reconstructs images, measures them, and (with out_dir) writes `reconstruction_metrics.json`
  and `reconstructions.png` there.

  images None: the digits protocol (`eval_subset`, digits-FID and class accuracy with `evaluator`,
  default `digits_eval.get_evaluator()`). Given images (uint8 (N, H, W, C)): usage, perplexity,
  pixel errors and the PNG only (labels unused).
  """
  digits = images is None
  if digits:
    images, labels = eval_subset(num, seed, data_dir)
  images = np.asarray(images)
  if images.shape[-1] != vae.config.in_channels:  # grey data reaches the tokenizer as repeated RGB
    images = np.repeat(images, vae.config.in_channels // images.shape[-1], axis=-1)
  prefix, indices = reconstruct(vae, params, images)
  rec = prefix[-1]
  diff = rec.astype(np.float32) - images.astype(np.float32)
  result = {'num_images': int(len(images)),
            **code_stats(indices, vae.config.vocab_size),
            'pixel_mae_uint8': float(np.mean(np.abs(diff))),
            'pixel_mae_uint8_per_prefix': [
                float(np.mean(np.abs(p.astype(np.float32) - images))) for p in prefix],
            # Largest difference between the colour channels of a reconstruction (0: exactly grey).
            'channel_spread_uint8': int(np.max(np.ptp(rec, axis=-1))) if rec.shape[-1] > 1 else 0}
  if digits:
    from viar_jax.eval import digits_eval  # pylint: disable=g-import-not-at-top
    ev = evaluator or digits_eval.get_evaluator(data_dir=data_dir)
    result.update(
        fid=ev.fid(rec), class_accuracy=ev.class_accuracy(rec, labels),
        real_fid_same_images=ev.fid(images), real_class_accuracy=ev.class_accuracy(images, labels),
        reference_fid=ev.reference_fid(),
        fid_per_prefix=[ev.fid(p) for p in prefix],
        class_accuracy_per_prefix=[ev.class_accuracy(p, labels) for p in prefix])
    result['fid_ratio_to_reference'] = result['fid'] / result['reference_fid']
    result['fid_ratio_to_same_images'] = result['fid'] / result['real_fid_same_images']
  if out_dir is not None:
    out_dir = epath.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result['png'] = str(write_grid(out_dir, images, prefix))
    (out_dir / METRICS_FILE).write_text(json.dumps(result, indent=1))
  return result


def summary(m: Dict) -> str:
  """One console line of the main numbers."""
  usage = ' '.join(f'{u:.2f}' for u in m['usage'])
  line = f'usage per scale {usage}; pixel MAE {m["pixel_mae_uint8"]:.1f}/255'
  if 'fid' in m:
    line = (f'reconstructions: digits-FID {m["fid"]:.2f} (real {m["real_fid_same_images"]:.2f}, '
            f'reference {m["reference_fid"]:.2f}), class accuracy {m["class_accuracy"]:.3f}; '
            + line)
  return line
