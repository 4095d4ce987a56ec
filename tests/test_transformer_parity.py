"""VAR / VIAR teacher-forcing parity with the reference PyTorch code, for every fixture set."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import fixture_sets
from viar_jax import profiling
from viar_jax.io import convert

SETS = fixture_sets.discover()
CASES = [(s, m) for s in SETS for m in ('var', 'viar') if (s / f'{m}.npz').exists()]


def load(set_dir, name):
  data = fixture_sets.arrays(set_dir, name)
  model, params = fixture_sets.model(set_dir, name)
  return data, model, params, jnp.asarray(data['in/label']), jnp.asarray(data['in/x_BLCv'])


def loss_logits_grads(model, params, labels, x, targets, **iters):
  def loss(p):
    logits = model.apply({'params': p}, labels, x, **iters)
    return profiling.cross_entropy(logits, targets), logits
  (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return float(value), np.asarray(logits), traverse_util.flatten_dict(grads)


def grad_of(flat_grads, key):
  """Our gradient of a reference parameter key, in the reference layout."""
  path = convert.reference_key_to_path(key)
  if path[-1] == 'weight':
    path = next(p for p in flat_grads if p[:-1] == path[:-1] and p[-1] in ('kernel', 'embedding'))
  return convert.to_reference_layout(path[-1], np.asarray(flat_grads[path]))


def rel_err(got, want):
  return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def check(data, loss, logits, grads, prefix='grad/', logits_key='out/logits', loss_key='out/loss'):
  assert np.max(np.abs(logits - data[logits_key])) <= 1e-4
  assert abs(loss - float(data[loss_key])) <= 1e-5
  keys = [k for k in data if k.startswith(prefix)]
  assert keys
  for k in keys:
    assert rel_err(grad_of(grads, k[len(prefix):]), data[k]) <= 1e-3, k


@pytest.mark.parametrize('set_dir,name', CASES, ids=[f'{s.name}-{m}' for s, m in CASES])
def test_teacher_forcing_logits_loss_and_grads(set_dir, name):
  data, model, params, labels, x = load(set_dir, name)
  iters = {}
  if name == 'viar':
    no_grad, with_grad = fixture_sets.training_iters(set_dir)
    iters = dict(no_grad_iters=no_grad, with_grad_iters=with_grad)
  check(data, *loss_logits_grads(model, params, labels, x, jnp.asarray(data['in/gt_idx']), **iters))


@pytest.mark.parametrize('set_dir', [s for s, m in CASES if m == 'viar'],
                         ids=[s.name for s, m in CASES if m == 'viar'])
def test_viar_jfb_gradient_semantics(set_dir):
  """All K + m iterations differentiated gives the same logits but the fixture's different
  gradients; one iteration in total gives the fixture's logits_iters1 (where the set holds it)."""
  data, model, params, labels, x = load(set_dir, 'viar')
  targets = jnp.asarray(data['in/gt_idx'])
  total = sum(fixture_sets.training_iters(set_dir))
  prefix = fixture_sets.full_unroll_grad_prefix(set_dir)
  listed = fixture_sets.config(set_dir).get('grad_keys', {}).get('viar_full_unroll_contrast')
  if listed is not None:  # the prefix derived from the iteration counts names the listed arrays
    assert sorted(k[len(prefix):] for k in data if k.startswith(prefix)) == sorted(listed)
  loss, logits, grads = loss_logits_grads(model, params, labels, x, targets, no_grad_iters=0,
                                          with_grad_iters=total)
  check(data, loss, logits, grads, prefix=prefix)
  for k in [k for k in data if k.startswith(prefix)]:  # and they really differ from JFB
    assert rel_err(data[k], data['grad/' + k[len(prefix):]]) > 0.1
  if 'out/logits_iters1' in data:
    logits1 = model.apply({'params': params}, labels, x, no_grad_iters=0, with_grad_iters=1)
    assert np.max(np.abs(np.asarray(logits1) - data['out/logits_iters1'])) <= 1e-4
