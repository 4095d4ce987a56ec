"""Sampling at scale: a mesh of devices, several processes, streamed shards, resume, ADM files."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from viar_jax.io import checkpoint, npz
from viar_jax.models import factory, transformer, vqvae
from viar_jax.sample import generate, sampler
from viar_jax.train import sharding

pytestmark = pytest.mark.usefixtures('fast_compiles')  # plumbing, not numerics

ROOT = pathlib.Path(__file__).resolve().parents[1]
VAE = vqvae.VQVAEConfig(vocab_size=16, z_channels=4, ch=32, ch_mult=(1, 1), num_res_blocks=1,
                        image_size=8, patch_nums=(1, 4), using_sa=False, using_mid_sa=False)
VIAR = transformer.TransformerConfig(depth=2, embed_dim=32, num_heads=1, num_classes=10,
                                     patch_nums=(1, 4), vocab_size=16, z_channels=4, implicit=True,
                                     pre_depth=1, post_depth=0, eval_iters=2)
OPTIONS = sampler.SampleOptions(top_k=4, iters=(2, 1))


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
  root = tmp_path_factory.mktemp('ckpt')
  return (checkpoint.save(root / 'vae', factory.random_params(VAE), VAE),
          checkpoint.save(root / 'viar', factory.random_params(VIAR), VIAR))


@pytest.fixture(scope='module')
def one_device_run(ckpts, tmp_path_factory):
  """3 classes x 5 images on one device, 2 a call: the reference every other layout must match."""
  out = tmp_path_factory.mktemp('one_device')
  generate.generate(*ckpts, ['1', '4', '7'], 5, 2, OPTIONS, 3, out, devices=jax.devices()[:1])
  with np.load(out / 'samples.npz') as z:
    return out, z['arr_0'], z['arr_1']


def test_mesh_sampler_splits_the_batch_and_refuses_what_does_not_split(ckpts):
  vae_cfg, vae_params = checkpoint.load(ckpts[0])
  cfg, params = checkpoint.load(ckpts[1])
  vae, model = vqvae.VQVAE(vae_cfg), transformer.Transformer(cfg)
  keys, labels = sampler.image_keys(0, np.arange(8)), np.arange(8, dtype=np.int32) % 10
  alone = sampler.make_sampler(vae, model, OPTIONS)(vae_params, params, keys, labels)
  mesh = sharding.make_mesh(2, 2, devices=jax.devices()[:4])
  split = sampler.make_sampler(vae, model, OPTIONS, mesh=mesh)(vae_params, params, keys, labels)
  assert len(split.images.sharding.device_set) == 4
  rows, images = sampler.process_rows(split.images)
  np.testing.assert_array_equal(rows, np.arange(8))  # one process holds every row, each once
  np.testing.assert_allclose(images, alone.images, atol=1e-5)  # other per-device conv batches
  for split_tokens, tokens in zip(split.tokens, alone.tokens):
    np.testing.assert_array_equal(sampler.process_rows(split_tokens)[1], tokens)
  _, iterations = sampler.process_rows(split.iterations, axis=1)
  np.testing.assert_array_equal(iterations, [[2] * 8, [1] * 8])
  shardings = sharding.named_shardings(sharding.param_specs(params, mesh, min_fsdp_size=1), mesh)
  fsdp_params = jax.tree.map(sampler.on_mesh, params, shardings)
  assert any(len(x.sharding.spec) for x in jax.tree.leaves(fsdp_params))  # some split over 'fsdp'
  gathered = sampler.make_sampler(vae, model, OPTIONS, mesh=mesh)(vae_params, fsdp_params, keys, labels)
  np.testing.assert_array_equal(sampler.process_rows(gathered.images)[1], images)
  with pytest.raises(ValueError, match='6 images does not split over the 4 devices'):
    sampler.make_sampler(vae, model, OPTIONS, mesh=mesh)(vae_params, params, keys[:6], labels[:6])


def test_images_do_not_depend_on_devices_batch_or_resuming(ckpts, one_device_run, tmp_path):
  reference_dir, reference, labels = one_device_run
  np.testing.assert_array_equal(labels, np.repeat([1, 4, 7], 5))
  # 8 devices x 1 image a call: 2 calls, the second padded (8 + 7)
  first = generate.generate(*ckpts, ['1', '4', '7'], 5, 1, OPTIONS, 3, tmp_path)
  with np.load(first['npz']) as z:
    np.testing.assert_array_equal(z['arr_0'], reference)
  assert first['stats']['mean_iterations_per_scale'] == [2.0, 1.0]
  shards = sorted((tmp_path / 'shards').glob('*.npz'))
  assert [p.name for p in shards] == ['00000000-8-p0.npz', '00000008-7-p0.npz']

  # A run killed after its first call: the second shard never appeared, a partial file did.
  shards[1].rename(shards[1].with_name(shards[1].name + '.partial'))
  (tmp_path / 'samples.npz').unlink()
  kept = shards[0].stat().st_mtime_ns
  resumed = generate.generate(*ckpts, ['1', '4', '7'], 5, 1, OPTIONS, 3, tmp_path)
  assert resumed['stats']['sampled_now'] == 7 and shards[0].stat().st_mtime_ns == kept
  with np.load(resumed['npz']) as z:
    np.testing.assert_array_equal(z['arr_0'], reference)
  assert (tmp_path / 'grid.png').exists() and len(list((tmp_path / 'images').glob('*.png'))) == 15

  # The transformer's params split over groups of 4 devices: the same images.
  split = generate.generate(*ckpts, ['1', '4', '7'], 5, 1, OPTIONS, 3, tmp_path / 'fsdp', fsdp=4)
  with np.load(split['npz']) as z:
    np.testing.assert_array_equal(z['arr_0'], reference)
  with pytest.raises(ValueError, match='fsdp=3 must divide the 8 devices'):
    generate.generate(*ckpts, ['1'], 1, 1, OPTIONS, 3, tmp_path / 'fsdp3', fsdp=3)

  spec = (tmp_path / 'run.json').read_text()
  for changed, match in (((['1', '4', '7'], 5, 1, OPTIONS, 4), 'seed: 3 there, 4 now'),
                         ((['1', '4'], 5, 1, OPTIONS, 3), 'classes: '),
                         ((['1', '4', '7'], 5, 1, sampler.SampleOptions(), 3), 'options: ')):
    with pytest.raises(ValueError, match=match):
      generate.generate(*ckpts, *changed, tmp_path)
  assert (tmp_path / 'run.json').read_text() == spec  # nothing rewritten by a refused run
  with pytest.raises(ValueError, match='holds samples without run.json'):
    (reference_dir / 'run.json').rename(reference_dir / 'moved.json')
    generate.generate(*ckpts, ['1', '4', '7'], 5, 2, OPTIONS, 3, reference_dir)


def test_streamed_npz_reads_back_and_maps_without_loading(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
  npz.write_streamed(tmp_path / 'a.npz', [images[:3], images[3:9], images[9:]], images.shape,
                     np.arange(10))
  with np.load(tmp_path / 'a.npz') as z:  # what the ADM evaluator does
    np.testing.assert_array_equal(z['arr_0'], images)
    np.testing.assert_array_equal(z['arr_1'], np.arange(10))
  mapped = npz.images(tmp_path / 'a.npz')
  assert isinstance(mapped, np.memmap)
  np.testing.assert_array_equal(mapped, images)
  np.savez(tmp_path / 'b.npz', arr_1=np.arange(10), arr_0=images)  # np.savez's own files too
  np.testing.assert_array_equal(npz.images(tmp_path / 'b.npz'), images)
  with pytest.raises(ValueError, match='3 images written to a file declared to hold 10'):
    npz.write_streamed(tmp_path / 'c.npz', [images[:3]], images.shape, np.arange(10))
  assert not (tmp_path / 'c.npz').exists()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_write_their_rows_and_match_one_device(ckpts, one_device_run, tmp_path):
  """`launch.sample` on 2 localhost processes x 2 CPU devices: same images as one device."""
  _, reference, _ = one_device_run
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_') or
         k == 'JAX_COMPILATION_CACHE_DIR'}
  env.update(XLA_FLAGS='--xla_force_host_platform_device_count=2', JAX_PLATFORMS='cpu',
             JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{_free_port()}', JAX_NUM_PROCESSES='2')
  flags = [f'--vae_ckpt={ckpts[0]}', f'--model_ckpt={ckpts[1]}', '--classes=1,4,7',
           '--per_class=5', '--batch=2', '--top_k=4', '--top_p=0', '--iters=2,1', '--seed=3',
           f'--out={tmp_path}']
  procs = [subprocess.Popen([sys.executable, '-m', 'launch.sample', *flags], cwd=ROOT,
                            env=dict(env, JAX_PROCESS_ID=str(i)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], '\n'.join(log[-3000:] for log in logs)
  with np.load(tmp_path / 'samples.npz') as z:
    np.testing.assert_array_equal(z['arr_0'], reference)
  names = sorted(p.name for p in (tmp_path / 'shards').glob('*.npz'))
  # 4 devices x 2 a call: process 0 holds rows 0-3 of each call, process 1 rows 4-7 (trimmed at 15)
  assert names == ['00000000-4-p0.npz', '00000004-4-p1.npz', '00000008-4-p0.npz',
                   '00000012-3-p1.npz']
  assert json.loads((tmp_path / 'stats.json').read_text())['images'] == 15


def _free_port() -> int:
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]
