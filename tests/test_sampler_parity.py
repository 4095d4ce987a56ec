"""Greedy generation parity with the reference (top_k = 1): identical tokens, images within 1e-4."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fixture_sets
from viar_jax.io import convert, reference_config
from viar_jax.models import transformer, vqvae
from viar_jax.sample import sampler


def cases():
  out = []
  for s in fixture_sets.discover():
    if (s / 'var.npz').exists():
      out += [(s, 'var', pre, None) for pre in ('', 'uncond_')]
    if (s / 'viar.npz').exists():
      data = fixture_sets.arrays(s, 'viar')
      names = sorted(k[len('cfg/iters_'):] for k in data if k.startswith('cfg/iters_'))
      out += [(s, 'viar', f'{n}_', n) for n in names]
      out += [(s, 'viar', f'uncond_{n}_', n) for n in names if f'out/gen_uncond_{n}_idx_0' in data]
  return out


CASES = cases()


@pytest.fixture(scope='module')
def tokenizers():
  built = {}
  for s in fixture_sets.discover():
    data = fixture_sets.arrays(s, 'vqvae')
    vae = vqvae.VQVAE(fixture_sets.vqvae_config(s))
    img = jnp.asarray(fixture_sets.nchw_to_nhwc(data['in/img']))
    built[s] = vae, convert.convert_state_dict(fixture_sets.state_dict(s, 'vqvae'),
                                               convert.abstract_params(vae, img))
  return built


@pytest.mark.parametrize('set_dir,name,prefix,schedule', CASES,
                         ids=[f'{s.name}-{m}-{p or "cond_"}' for s, m, p, _ in CASES])
def test_greedy_generation_matches_reference(tokenizers, set_dir, name, prefix, schedule):
  data = fixture_sets.arrays(set_dir, name)
  model = transformer.Transformer(reference_config.transformer_config(fixture_sets.config(set_dir), name))
  labels = jnp.asarray(data['in/label_uncond' if prefix.startswith('uncond') else 'in/label'])
  params = convert.convert_state_dict(
      fixture_sets.state_dict(set_dir, name),
      convert.abstract_params(model, labels, jnp.asarray(data['in/x_BLCv'])))
  iters = tuple(int(n) for n in data[f'cfg/iters_{schedule}']) if schedule else None
  options = sampler.SampleOptions(cfg=float(data['cfg/cfg']), top_k=int(data['cfg/top_k']),
                                  iters=iters, cache_mode='per_iteration')
  vae, vae_params = tokenizers[set_dir]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    sample = sampler.make_sampler(vae, model, options)
  increasing = iters is not None and any(n > max(iters[:s]) for s, n in enumerate(iters) if s)
  assert any('increase' in str(w.message) for w in caught) == increasing
  out = sample(vae_params, params, jax.random.PRNGKey(0), labels)
  for k, idx in enumerate(out.tokens):
    np.testing.assert_array_equal(idx, data[f'out/gen_{prefix}idx_{k}'], err_msg=f'scale {k}')
  np.testing.assert_allclose(np.concatenate(out.guided_logits, 1), data[f'out/gen_{prefix}logits'],
                             atol=1e-4)
  np.testing.assert_allclose(out.f_hat, fixture_sets.nchw_to_nhwc(data[f'out/gen_{prefix}fhat']),
                             atol=1e-4)
  if f'out/gen_{prefix}img' in data:
    np.testing.assert_allclose(out.images, fixture_sets.nchw_to_nhwc(data[f'out/gen_{prefix}img']),
                               atol=1e-4)
