"""Training runs (viar_jax.train.loop, launch.train) end to end on a tiny digits config: resume equals
a straight run; config errors; every shipped config preset builds."""
import dataclasses
import json

import jax
import numpy as np
import pytest

import tb_events
from configs import digits, imagenet
from viar_jax import runtime
from viar_jax.io import checkpoint, released, run_config
from viar_jax.models import factory
from viar_jax.train import loop, run_io, tokenizer_loop

pytestmark = pytest.mark.usefixtures('fast_compiles')  # plumbing, not numerics


def tiny_config(workdir, tokenizer_ckpt=''):
  c = digits.get_config()
  c.workdir = str(workdir)
  c.tokenizer.ckpt = str(tokenizer_ckpt)
  c.tokenizer.steps = 4
  c.tokenizer.batch_size = 16
  c.model.embed_dim, c.model.num_heads = 64, 1
  c.optim.batch_size = 16
  c.optim.steps = 6
  c.mesh.data = 8  # all 8 simulated devices: the batch is sharded 2 per device
  c.log_every = 1
  c.ckpt_every = 100
  c.sample_every = 0
  return c


@pytest.fixture(scope='module')
def tokenizer_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp('tok') / 'tokenizer'
  tokenizer_loop.train(tiny_config(out.parent), out)
  assert (out / 'reconstructions.png').exists()
  return out


def losses(workdir):
  lines = (workdir / 'train_metrics.jsonl').read_text().splitlines()
  return [(r['step'], r['loss']) for r in map(json.loads, lines)]


def progressive_config(workdir, tokenizer_ckpt):
  """Progressive: 2 scales at steps 0-1, 3 at step 2 (newest weight ramping to 0.5), all from 3."""
  c = tiny_config(workdir, tokenizer_ckpt)
  c.optim.update(pg=0.5, pg0=1, warmup_steps=1, pg_ramp_steps=2.0)
  return c


@pytest.mark.slow
def test_resume_equals_straight_run(tokenizer_dir, tmp_path):
  """Progressive training on, so resuming must also land in the right stage and ramp."""
  straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
  state_a, _ = loop.train(progressive_config(straight, tokenizer_dir), straight)
  loop.train(progressive_config(resumed, tokenizer_dir), resumed, stop=runtime.Stop(after=3))
  assert run_io.RunCheckpointer(resumed).latest_step() == 3
  assert not (resumed / 'model').exists()  # exported only once training is complete
  state_b, _ = loop.train(progressive_config(resumed, tokenizer_dir), resumed)
  np.testing.assert_allclose([l for _, l in losses(resumed)], [l for _, l in losses(straight)],
                             rtol=1e-6)
  assert [s for s, _ in losses(resumed)] == [1, 2, 3, 4, 5, 6]
  records = [json.loads(l) for l in (straight / 'train_metrics.jsonl').read_text().splitlines()]
  assert [r['prog_scales'] for r in records] == [2, 2, 3, 4, 4, 4]
  assert [r['prog_weight'] for r in records] == [1, 1, 0.5, 1, 1, 1]
  # VIAR's K and m of the logged step, and the model FLOP rate from 2 logged steps on.
  assert all(0 <= r['no_grad_iters'] and 1 <= r['with_grad_iters'] for r in records)
  assert 'model_tflops_per_s' not in records[0] and records[-1]['model_tflops_per_s'] > 0
  assert 'mfu' not in records[-1]  # no known peak for the CPU
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               jax.device_get(state_a.params), jax.device_get(state_b.params))
  assert int(state_b.step) == 6
  tb = tb_events.read_scalars(straight / 'tensorboard' / 'train')
  assert [v for s, t, v in tb if t == 'loss'] == pytest.approx([l for _, l in losses(straight)])
  config, exported = checkpoint.load(resumed / 'model')  # what launch.sample / evaluate read
  assert config.embed_dim == 64 and config.implicit
  jax.tree.map(np.testing.assert_array_equal, exported, jax.device_get(state_b.params))


@pytest.mark.parametrize('change,error,match', [
    (lambda c: c.mesh.update(data=3), ValueError, 'does not cover the 8 devices'),
    (lambda c: c.optim.update(batch_size=12), ValueError, 'not divisible by the mesh size'),
    (lambda c: c.tokenizer.update(ckpt='/nonexistent/tok'), FileNotFoundError, 'tokenizer checkpoint'),
    (lambda c: c.data.update(name='no_such_dataset'), (ValueError, FileNotFoundError), 'no_such_dataset'),
    (lambda c: c.optim.update(pg=0.5, pg0=4), ValueError, r'first stage \(pg0\) must lie in \[0, 3\]'),
    (lambda c: c.model.update(num_heads=3), ValueError, 'not divisible by num_heads'),
    (lambda c: c.model.update(dtype='float16'), ValueError, 'needs loss scaling'),
    (lambda c: c.optim.update(mu_dtype='int8'), ValueError, 'mu_dtype'),
    (lambda c: c.update(sample_every=2) or c.sample.update(classes=(3, 10)), ValueError,
     r'config.sample.classes must be class ids in 0..9'),
])
def test_bad_run_configs_fail_before_compute(tmp_path, change, error, match):
  c = tiny_config(tmp_path)
  change(c)
  with pytest.raises(error, match=match):
    loop.train(c, tmp_path)
  assert not (tmp_path / 'tokenizer').exists()  # nothing was trained


def test_model_patch_nums_must_match_the_tokenizer():
  c = digits.get_config()
  c.model.patch_nums = (1, 2, 4)
  with pytest.raises(ValueError, match=r'tokenizer patch_nums \(1, 2, 3, 4\) != transformer'):
    run_config.transformer_config(c.model, run_config.vqvae_config(c.tokenizer.vqvae))
  c = digits.get_config()
  c.model.vocab_size = 32
  with pytest.raises(ValueError, match='vocab_size: tokenizer 64 vs transformer 32'):
    run_config.transformer_config(c.model, run_config.vqvae_config(c.tokenizer.vqvae))
  c = digits.get_config()
  c.model.unknown_knob = 1
  with pytest.raises(ValueError, match=r"config.model has fields \['unknown_knob'\]"):
    run_config.transformer_config(c.model, run_config.vqvae_config(c.tokenizer.vqvae))


@pytest.mark.parametrize('config_arg', ['digits', *[f'imagenet:{p}' for p in released.RECIPES]])
def test_every_shipped_config_builds(config_arg):
  file, _, preset = config_arg.partition(':')
  module = {'digits': digits, 'imagenet': imagenet}[file]
  c = module.get_config(preset) if preset else module.get_config()
  assert module.__doc__ and f'python -m launch.train --config configs/{file}.py' in module.__doc__
  cfg = run_config.transformer_config(c.model, run_config.vqvae_config(c.tokenizer.vqvae))
  params = factory.abstract_params(cfg)
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  expected = {'var_d16': 310_283_520, 'var_d30': 2_010_020_356, 'viar_d30': 770_884_426}
  if preset in expected:
    assert count == expected[preset]
  if preset in released.FILES:  # the recipe trains the released architecture
    assert cfg == dataclasses.replace(released.config(preset), dtype='bfloat16')
  assert c.optim.batch_size % 8 == 0


def test_imagenet_config_needs_a_preset():
  with pytest.raises(ValueError, match='configs/imagenet.py:var_d16'):
    imagenet.get_config()
  with pytest.raises(ValueError, match='var_d36'):  # released, but no 256px recipe
    imagenet.get_config('var_d36')


def test_non_finite_loss_stops_the_run():
  run_io.check_finite(3, {'loss': np.float32(1.5)})
  with pytest.raises(FloatingPointError, match='loss is nan at step 7'):
    run_io.check_finite(7, {'loss': np.float32('nan')})
