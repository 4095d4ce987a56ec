"""Fault injection (issue 14) on training, data and conversion: a NaN / inf metric, SIGKILL
mid-training and mid-save, unwritable output directories, damaged image folders, malicious pickles.
Each test checks what the user is told and that the last good state survives."""
import collections
import io
import json
import logging
import os
import pathlib
import pickle
import subprocess
import sys
import types
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import fault_worker
from configs import digits
from viar_jax import data
from viar_jax.io import checkpoint, convert, released, run_config, writable
from viar_jax.models import factory
from viar_jax.sample import generate, sampler
from viar_jax.train import loop, run_io, tokenizer_loop

pytestmark = pytest.mark.usefixtures('fast_compiles')  # plumbing, not numerics
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def tokenizer_dir(tmp_path_factory):
  """A digits tokenizer with random weights: training plumbing needs its shapes, not its quality."""
  cfg = run_config.vqvae_config(digits.get_config().tokenizer.vqvae)
  return checkpoint.save(tmp_path_factory.mktemp('tok') / 'tokenizer', factory.random_params(cfg),
                         cfg)


def logged_losses(workdir) -> dict:
  """step -> every loss logged for it, in file order (killed and resumed runs log a step again)."""
  out = collections.defaultdict(list)
  for line in (pathlib.Path(workdir) / 'train_metrics.jsonl').read_text().splitlines():
    record = json.loads(line)
    out[record['step']].append(record['loss'])
  return dict(out)


# ---------------------------------------------------------------------------------------------
# NaN / inf: stop with the step and metric, never save that state, resume from the last finite one.


def test_check_finite_names_the_step_and_every_bad_metric():
  run_io.check_finite(3, {'loss': np.float32(1.5), 'grad_norm': np.float32(2.0),
                          'acc': np.float32('nan')})  # only loss / grad_norm / param_norm count
  bad = {'loss': np.float32(1.0), 'grad_norm': np.float32('inf'), 'param_norm': jnp.float32('nan')}
  with pytest.raises(run_io.NonFiniteError,
                     match=r'^grad_norm is inf, param_norm is nan at step 7; stopping without '
                           r'saving this state\. kept$'):
    run_io.check_finite(7, bad, kept=lambda: 'kept')
  assert issubclass(run_io.NonFiniteError, FloatingPointError)  # launchers: exit status 2


class CorruptLabels:
  """A loader whose batches from the `first_bad`-th on (1-based, in this run) carry label 999: the
  class embedding reads NaN for it (out of range), so loss and gradients go NaN in the unchanged
  compiled step."""

  def __init__(self, loader, first_bad: int):
    self.loader, self.first_bad, self.skip_stats = loader, first_bad, loader.skip_stats

  def __iter__(self):
    it, drawn = iter(self.loader), [0]

    class Iterator:
      def __next__(self_):
        batch = next(it)
        drawn[0] += 1
        if drawn[0] >= self.first_bad:
          batch = dict(batch, label=np.full_like(batch['label'], 999))
        return batch

      def __getattr__(self_, name):  # get_state / set_state for the checkpoint
        return getattr(it, name)

    return Iterator()


def run_worker(tokenizer_dir, workdir, mode):
  """tests/fault_worker.py in a subprocess that must end by killing itself."""
  env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1',  # = fast_compiles: the same program
             PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]),
             # Cache the ~100 small programs too (eager ops, orbax): later runs skip compiling them.
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  proc = subprocess.run([sys.executable, str(REPO / 'tests' / 'fault_worker.py'),
                         str(tokenizer_dir), str(workdir), mode], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == -9, f'{mode}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}'
  return proc


@pytest.mark.slow
def test_sigkill_and_nan_keep_the_last_good_checkpoint_and_resume_gives_the_same_losses(
    tokenizer_dir, tmp_path, monkeypatch, capsys):
  """One workdir through four faults (one scenario: each run costs a JAX start and compile):
  SIGKILL mid-training, SIGKILL mid-save, a NaN loss; then a clean rerun. Checkpoints every 2 steps;
  every run logs every step."""
  # 1. Killed at step 3, after the checkpoint of step 2 landed.
  run_worker(tokenizer_dir, tmp_path, 'train:3')
  assert fault_worker.finished_steps(tmp_path) == [2]
  # 2. Resumed from 2, killed while saving step 4: its data is written but orbax has not renamed the
  # temporary directory into place, the last moment a kill can hit.
  proc = run_worker(tokenizer_dir, tmp_path, 'save:4')
  assert 'resumed from step 2' in proc.stdout
  (unfinished,) = (tmp_path / 'checkpoints').glob('4.orbax-checkpoint-tmp*')
  assert (unfinished / 'state').is_dir()
  assert fault_worker.finished_steps(tmp_path) == [2]
  assert run_io.RunCheckpointer(tmp_path).latest_step() == 2  # the unfinished step is not a step

  # 3. Resumed from 2 again; the batch of step 4 is corrupt and makes loss and gradients NaN: the
  # run stops there, and step 4 is neither saved nor logged.
  c = fault_worker.tiny_config(tmp_path, tokenizer_dir)
  make_loader = data.make_loader
  with monkeypatch.context() as m:
    m.setattr(data, 'make_loader', lambda *a, **k: CorruptLabels(make_loader(*a, **k), 2))
    with pytest.raises(run_io.NonFiniteError) as error:
      loop.train(c, tmp_path)
  assert str(error.value) == (
      'loss is nan, grad_norm is nan, param_norm is nan at step 4; stopping without saving this '
      'state. The latest '
      f'checkpoint, step 2 in {tmp_path / "checkpoints"}, is the last finite state; rerunning '
      'resumes from it (lower the learning rate or check the data if it recurs).')
  assert fault_worker.finished_steps(tmp_path) == [2]

  # 4. A clean rerun resumes from step 2 and finishes.
  capsys.readouterr()
  loop.train(c, tmp_path)
  out = capsys.readouterr().out
  assert out.count('resumed from step 2') == 1, out
  assert not unfinished.exists()  # removed on restart
  assert fault_worker.finished_steps(tmp_path)[-2:] == [4, 6]  # (config.ckpt_keep = 2)
  assert (tmp_path / 'model' / 'config.json').exists()
  # Steps run before a kill and again after the resume have identical losses: step 3 four times
  # (runs 1-4), step 4 twice (runs 2 and 4).
  losses = logged_losses(tmp_path)
  assert sorted(losses) == [1, 2, 3, 4, 5, 6] and len(losses[3]) == 4 and len(losses[4]) >= 2
  for step, values in losses.items():
    assert values == [values[0]] * len(values) and np.isfinite(values[0]), (step, values)


# ---------------------------------------------------------------------------------------------
# Unwritable output directories fail before any compute.


@pytest.fixture
def unwritable(tmp_path):
  """A directory path that cannot be created by anyone: its parent is a regular file (ENOTDIR).

  Tests run as root, for whom chmod does not stop writes, and a read-only or full file system
  cannot be mounted here; a parent that is a file fails for every user, as they would.
  """
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  return blocker / 'out'


def test_unwritable_workdir_fails_before_training(unwritable, tmp_path):
  c = fault_worker.tiny_config(unwritable, '')  # would train a tokenizer first
  message = (rf"workdir '{unwritable}' is not writable \(Not a directory: '{unwritable.parent}' "
             r"is a file\); choose another directory, or fix its permissions / free space")
  with pytest.raises(writable.UnwritableDirectoryError, match=message):
    loop.train(c, unwritable)
  with pytest.raises(OSError, match=f"tokenizer output directory '{unwritable}' is not writable"):
    tokenizer_loop.train(c, unwritable)
  # Sampling and conversion check their output first, before reading any checkpoint.
  with pytest.raises(OSError, match=f"sample output directory '{unwritable}' is not writable"):
    generate.generate(tmp_path / 'no_vae', tmp_path / 'no_model', [], 1, 1,
                      sampler.SampleOptions(), 0, unwritable)
  with pytest.raises(OSError, match=f"output directory '{unwritable}' is not writable"):
    released.convert_file(str(tmp_path / 'missing.pth'), str(unwritable), released.NAMES[0])
  # A writable one is created, and the probe file leaves nothing behind.
  assert list(writable.ensure_dir(tmp_path / 'new' / 'dir').iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Image folders with corrupt / empty files and empty class folders.


def write_image(path, size=12, seed=0):
  rng = np.random.default_rng(seed)
  Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def damaged_folder(tmp_path):
  """cat: 3 good images; dog: 1 good image, an empty file, a truncated PNG and JPEG; bird: empty."""
  root = tmp_path / 'imgs'
  for name in ('cat', 'dog', 'bird'):
    (root / name).mkdir(parents=True)
  for k in range(3):
    write_image(root / 'cat' / f'{k}.png', seed=k)
  write_image(root / 'dog' / 'good.png', seed=9)
  (root / 'dog' / 'empty.png').write_bytes(b'')
  write_image(root / 'dog' / 'cut.png', size=64)
  write_image(root / 'dog' / 'cut.jpg', size=64)
  for name in ('cut.png', 'cut.jpg'):  # cut in the middle of the image data
    f = root / 'dog' / name
    f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 2])
  (root / 'bird' / 'notes.txt').write_text('no images here')
  return root


def test_damaged_folder_skips_count_and_report(damaged_folder, caplog):
  caplog.set_level(logging.WARNING)
  src = data.FolderSource(damaged_folder)
  assert src.class_names == ['bird', 'cat', 'dog'] and src.empty_classes == ['bird']
  assert any("1 class folder(s) hold no image files" in r.getMessage() and 'bird' in r.getMessage()
             for r in caplog.records)
  # Three training epochs of 4 good images in batches of 2: never a crash, 3 skips per epoch.
  loader = data.make_loader(src, image_size=8, global_batch_size=2, seed=0, train=True,
                            num_epochs=3)
  batches = list(loader)
  assert len(batches) == 6 and all(b['image'].shape == (2, 8, 8, 3) for b in batches)
  assert sorted(np.concatenate([b['label'] for b in batches]).tolist()) == [1] * 9 + [2] * 3
  assert loader.skip_stats.count == 9
  assert {pathlib.Path(n).name for n in loader.skip_stats.names} == {'empty.png', 'cut.png',
                                                                     'cut.jpg'}
  for name in ('empty.png', 'cut.png', 'cut.jpg'):  # each warned about once, with PIL's reason
    assert len([r for r in caplog.records if 'Skipping unreadable image' in r.getMessage()
                and name in r.getMessage()]) == 1


def test_skip_report_logs_counts_only_once_there_are_skips(capsys):
  stats = data.SkipStats()
  report = data.SkipReport(stats)
  metrics = {'loss': 1.0}
  assert report.add_to(metrics) is metrics  # runs without skips log exactly what they did before
  report.summary()
  assert capsys.readouterr().out == ''
  stats.add(data.Unreadable('/d/dog/cut.png', 'OSError: truncated'))
  stats.add(data.Unreadable('/d/dog/empty.png', 'UnidentifiedImageError'))
  assert report.add_to(metrics) == {'loss': 1.0, 'data_skipped': 2}
  assert report.add_to(metrics) == {'loss': 1.0, 'data_skipped': 2}  # printed once per increase
  report.summary()
  assert capsys.readouterr().out.splitlines() == [
      '[data] skipped 2 unreadable image(s) so far, 2 file(s): /d/dog/cut.png, /d/dog/empty.png',
      '[data] 2 unreadable image(s) skipped in this run (2 file(s)); see the warnings above for '
      'the reasons']


def test_folder_without_readable_images_is_a_clear_error(tmp_path):
  root = tmp_path / 'bad'
  (root / 'a').mkdir(parents=True)
  for k in range(3):
    (root / 'a' / f'{k}.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')
  src = data.FolderSource(root)
  loader = data.make_loader(src, image_size=8, global_batch_size=2, seed=0, train=True)
  # An infinite loader would otherwise spin forever without yielding a batch.
  with pytest.raises(data.NoReadableRecordsError,
                     match=r"FolderSource\(root='.*bad'.*\): no readable image in 6 reads in a "
                           r"row \(at least one whole epoch\); 6 skipped so far, e.g. .*0\.png"):
    next(iter(loader))
  (root / 'empty_class').mkdir()
  for f in (root / 'a').iterdir():
    f.unlink()
  with pytest.raises(ValueError, match=r"no files with extensions .* in its class folders "
                                       r"\['a', 'empty_class'\]"):
    data.FolderSource(root)


# ---------------------------------------------------------------------------------------------
# Malicious pickles given to launch.convert: refused, and their code never runs.


class Payload:
  """Unpickling this writes `marker`: what a malicious checkpoint would do instead."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (exec, (f'open({self.marker!r}, "w").write("code from the pickle ran")',))


def malicious_files(tmp_path, marker):
  """The same payload as a torch zip checkpoint, a bare pickle (.pth) and an .npz object array."""
  state_dict = collections.OrderedDict(x=Payload(marker))
  with zipfile.ZipFile(tmp_path / 'evil_zip.pth', 'w') as z:  # torch.save's layout
    z.writestr('archive/data.pkl', pickle.dumps(state_dict, protocol=2))
    z.writestr('archive/version', '3\n')
  (tmp_path / 'evil_plain.pth').write_bytes(pickle.dumps(state_dict))
  np.savez(tmp_path / 'evil.npz', w=np.array([Payload(marker)], dtype=object))
  return [tmp_path / n for n in ('evil_zip.pth', 'evil_plain.pth', 'evil.npz')]


def test_malicious_pickle_is_refused_without_torch(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` fails, installed or not
  marker = tmp_path / 'marker'
  for src in malicious_files(tmp_path, marker):
    dst = tmp_path / f'out_{src.stem}'
    with pytest.raises(convert.UnsafeCheckpointError,
                       match=rf'^{src}: refusing to load it: .*(builtins\.exec|Object arrays)'):
      released.convert_file(str(src), str(dst), released.NAMES[0])
    assert not marker.exists(), src
    assert not (dst / 'params').exists()


@pytest.mark.slow
def test_convert_cli_refuses_a_malicious_pickle_in_one_line(tmp_path):
  marker = tmp_path / 'marker'
  src = malicious_files(tmp_path, marker)[0]
  proc = subprocess.run([sys.executable, '-m', 'launch.convert', f'--src={src}',
                         f'--dst={tmp_path / "out"}', f'--model={released.NAMES[0]}'], cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      f'error: {src}: refusing to load it: its pickle imports builtins.exec, which a checkpoint of '
      'tensors never needs (nothing from the file was run). Only convert checkpoints from a source '
      'you trust.')
  assert not marker.exists()


def fake_torch(monkeypatch):
  """Just enough of a `torch` module for pickle to write the globals torch.save writes."""
  torch = types.ModuleType('torch')
  utils = types.ModuleType('torch._utils')

  def _rebuild_tensor_v2(*args):
    return args

  _rebuild_tensor_v2.__module__ = 'torch._utils'
  _rebuild_tensor_v2.__qualname__ = '_rebuild_tensor_v2'
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  torch.FloatStorage = type('FloatStorage', (), {'__module__': 'torch'})
  torch._utils = utils
  monkeypatch.setitem(sys.modules, 'torch', torch)
  monkeypatch.setitem(sys.modules, 'torch._utils', utils)
  return torch


def torch_style_pickles(monkeypatch) -> tuple:
  """A state dict pickled as torch.save does it: (zip data.pkl bytes, legacy-format bytes)."""
  torch = fake_torch(monkeypatch)

  class Storage:
    pass

  class Tensor:
    def __init__(self, storage):
      self.storage = storage

    def __reduce__(self):
      return (torch._utils._rebuild_tensor_v2,
              (self.storage, 0, (2, 3), (3, 1), False, collections.OrderedDict()))

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      return ('storage', torch.FloatStorage, '0', 'cpu', 6) if isinstance(obj, Storage) else None

  def dump(obj):
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()

  sd = collections.OrderedDict(w=Tensor(Storage()))
  header = [0x1950a86a20f9469cfc6c, 1001, {'little_endian': True}]  # magic, protocol, sys_info
  legacy = b''.join([pickle.dumps(x, protocol=2) for x in header] +
                    [dump(sd), pickle.dumps(['0'], protocol=2), b'\x06' + bytes(24)])
  return dump(sd), legacy


def test_torch_style_checkpoints_pass_the_scan(tmp_path, monkeypatch):
  zipped, legacy = torch_style_pickles(monkeypatch)
  monkeypatch.setitem(sys.modules, 'torch', None)
  with zipfile.ZipFile(tmp_path / 'ok.pth', 'w') as z:
    z.writestr('archive/data.pkl', zipped)
    z.writestr('archive/data/0', bytes(24))
  (tmp_path / 'legacy.pth').write_bytes(legacy)
  for name in ('ok.pth', 'legacy.pth'):
    convert.check_pickle_globals(str(tmp_path / name))  # no error
    with pytest.raises(ImportError, match='reading .pth checkpoints needs PyTorch'):
      convert.load_reference_state_dict(str(tmp_path / name))


def test_torch_weights_only_refuses_a_malicious_pickle_too(tmp_path, monkeypatch):
  torch = pytest.importorskip('torch')
  marker = tmp_path / 'marker'
  torch.save({'w': torch.ones(2), 'x': Payload(marker)}, tmp_path / 'evil.pth')
  torch.save({'w': torch.ones(2)}, tmp_path / 'ok.pth')
  torch.save({'w': torch.ones(2)}, tmp_path / 'legacy.pth', _use_new_zipfile_serialization=False)
  for name in ('ok.pth', 'legacy.pth'):  # real torch files pass the scan
    np.testing.assert_array_equal(convert.load_reference_state_dict(str(tmp_path / name))['w'],
                                  np.ones(2))
  with pytest.raises(convert.UnsafeCheckpointError, match='imports builtins.exec'):
    convert.load_reference_state_dict(str(tmp_path / 'evil.pth'))
  # Without the scan, torch.load(weights_only=True) is the second wall.
  monkeypatch.setattr(convert, 'check_pickle_globals', lambda path: None)
  with pytest.raises(convert.UnsafeCheckpointError,
                     match=r'refusing to load it: torch.load\(weights_only=True\) failed'):
    convert.load_reference_state_dict(str(tmp_path / 'evil.pth'))
  assert not marker.exists()
