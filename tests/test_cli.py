"""Launchers turn the user's errors into one line on stderr and exit status 2 (--verbose: traceback)."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from viar_jax.io import checkpoint
from viar_jax.models import factory, transformer, vqvae

ROOT = pathlib.Path(__file__).resolve().parents[1]
VAE = vqvae.VQVAEConfig(vocab_size=32, z_channels=4, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                        image_size=16, patch_nums=(1, 2, 4))
VAR = transformer.TransformerConfig(depth=2, embed_dim=32, num_heads=1, num_classes=5,
                                    patch_nums=(1, 2, 4), vocab_size=32, z_channels=4)


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
  root = tmp_path_factory.mktemp('cli')
  vae = checkpoint.save(root / 'vae', factory.random_params(VAE), VAE)
  model = checkpoint.save(root / 'var', factory.random_params(VAR), VAR)
  return vae, model, root


def launch(module, *args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', f'launch.{module}', *map(str, args)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)


def assert_one_line_error(done, *fragments):
  assert done.returncode == 2, done.stderr[-2000:]
  lines = [l for l in done.stderr.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1, done.stderr[-2000:]
  assert 'Traceback' not in done.stderr, done.stderr[-2000:]
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


@pytest.mark.slow
def test_user_errors_are_one_line_with_exit_status_2(ckpts, tmp_path):
  vae, model, root = ckpts
  sample = ('sample', '--vae_ckpt', vae, '--model_ckpt', model, '--out', tmp_path)
  assert_one_line_error(launch(*sample, '--classes', '7'), 'class ids [7] outside [0, 5]')
  assert_one_line_error(launch(*sample, '--iters', '1,2,3,4'), 'one count per scale (3)')
  assert_one_line_error(launch(*sample, '--edit', root / 'missing.npy'), 'missing.npy')
  np.save(tmp_path / 'small.npy', np.zeros((8, 8, 3), np.uint8))
  assert_one_line_error(launch(*sample, '--edit', tmp_path / 'small.npy'), 'edit image must be (16, 16, 3)')
  assert_one_line_error(launch('sample', '--vae_ckpt', root / 'nothing', '--model_ckpt', model),
                        'nothing', 'does not exist')
  assert_one_line_error(launch('sample', '--vae_ckpt', model, '--model_ckpt', vae), 'tokenizer')
  assert_one_line_error(launch('sample', '--per_class=many'), 'per_class', '--help')
  assert_one_line_error(launch('sample'), '--vae_ckpt and --model_ckpt are required')
  assert_one_line_error(launch('train', '--config', 'configs/digits.py', '--config.mesh.fsdp=3',
                               '--workdir', tmp_path / 'run'), 'does not cover')
  assert not list(tmp_path.glob('*.png'))  # nothing was sampled


def test_verbose_keeps_the_traceback(ckpts, tmp_path):
  vae, model, _ = ckpts
  done = launch('sample', '--vae_ckpt', vae, '--model_ckpt', model, '--classes', '7', '--verbose',
                '--out', tmp_path)
  assert done.returncode != 0 and 'Traceback' in done.stderr
  assert 'class ids [7] outside [0, 5]' in done.stderr


@pytest.mark.slow
def test_launchers_keep_compiled_programs_in_a_user_cache(ckpts, tmp_path):
  vae, model, _ = ckpts
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_PERSISTENT_CACHE')}
  env.update(JAX_PLATFORMS='cpu', XDG_CACHE_HOME=str(tmp_path / 'cache'))
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  done = subprocess.run(
      [sys.executable, '-m', 'launch.sample', '--vae_ckpt', vae, '--model_ckpt', model,
       '--classes', '1', '--per_class', '1', '--batch', '1', '--top_k', '0', '--top_p', '0',
       '--out', tmp_path / 'out'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert list((tmp_path / 'cache' / 'viar_jax' / 'jit').iterdir())  # the sampler's program
