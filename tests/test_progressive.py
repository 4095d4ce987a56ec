"""Progressive training: the reference's stage schedule, prefix forwards, and the weighted loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from viar_jax.models import factory, transformer, vqvae
from viar_jax.train import progressive, train_step


def reference_prog_si(g_it, *, pg, pg0, wp_it, max_it, num_scales):
  """VAR train.py, verbatim logic (returns -1 for 'as if no progressive training')."""
  if not pg:
    return -1
  if g_it <= wp_it:
    prog_si = pg0
  elif g_it >= max_it * pg:
    prog_si = num_scales - 1
  else:
    delta = num_scales - 1 - pg0
    progress = min(max((g_it - wp_it) / (max_it * pg - wp_it), 0), 1)
    prog_si = pg0 + round(progress * delta)
  return prog_si


def reference_weights(steps, **kw):
  """VAR train_step.py's stateful prog_it / first_prog bookkeeping, run step by step."""
  prog_it, last, first, out = 0, -1, True, []
  for g_it in range(steps):
    si = reference_prog_si(g_it, **{k: kw[k] for k in ('pg', 'pg0', 'wp_it', 'max_it',
                                                        'num_scales')})
    if last != si:
      if last != -1:
        first = False
      last, prog_it = si, 0
    prog_it += 1
    wp = 1 if first else max(min(prog_it / kw['prog_wp_it'], 1), 0.01)
    out.append((si, 1.0 if si == kw['num_scales'] - 1 else wp))
  return out


@pytest.mark.parametrize('pg,pg0,wp,steps,ramp', [(0.5, 4, 20, 400, 30.0), (0.9, 1, 0, 97, 5.0),
                                                  (0.3, 0, 3, 50, 1.0)])
def test_schedule_matches_the_reference_step_by_step(pg, pg0, wp, steps, ramp):
  k = 10 if pg0 == 4 else 4
  sched = progressive.Schedule(fraction=pg, first_stage=pg0, ramp_steps=ramp, warmup_steps=wp,
                               total_steps=steps, num_scales=k)
  ref = reference_weights(steps, pg=pg, pg0=pg0, wp_it=wp, max_it=steps, num_scales=k,
                          prog_wp_it=ramp)
  ours = [(sched.scale_index(s), progressive.newest_scale_weight(sched.stage(s), s))
          for s in range(steps)]
  assert [s for s, _ in ours] == [s for s, _ in ref]
  np.testing.assert_allclose([w for _, w in ours], [w for _, w in ref], rtol=1e-12)
  assert len({sched.stage(s) for s in range(steps)}) == k - pg0  # one compile per stage
  assert sched.stage(steps - 1).num_scales == k


def test_disabled_schedule_is_one_full_stage():
  sched = progressive.Schedule(fraction=0.0, first_stage=0, ramp_steps=3, warmup_steps=2,
                               total_steps=20, num_scales=4)
  assert {sched.stage(s) for s in range(20)} == {progressive.Stage(4, 0, 0.0)}


@pytest.mark.parametrize('kw,match', [(dict(fraction=1.5), 'fraction'),
                                      (dict(first_stage=4), 'first stage'),
                                      (dict(ramp_steps=-1), 'ramp_steps')])
def test_bad_schedules_are_refused(kw, match):
  args = dict(fraction=0.5, first_stage=1, ramp_steps=2, warmup_steps=0, total_steps=10,
              num_scales=4)
  with pytest.raises(ValueError, match=match):
    progressive.Schedule(**{**args, **kw})


VAE = vqvae.VQVAEConfig(vocab_size=32, z_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                        image_size=8, patch_nums=(1, 2, 3, 4))


@pytest.mark.parametrize('implicit', [False, True])
def test_scale_prefix_forward_equals_the_full_forward(implicit):
  cfg = transformer.TransformerConfig(depth=2, embed_dim=32, num_heads=1, num_classes=3,
                                      patch_nums=VAE.patch_nums, vocab_size=32, z_channels=4,
                                      implicit=implicit, pre_depth=0, post_depth=1, eval_iters=3,
                                      aln_gamma_init=0.3)
  model = transformer.Transformer(cfg)
  labels = jnp.array([0, 2], jnp.int32)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, cfg.seq_len - 1, 4))
  params = {'params': factory.random_params(cfg)}
  ends = (1, 5, 14, 30)
  outs = jax.jit(lambda p: [model.apply(p, labels, x[:, :e - 1]) for e in ends])(params)
  for end, prefix in zip(ends, outs):
    assert prefix.shape == (2, end, 32)
    np.testing.assert_allclose(prefix, outs[-1][:, :end], atol=2e-5, rtol=1e-5)
  with pytest.raises(ValueError, match=r'scale prefix .* e in \[1, 5, 14, 30\]'):
    model.apply(params, labels, x[:, :7])


def test_stage_step_trains_the_prefix_with_the_reference_weights():
  vae, vae_params = vqvae.VQVAE(VAE), factory.random_params(VAE)
  cfg = transformer.TransformerConfig(depth=2, embed_dim=32, num_heads=1, num_classes=4,
                                      patch_nums=VAE.patch_nums, vocab_size=32, z_channels=4,
                                      cond_drop_rate=0.0, drop_path_rate=0.0)
  model = transformer.Transformer(cfg)
  images = jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 3), minval=-1, maxval=1)
  labels = jnp.arange(4, dtype=jnp.int32)
  optimizer = optax.sgd(0.0)
  state = train_step.create_train_state(model, optimizer, jax.random.PRNGKey(2),
                                     params=factory.random_params(cfg)).replace(step=jnp.int32(7))
  stage = progressive.Stage(num_scales=3, start_step=6, ramp_steps=8.0)  # 2nd step: weight 0.25

  @jax.jit
  def step_and_reference(state):  # one program, so both see the same tokens
    _, metrics = train_step.train_step(state, images, labels, model=model, vae=vae,
                                    vae_params=vae_params, optimizer=optimizer, stage=stage)
    gt, x = train_step.tokenize(vae, vae_params, images)
    logits = model.apply({'params': state.params}, labels, x[:, :13])  # the 3-scale prefix
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), gt[:, :14, None], -1)[..., 0]
    return metrics, ce  # VAR without drop-path or cond-drop: the same forward

  metrics, ce = step_and_reference(state)
  w = np.full(14, 1 / 30)
  w[5:14] *= 0.25
  np.testing.assert_allclose(metrics['loss'], np.mean(np.sum(ce * w, -1)), rtol=1e-5)
  np.testing.assert_allclose(metrics['ce'], np.mean(ce), rtol=1e-5)
  np.testing.assert_allclose(metrics['ce_last'], np.mean(ce[:, 5:14]), rtol=1e-5)
