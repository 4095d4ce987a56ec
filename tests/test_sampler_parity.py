"""Greedy generation parity with the reference (top_k = 1): identical tokens, images within 1e-4."""
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fixture_sets
from viar_jax.sample import sampler


def cases():
  """(set, model, key prefix, VIAR schedule name) for every generation the sets hold."""
  out = []
  for s in fixture_sets.discover():
    if (s / 'var.npz').exists():
      data = fixture_sets.arrays(s, 'var')
      out += [(s, 'var', pre, None) for pre in ('', 'uncond_') if f'out/gen_{pre}idx_0' in data]
    if (s / 'viar.npz').exists():
      data = fixture_sets.arrays(s, 'viar')
      for n in fixture_sets.generation_schedules(s):
        out += [(s, 'viar', pre, n) for pre in (f'{n}_', f'uncond_{n}_')
                if f'out/gen_{pre}idx_0' in data]
  return out


CASES = cases()


def compare_generation(out, data, prefix: str):
  """Asserts `out` matches the reference's `out/gen_<prefix>*` arrays; -> the names compared.

  Tokens and f̂ are required; the guided logits and the decoded images are compared where the set
  holds them (a set may leave them out to stay small).
  """
  k = 0
  while f'out/gen_{prefix}idx_{k}' in data:
    np.testing.assert_array_equal(out.tokens[k], data[f'out/gen_{prefix}idx_{k}'], err_msg=f'scale {k}')
    k += 1
  assert k == len(out.tokens), f'{k} reference token maps for {len(out.tokens)} scales'
  np.testing.assert_allclose(out.f_hat, fixture_sets.nchw_to_nhwc(data[f'out/gen_{prefix}fhat']),
                             atol=1e-4)
  compared = ['tokens', 'f_hat']
  if f'out/gen_{prefix}logits' in data:
    np.testing.assert_allclose(np.concatenate(out.guided_logits, 1), data[f'out/gen_{prefix}logits'],
                               atol=1e-4)
    compared.append('logits')
  if f'out/gen_{prefix}img' in data:
    np.testing.assert_allclose(out.images, fixture_sets.nchw_to_nhwc(data[f'out/gen_{prefix}img']),
                               atol=1e-4)
    compared.append('images')
  return compared


@pytest.fixture(scope='module')
def tokenizers():
  return {s: fixture_sets.tokenizer(s) for s in fixture_sets.discover()}


@pytest.mark.parametrize('set_dir,name,prefix,schedule', CASES,
                         ids=[f'{s.name}-{m}-{p or "cond_"}' for s, m, p, _ in CASES])
def test_greedy_generation_matches_reference(tokenizers, set_dir, name, prefix, schedule):
  data = fixture_sets.arrays(set_dir, name)
  model, params = fixture_sets.model(set_dir, name)
  labels = jnp.asarray(data['in/label_uncond' if prefix.startswith('uncond') else 'in/label'])
  iters = tuple(int(n) for n in data[f'cfg/iters_{schedule}']) if schedule else None
  options = sampler.SampleOptions(cfg=float(fixture_sets.generation_setting(set_dir, data, 'cfg')),
                                  top_k=int(fixture_sets.generation_setting(set_dir, data, 'top_k')),
                                  iters=iters, cache_mode='per_iteration')
  vae, vae_params = tokenizers[set_dir]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    sample = sampler.make_sampler(vae, model, options)
  increasing = iters is not None and any(n > max(iters[:s]) for s, n in enumerate(iters) if s)
  assert any('increase' in str(w.message) for w in caught) == increasing
  out = sample(vae_params, params, jax.random.PRNGKey(0), labels)
  compare_generation(out, data, prefix)


@pytest.mark.parametrize('set_dir,name,prefix,schedule', CASES[:1], ids=['first-case'])
def test_a_set_without_optional_arrays_still_checks_tokens_and_fhat(set_dir, name, prefix, schedule):
  """The reference's own arrays stand in for the sampler output: no model is run."""
  del schedule
  data = fixture_sets.arrays(set_dir, name)
  k_max = sum(1 for k in data if k.startswith(f'out/gen_{prefix}idx_'))
  ref = types.SimpleNamespace(
      tokens=[data[f'out/gen_{prefix}idx_{k}'] for k in range(k_max)],
      f_hat=fixture_sets.nchw_to_nhwc(data[f'out/gen_{prefix}fhat']),
      guided_logits=[data.get(f'out/gen_{prefix}logits')],
      images=(fixture_sets.nchw_to_nhwc(data[f'out/gen_{prefix}img'])
              if f'out/gen_{prefix}img' in data else None))
  optional = (f'out/gen_{prefix}logits', f'out/gen_{prefix}img')
  slim = {k: v for k, v in data.items() if k not in optional}
  assert compare_generation(ref, slim, prefix) == ['tokens', 'f_hat']
  bad = types.SimpleNamespace(**{**vars(ref), 'tokens': [t.copy() for t in ref.tokens]})
  bad.tokens[-1].flat[0] += 1
  with pytest.raises(AssertionError, match='scale'):
    compare_generation(bad, slim, prefix)
  bad = types.SimpleNamespace(**{**vars(ref), 'f_hat': ref.f_hat + 1e-3})
  with pytest.raises(AssertionError):
    compare_generation(bad, slim, prefix)
