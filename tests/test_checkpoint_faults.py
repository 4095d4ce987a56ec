"""Fault injection: damaged and mismatched checkpoints fail with one CheckpointError that names the
checkpoint directory and the file or parameter, and says damaged or of another model.

Kinds: tokenizer, VAR and VIAR model checkpoints (checkpoint.save / load, with and without the
manifest of older versions) and the training state (run_io.RunCheckpointer). Faults: truncate, flip
bytes, delete, empty, on one file of each type found on disk. Tiny configs and random params: no
init is compiled.
"""
import json
import pathlib
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from viar_jax import data
from viar_jax.io import checkpoint, integrity, manifest
from viar_jax.models import factory, transformer, vqvae
from viar_jax.sample import pair
from viar_jax.train import optim, run_io, train_step

VAE = vqvae.VQVAEConfig(vocab_size=32, z_channels=4, ch=32, ch_mult=(1, 1), num_res_blocks=1,
                        image_size=8, patch_nums=(1, 2, 4))
VAR = transformer.TransformerConfig(depth=2, embed_dim=32, num_heads=1, num_classes=5,
                                    patch_nums=(1, 2, 4), vocab_size=32, z_channels=4)
VIAR = transformer.TransformerConfig(depth=4, embed_dim=32, num_heads=1, num_classes=5,
                                     patch_nums=(1, 2, 4), vocab_size=32, z_channels=4,
                                     implicit=True, pre_depth=1, post_depth=1)
CONFIGS = {'tokenizer': VAE, 'var': VAR, 'viar': VIAR}
FAULTS = ('truncate', 'flip', 'delete', 'empty')


def damage(path: pathlib.Path, fault: str):
  data = path.read_bytes()
  if fault == 'truncate':
    path.write_bytes(data[:len(data) // 2])
  elif fault == 'flip':  # 8 bytes inverted a third of the way in
    at = len(data) // 3
    path.write_bytes(data[:at] + bytes(b ^ 0xFF for b in data[at:at + 8]) + data[at + 8:])
  elif fault == 'delete':
    path.unlink()
  else:
    path.write_bytes(b'')


def file_types(root: pathlib.Path):
  """{type: one file of it}: hash-named files are one type ('params/d/*'); of several, the largest
  (the one holding array data)."""
  types = {}
  root = pathlib.Path(root)
  for path in sorted(root.rglob('*'), key=lambda p: -p.stat().st_size if p.is_file() else 0):
    if path.is_file():
      kind = re.sub(r'/[0-9a-f]{32}$', '/*', path.relative_to(root).as_posix())
      types.setdefault(kind, path.relative_to(root))
  return types


def copy(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  shutil.rmtree(dst, ignore_errors=True)
  shutil.copytree(src, dst)
  return dst


def strip_manifest(directory: pathlib.Path) -> pathlib.Path:
  """The checkpoint as versions before manifests wrote it."""
  (directory / manifest.MANIFEST).unlink()
  blob = json.loads((directory / 'config.json').read_text())
  del blob['manifest']
  (directory / 'config.json').write_text(json.dumps(blob))
  return directory


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """{kind: (pristine checkpoint dir, its params)}, written once."""
  root = tmp_path_factory.mktemp('pristine')
  out = {}
  for kind, cfg in CONFIGS.items():
    params = factory.random_params(cfg, seed=1)
    out[kind] = (checkpoint.save(root / kind, params, cfg), params)
  return out


def assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_round_trip_writes_and_checks_a_manifest(saved, tmp_path):
  directory, params = saved['viar']
  blob = json.loads((directory / manifest.MANIFEST).read_text())
  assert 'config.json' in blob['files'] and any(n.startswith('params/d/') for n in blob['files'])
  config, loaded = checkpoint.load(directory)
  assert config == VIAR
  assert_same(loaded, params)
  legacy = strip_manifest(copy(directory, tmp_path / 'legacy'))  # older checkpoints still load
  assert_same(checkpoint.load(legacy)[1], params)
  with pytest.raises(FileExistsError):
    checkpoint.save(directory, params, VIAR)


@pytest.mark.parametrize('kind', CONFIGS)
@pytest.mark.parametrize('fault', FAULTS)
def test_every_damaged_file_is_named(saved, tmp_path, kind, fault):
  """With the manifest every fault on every file is found before orbax reads anything."""
  src = saved[kind][0]
  for name in file_types(src).values():
    target = copy(src, tmp_path / 'ckpt')
    damage(target / name, fault)
    with pytest.raises(integrity.CheckpointError) as info:
      checkpoint.load(target)
    message = str(info.value)
    assert f'{target} is damaged' in message and name.as_posix() in message, (name, message)
    assert info.value.reason == integrity.DAMAGED and info.value.where == name.as_posix()


@pytest.mark.parametrize('fault', FAULTS)
def test_damage_without_manifest_is_wrapped(saved, tmp_path, fault):
  """Older checkpoints (no manifest): orbax / tensorstore errors (byte ranges, ZSTD, CRC, JSON,
  'Event loop is closed') become a CheckpointError naming the file or the parameter read."""
  src = strip_manifest(copy(saved['viar'][0], tmp_path / 'legacy_src'))
  types = file_types(src)
  for kind in ('params/_METADATA', 'params/d/*', 'params/manifest.ocdbt', 'config.json',
               'params/ocdbt.process_0/d/*'):
    if kind == 'params/ocdbt.process_0/d/*' and fault == 'flip':
      continue  # raw float bytes carry no checksum in orbax: only the manifest sees this flip
    target = copy(src, tmp_path / 'ckpt')
    damage(target / types[kind], fault)
    with pytest.raises(integrity.CheckpointError) as info:
      checkpoint.load(target)
    message = str(info.value)
    assert f'{target} is damaged' in message, message
    assert types[kind].as_posix() in message or 'parameter ' in message, message
    assert 'tensorstore_spec' not in message and len(message) < 600


def test_damaged_train_state_is_named_or_harmless(tmp_path):
  """A training step: every fault on every file type is reported with the step directory (the
  step's manifest sees what orbax cannot, e.g. a flip inside an array's raw bytes), or does not
  matter and the state restores unchanged."""
  params = factory.random_params(VAR)
  opt = optim.make_optimizer(peak_lr=1e-3, total_steps=10, warmup_steps=1)
  state = train_step.TrainState(step=jnp.int32(3), params=params, opt_state=opt.init(params),
                                rng=jax.random.key_data(jax.random.PRNGKey(0)))
  src = tmp_path / 'run'
  ckpt = run_io.RunCheckpointer(src)
  records = [{'image': np.full((8, 8, 3), i, np.uint8), 'label': i} for i in range(6)]
  make_iterator = lambda: iter(data.make_loader(records, image_size=8, global_batch_size=2, seed=0,
                                                train=True))
  saved_iterator = make_iterator()
  next(saved_iterator)
  ckpt.save(3, state, saved_iterator, {'config': {'seed': 0}})
  ckpt.close()
  expected_batch = next(saved_iterator)
  reported, types = 0, {}
  for kind, name in file_types(src / 'checkpoints' / '3').items():  # one per type across items
    types.setdefault(name.name if name.name in ('commit_success.txt', 'metadata') else kind, name)
  for kind, name in types.items():
    for fault in FAULTS:
      target = copy(src, tmp_path / 'damaged')
      damage(target / 'checkpoints' / '3' / name, fault)
      step_dir = target / 'checkpoints' / '3'
      iterator = make_iterator()
      try:
        restored = run_io.RunCheckpointer(target).restore(3, state, iterator)
      except integrity.CheckpointError as e:
        assert f'training checkpoint {step_dir} is damaged' in str(e), (kind, fault, str(e))
        assert e.where and (e.where.startswith(name.parts[0]) or 'parameter' in e.where), str(e)
        reported += 1
        continue
      assert_same(restored['state'], state)
      np.testing.assert_array_equal(next(iterator)['image'], expected_batch['image'])
  assert reported >= 20  # _METADATA, _sharding, data / meta JSON, the OCDBT manifest and data


def test_train_state_of_another_config_and_non_finite(tmp_path):
  opt = optim.make_optimizer(peak_lr=1e-3, total_steps=10, warmup_steps=1)

  def state_of(cfg, fill=None):
    params = factory.random_params(cfg)
    if fill is not None:
      params['head']['kernel'] = params['head']['kernel'].at[0, 0].set(fill)
    return train_step.TrainState(step=jnp.int32(1), params=params, opt_state=opt.init(params),
                                 rng=jax.random.key_data(jax.random.PRNGKey(0)))

  ckpt = run_io.RunCheckpointer(tmp_path)
  ckpt.save(1, state_of(VAR))
  ckpt.save(2, state_of(VAR, fill=np.inf), force=True)
  ckpt.close()
  wider = state_of(transformer.TransformerConfig(**{**VAR.__dict__, 'embed_dim': 64}))
  with pytest.raises(integrity.CheckpointError, match=(
      "of another model than this run's config: state/ holds a VAR "
      r'\(2 blocks, width 32.*describes a VAR \(2 blocks, width 64')) as info:
    run_io.RunCheckpointer(tmp_path).restore(1, wider)
  assert str(tmp_path / 'checkpoints' / '1') in str(info.value)
  with pytest.raises(integrity.CheckpointError,
                     match=r'parameter params/head/kernel holds non-finite values \(0 NaN, 1 inf'):
    run_io.RunCheckpointer(tmp_path).restore(2, state_of(VAR))
  with pytest.raises(integrity.CheckpointNotFoundError, match='does not exist'):
    run_io.RunCheckpointer(tmp_path).restore(7, state_of(VAR))


@pytest.mark.parametrize('params_of,config_of,expect', [
    ('var', VIAR, [r'params/ holds a VAR \(2 blocks, width 32, 5 classes',
                   r'describes a VIAR \(1 pre \+ implicit \+ 1 post blocks, width 32, 5 classes',
                   r'missing implicit_block/ada_lin/bias \(192,\) float32']),
    ('viar', VIAR.__class__(**{**VIAR.__dict__, 'embed_dim': 48}),
     [r'holds a VIAR \(1 pre \+ implicit \+ 1 post blocks, width 32',
      'describes a VIAR .*width 48',
      r'class_emb/embedding is \(6, 32\) float32, expected \(6, 48\) float32']),
    ('var', VAR.__class__(**{**VAR.__dict__, 'num_classes': 9}),
     ['holds a VAR .*5 classes', 'describes a VAR .*9 classes',
      r'1 parameter\(s\) differ: class_emb/embedding is \(6, 32\) float32, expected \(10, 32\)']),
], ids=['viar_config_var_params', 'other_width', 'other_class_count'])
@pytest.mark.parametrize('manifest', [True, False], ids=['manifest', 'legacy'])
def test_config_of_another_model(saved, tmp_path, params_of, config_of, expect, manifest):
  target = copy(saved[params_of][0], tmp_path / 'ckpt')
  if not manifest:
    strip_manifest(target)
  blob = dict(checkpoint.config_to_json(config_of), **({'manifest': 'manifest.json'} if manifest
                                                       else {}))
  (target / 'config.json').write_text(json.dumps(blob))  # config.json of another checkpoint
  with pytest.raises(integrity.CheckpointError) as info:
    checkpoint.load(target)
  message = str(info.value)
  assert f'checkpoint {target} is of another model than its config.json' in message
  assert info.value.reason == integrity.OTHER_MODEL
  assert ('config.json was changed after the checkpoint was saved' in message) == manifest
  for pattern in expect:
    assert re.search(pattern, message), (pattern, message)
  if params_of == 'var' and config_of.implicit:  # differences listed: 5, then counted
    assert re.search(r'; and \d+ more$', message), message


def test_long_difference_lists_are_cut(saved, tmp_path):
  target = copy(saved['var'][0], tmp_path / 'ckpt')
  (target / 'config.json').write_text(json.dumps(checkpoint.config_to_json(VAE)))
  with pytest.raises(integrity.CheckpointError, match='of another model') as info:
    checkpoint.load(target)
  listed = str(info.value).split('differ: ')[1]
  assert listed.count('missing ') + listed.count('unexpected ') == 5 and 'more' in listed


def test_edited_config_with_the_same_params_is_damaged_until_recorded(saved, tmp_path):
  target = copy(saved['viar'][0], tmp_path / 'ckpt')
  blob = json.loads((target / 'config.json').read_text())
  blob['config']['eval_iters'] = 3
  (target / 'config.json').write_text(json.dumps(blob))
  with pytest.raises(integrity.CheckpointError, match=r'damaged: config.json: contents changed.*'
                     'write_manifest'):
    checkpoint.load(target)
  manifest.write_manifest(target)
  assert checkpoint.load(target)[0].eval_iters == 3


def test_manifest_names_extra_files_and_its_own_damage(saved, tmp_path):
  target = copy(saved['tokenizer'][0], tmp_path / 'ckpt')
  (target / 'params' / 'stray.bin').write_bytes(b'x')
  (target / 'reconstructions.png').write_bytes(b'x')  # beside the checkpoint: not part of it
  with pytest.raises(integrity.CheckpointError,
                     match='damaged: params/stray.bin: unexpected file, not in the manifest'):
    checkpoint.load(target)
  target = copy(saved['tokenizer'][0], tmp_path / 'ckpt2')
  text = (target / manifest.MANIFEST).read_text()
  digest = json.loads(text)['files']['config.json']
  (target / manifest.MANIFEST).write_text(text.replace(digest, '0' * 64))
  with pytest.raises(integrity.CheckpointError,
                     match='damaged: manifest.json: its own checksum does not match'):
    checkpoint.load(target)


@pytest.mark.parametrize('value', [np.nan, np.inf])
def test_non_finite_parameter_is_named(tmp_path, value):
  params = factory.random_params(VAR)
  params['blocks_1']['ffn']['fc2']['kernel'] = params['blocks_1']['ffn']['fc2']['kernel'].at[
      3, 1].set(value)
  directory = checkpoint.save(tmp_path / 'ckpt', params, VAR)
  with pytest.raises(integrity.CheckpointError, match=(
      f'checkpoint {directory} is damaged .*: parameter blocks_1/ffn/fc2/kernel holds non-finite '
      'values')) as info:
    checkpoint.load(directory)
  assert info.value.where == 'params/blocks_1/ffn/fc2/kernel'


def test_missing_checkpoints(tmp_path, saved):
  with pytest.raises(FileNotFoundError, match='not a viar-jax checkpoint'):  # also CheckpointError
    checkpoint.load(tmp_path / 'nothing')
  with pytest.raises(integrity.CheckpointNotFoundError, match='does not exist'):
    checkpoint.load_config(tmp_path / 'nothing')
  target = copy(saved['var'][0], tmp_path / 'ckpt')
  shutil.rmtree(target / 'params')
  with pytest.raises(integrity.CheckpointError, match='damaged: params/: missing'):
    checkpoint.load(target)


def test_sampling_library_path_surfaces_the_error(saved, tmp_path):
  """launch.sample -> generate -> pair.load: the user sees the CheckpointError, not orbax's."""
  model = copy(saved['viar'][0], tmp_path / 'model')
  name = file_types(model)['params/ocdbt.process_0/d/*']
  damage(model / name, 'truncate')
  with pytest.raises(integrity.CheckpointError,
                     match=f'checkpoint {model} is damaged: {name.as_posix()}: contents changed'):
    pair.load(saved['tokenizer'][0], model)


def test_data_state_of_another_process_count_is_named(tmp_path):
  """Each process resumes its own rows of the batch stream: a step saved by 2 processes cannot
  resume on 1 (the state would silently be another process's), and says so."""
  params = factory.random_params(VAR)
  opt = optim.make_optimizer(peak_lr=1e-3, total_steps=10, warmup_steps=1)
  state = train_step.TrainState(step=jnp.int32(1), params=params, opt_state=opt.init(params),
                                rng=jax.random.key_data(jax.random.PRNGKey(0)))
  records = [{'image': np.zeros((8, 8, 3), np.uint8), 'label': 0}] * 4
  make_iterator = lambda: iter(data.make_loader(records, image_size=8, global_batch_size=2, seed=0,
                                                train=True))
  ckpt = run_io.RunCheckpointer(tmp_path)
  ckpt.save(1, state, make_iterator())
  ckpt.close()
  data_dir = tmp_path / 'checkpoints' / '1' / 'data'
  (data_dir / 'process_0-of-1.json').rename(data_dir / 'process_0-of-2.json')
  (data_dir / 'process_1-of-2.json').write_text('{}')
  manifest.write_manifest(data_dir.parent, covers=None)
  with pytest.raises(ValueError, match=r'written by 2 process\(es\); this run has 1'):
    run_io.RunCheckpointer(tmp_path).restore(1, state, make_iterator())
