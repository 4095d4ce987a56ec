"""Optimiser: VAR's lr / wd schedules, no-decay groups and one AdamW step vs torch's formulas."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from viar_jax.models import factory, transformer
from viar_jax.train import optim


def reference_lr(kind, peak, step, warmup, total, wp0, wpe):
  """VAR utils/lr_control.py `lr_wd_annealing` (the lr part), transcribed in float64."""
  if step < warmup:
    return peak * (wp0 + (1 - wp0) * step / warmup)
  p = (step - warmup) / (total - 1 - warmup)
  if kind == 'cos':
    return peak * (wpe + (1 - wpe) * (0.5 + 0.5 * math.cos(math.pi * p)))
  if kind == 'lin00':
    return peak * (wpe + (1 - wpe) * (1 - p))
  if kind == 'exp':
    return peak * (1.0 if p < 0.15 else math.exp((p - 0.15) / 0.85 * math.log(wpe)))
  if kind in ('lin', 'lin0'):
    t = {'lin': 0.15, 'lin0': 0.05}[kind]
    return peak * (1.0 if p < t else wpe + (1 - wpe) * (1 - p) / (1 - t))
  t = float(kind[3:])
  mid = (1 + wpe + (1 - wpe) * (1 - t)) / 2
  return peak * (1 + (mid - 1) * p / t if p < t else wpe + (mid - wpe) * (1 - p) / (1 - t))


@pytest.mark.parametrize('kind', ['lin0', 'lin', 'lin00', 'cos', 'exp', 'lin0.3'])
def test_lr_schedule_matches_reference(kind):
  peak, total, warmup, wp0, wpe = 3e-4, 1000, 40, 0.005, 0.1
  sched = optim.lr_schedule(peak, total, warmup, wp0=wp0, wpe=wpe, kind=kind)
  steps = np.arange(total)
  got = np.asarray(sched(jnp.asarray(steps)))
  want = np.array([reference_lr(kind, peak, s, warmup, total, wp0, wpe) for s in steps])
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Key points: warm-up start and end, the peak right after warm-up, wpe·peak at the last step.
  np.testing.assert_allclose(got[[0, warmup - 1, warmup, total - 1]],
                             [wp0 * peak, peak * (wp0 + (1 - wp0) * 39 / 40), peak, wpe * peak],
                             rtol=1e-6)
  # Past the end the lr stays at its final value instead of going negative.
  np.testing.assert_allclose(float(sched(5 * total)), wpe * peak, rtol=1e-6)


def test_lin0_plateau_then_linear():
  peak, total, warmup = 1.0, 201, 0
  sched = optim.lr_schedule(peak, total, warmup, wpe=0.01)
  # p = step / 200: the plateau covers p < 0.05, i.e. steps 0..9.
  np.testing.assert_allclose(np.asarray(sched(jnp.arange(10))), np.ones(10), rtol=1e-6)
  p = 100 / 200
  np.testing.assert_allclose(float(sched(100)), 0.01 + 0.99 * (1 - p) / 0.95, rtol=1e-6)


def test_lr_schedule_edge_cases():
  with pytest.raises(ValueError, match='unknown lr schedule'):
    optim.lr_schedule(1.0, 100, 10, kind='step')
  # Warm-up that covers the whole run: no division by zero, the last step runs at the peak.
  sched = optim.lr_schedule(2.0, 10, 9)
  assert np.isfinite(np.asarray(sched(jnp.arange(12)))).all()
  np.testing.assert_allclose(float(sched(9)), 2.0, rtol=1e-6)
  sched = optim.lr_schedule(2.0, 10, 0)  # no warm-up: the first step already uses the peak
  np.testing.assert_allclose(float(sched(0)), 2.0, rtol=1e-6)
  assert optim.peak_lr_from_tblr(1e-4, 768) == pytest.approx(3e-4)


def test_wd_schedule():
  total = 101
  sched = optim.wd_schedule(0.05, 0.08, total)
  np.testing.assert_allclose(np.asarray(sched(jnp.array([0, 50, 100]))), [0.05, 0.065, 0.08],
                             rtol=1e-6)
  it = 25
  want = 0.08 + (0.05 - 0.08) * (0.5 + 0.5 * math.cos(math.pi * it / (total - 1)))
  np.testing.assert_allclose(float(sched(it)), want, rtol=1e-6)
  constant = optim.wd_schedule(0.05, None, total)
  np.testing.assert_allclose(np.asarray(constant(jnp.array([0, 50, 100]))), [0.05] * 3, rtol=1e-6)


def abstract_transformer(**kwargs):
  cfg = transformer.TransformerConfig(depth=2, embed_dim=64, num_heads=1, num_classes=10,
                                      patch_nums=(1, 2), vocab_size=16, z_channels=4, **kwargs)
  return factory.abstract_params(cfg)


def flat_names(tree):
  return {optim.param_name(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_decay_mask_on_transformer_params():
  mask = flat_names(optim.decay_mask(abstract_transformer()))
  decayed = ['class_emb/embedding', 'word_embed/kernel', 'blocks_0/attn/mat_qkv/kernel',
             'blocks_0/attn/proj/kernel', 'blocks_1/ffn/fc1/kernel', 'blocks_1/ffn/fc2/kernel',
             'blocks_0/ada_lin/kernel', 'head_nm/ada_lin/kernel', 'head/kernel']
  not_decayed = ['pos_1LC', 'pos_start', 'lvl_embed/embedding', 'blocks_0/attn/scale_mul_1H11',
                 'blocks_0/attn/q_bias', 'blocks_0/attn/v_bias', 'blocks_0/attn/proj/bias',
                 'word_embed/bias', 'head/bias', 'blocks_1/ada_lin/bias']
  assert all(mask[n] for n in decayed), {n: mask[n] for n in decayed}
  assert not any(mask[n] for n in not_decayed), {n: mask[n] for n in not_decayed}
  # Shared AdaLN (ada_gss (1, 1, 6, C)) and VIAR's implicit projection.
  mask = flat_names(optim.decay_mask(abstract_transformer(shared_aln=True, implicit=True,
                                                          pre_depth=0, post_depth=1)))
  assert not mask['implicit_block/ada_gss'] and not mask['post_blocks_0/ada_gss']
  assert mask['shared_ada_lin/kernel'] and mask['implicit_proj/fc1/kernel']
  assert mask['implicit_block/attn/mat_qkv/kernel'] and not mask['implicit_proj/fc2/bias']


# --- AdamW steps against torch ---------------------------------------------------------------

HP = dict(peak_lr=0.1, total_steps=4, warmup_steps=1, wp0=0.5, wpe=0.01, schedule='lin0', twd=0.05,
          twde=0.08, betas=(0.9, 0.95), eps=1e-8, clip_norm=2.0)


def toy_tree(rng):
  return {'fc/kernel': rng.standard_normal((3, 4)), 'fc/bias': rng.standard_normal((4,))}


def torch_adamw_numpy(params, grads_per_step):
  """torch.optim.AdamW + clip_grad_norm_ (float64), lr/wd set per step like `lr_wd_annealing`."""
  b1, b2 = HP['betas']
  lr_at = lambda s: reference_lr('lin0', HP['peak_lr'], s, 1, 4, HP['wp0'], HP['wpe'])
  wd_at = lambda s: HP['twde'] + (HP['twd'] - HP['twde']) * (0.5 + 0.5 * math.cos(math.pi * s / 3))
  p = {k: v.copy() for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for step, grads in enumerate(grads_per_step):
    norm = math.sqrt(sum(float(np.sum(g**2)) for g in grads.values()))
    coef = min(1.0, HP['clip_norm'] / (norm + 1e-6))
    t = step + 1
    for k in p:
      g = grads[k] * coef
      wd = wd_at(step) if k.endswith('kernel') else 0.0
      p[k] = p[k] * (1 - lr_at(step) * wd)
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      denom = np.sqrt(v[k]) / math.sqrt(1 - b2**t) + HP['eps']
      p[k] = p[k] - lr_at(step) / (1 - b1**t) * m[k] / denom
  return p, m


def test_one_step_matches_torch_adamw_formula():
  rng = np.random.default_rng(0)
  params, grads = toy_tree(rng), toy_tree(rng)
  grads = {k: 3 * g for k, g in grads.items()}  # global norm ≈ 12 > clip 2
  assert math.sqrt(sum(np.sum(g**2) for g in grads.values())) > 2 * HP['clip_norm']
  opt = optim.make_optimizer(**HP)
  p32 = jax.tree.map(jnp.float32, params)
  updates, state = jax.jit(opt.update)(jax.tree.map(jnp.float32, grads), opt.init(p32), p32)
  want_p, want_m = torch_adamw_numpy(params, [grads])
  new_p = optax.apply_updates(p32, updates)
  for k in params:  # 'fc/kernel' decays, 'fc/bias' does not
    np.testing.assert_allclose(np.asarray(updates[k]), want_p[k] - params[k], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.asarray(new_p[k]), want_p[k], rtol=1e-6)
    # The first moment holds (1 - b1)·clipped grad: clipping really happened before Adam.
    np.testing.assert_allclose(np.asarray(optax.tree.get(state, 'mu')[k]), want_m[k], rtol=1e-6)


def test_three_steps_match_torch():
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(1)
  params = toy_tree(rng)
  # Large, small (no clipping) and large gradients.
  grads_per_step = [{k: s * g for k, g in toy_tree(rng).items()} for s in (3.0, 0.1, 5.0)]
  opt = optim.make_optimizer(**HP)
  p = jax.tree.map(jnp.float32, params)
  state = opt.init(p)
  update = jax.jit(opt.update)
  for grads in grads_per_step:
    updates, state = update(jax.tree.map(jnp.float32, grads), state, p)
    p = optax.apply_updates(p, updates)

  tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
  topt = torch.optim.AdamW([{'params': [tp['fc/kernel']], 'wd_sc': 1.0},
                            {'params': [tp['fc/bias']], 'wd_sc': 0.0}],
                           lr=HP['peak_lr'], betas=HP['betas'], eps=HP['eps'])
  for step, grads in enumerate(grads_per_step):
    for group in topt.param_groups:
      group['lr'] = reference_lr('lin0', HP['peak_lr'], step, 1, 4, HP['wp0'], HP['wpe'])
      wd = HP['twde'] + (HP['twd'] - HP['twde']) * (0.5 + 0.5 * math.cos(math.pi * step / 3))
      group['weight_decay'] = wd * group['wd_sc']
    for k, t in tp.items():
      t.grad = torch.tensor(grads[k])
    torch.nn.utils.clip_grad_norm_(list(tp.values()), HP['clip_norm'])
    topt.step()
  for k in params:
    np.testing.assert_allclose(np.asarray(p[k]), tp[k].detach().numpy(), rtol=1e-5, atol=1e-7)


def test_tokenizer_optimizer_warms_up_then_cosine_decays_without_weight_decay():
  """With constant gradients Adam's normalised step is 1, so each update is -lr(step)."""
  steps = 40  # warm-up max(1, 40 // 20) = 2 steps to 2e-3, cosine to 0.05 · 2e-3 at step 40
  opt = optim.make_tokenizer_optimizer(lr=2e-3, steps=steps)
  params, grads = {'w': jnp.ones((3,))}, {'w': jnp.full((3,), 7.0)}
  state, applied = opt.init(params), []
  for _ in range(steps + 1):
    updates, state = opt.update(grads, state, params)
    applied.append(-float(updates['w'][0]))
  np.testing.assert_allclose(applied[:3], [0.0, 1e-3, 2e-3], rtol=1e-4)
  assert applied[20] == pytest.approx(1e-4 + (2e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * 18 / 38)),
                                      rel=1e-4)
  assert applied[steps] == pytest.approx(1e-4, rel=1e-4)
  disc = optim.make_discriminator_optimizer(lr=2e-4)
  updates, _ = disc.update(grads, disc.init(params), params)
  np.testing.assert_allclose(-updates['w'], 2e-4, rtol=1e-4)
