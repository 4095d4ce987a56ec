"""launch.compile_report / viar_jax.bench.compile_report: topology names, errors before any compute,
the report of the real train step and sampler on 8 simulated CPU devices, the batch search; with
libtpu (extra tpu-aot) also a compile for a TPU topology."""
import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

from configs import digits
from viar_jax import profiling
from viar_jax.bench import compile_report

pytestmark = pytest.mark.usefixtures('fast_compiles')  # plumbing, not numerics
ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_config():
  c = digits.get_config()
  c.model.embed_dim, c.model.num_heads = 64, 1
  c.optim.batch_size = 16
  c.mesh.fsdp = 2  # data = 4 on 8 devices
  return c


def test_topology_names():
  assert compile_report.resolve_topology('v5p-64') == 'v5p:2x4x4'  # 64 TensorCores = 32 chips
  assert compile_report.resolve_topology('v5e-256') == 'v5e:16x16'  # 256 chips
  assert compile_report.resolve_topology('V5E:2x4') == 'v5e:2x4'
  assert compile_report.resolve_topology('cpu:8') == 'cpu:8'
  for bad in ('v9z:2x2', 'v5e', 'v5e:2', 'tpu', 'v5p-63'):
    with pytest.raises(ValueError, match='unknown topology'):
      compile_report.resolve_topology(bad)


def test_cpu_devices_and_too_many():
  assert len(compile_report.topology_devices('cpu:8')) == 8
  with pytest.raises(ValueError, match='xla_force_host_platform_device_count=64'):
    compile_report.topology_devices('cpu:64')


def test_missing_extra_says_how_to_install(monkeypatch):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'libtpu' else find_spec(name, *a))
  with pytest.raises(ImportError, match=r"pip install -e '\.\[tpu-aot\]'"):
    compile_report.topology_devices('v5e:2x2')


def _no_compile(*args, **kwargs):
  raise AssertionError('compiled despite a bad config')


@pytest.mark.parametrize('change, message', [
    (dict(fsdp=3), 'does not cover the 8 devices'),
    (dict(batch_size=12), 'global batch 12 is not divisible by the mesh size 8'),
])
def test_bad_mesh_or_batch_fails_before_compiling(monkeypatch, change, message):
  monkeypatch.setattr(profiling, 'compile_with_report', _no_compile)
  c = tiny_config()
  c.mesh.fsdp = change.get('fsdp', c.mesh.fsdp)
  c.optim.batch_size = change.get('batch_size', c.optim.batch_size)
  with pytest.raises(ValueError, match=message):
    compile_report.train_report(c, compile_report.topology_devices('cpu:8'), 'cpu:8')


def test_train_report_of_the_real_step_on_8_cpu_devices(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(compile_report, 'hbm_limit', lambda device: (2**20, 'test limit'))
  c = tiny_config()
  c.tokenizer.ckpt = str(tmp_path / 'absent')  # shapes only: a missing checkpoint is fine
  report = compile_report.run(c, 'cpu:8', tmp_path / 'out')
  saved = json.loads((tmp_path / 'out' / 'compile_report.json').read_text())
  assert saved == json.loads(json.dumps(report))
  assert saved['topology'] == 'cpu:8' and saved['num_devices'] == 8 and saved['num_hosts'] == 1
  assert saved['mesh'] == {'data': 4, 'fsdp': 2}
  assert saved['global_batch'] == 16 and saved['per_device_batch'] == 2
  assert 'not found' in saved['tokenizer'] and saved['model']['kind'] == 'VIAR'
  per = saved['per_device']
  assert per['total_bytes'] == (per['argument_bytes'] + per['output_bytes'] + per['temp_bytes']
                                - per['alias_bytes']) > 0
  assert per['alias_bytes'] > 0  # the donated state
  assert saved['hbm_bytes_per_device'] == 2**20 and saved['fits'] is (per['total_bytes'] <= 2**20)
  assert saved['flops_per_step'] == 8 * saved['flops_per_device'] > 0
  assert saved['params'] > 0 and saved['model_flops_per_step'] > 0
  out = capsys.readouterr().out
  assert 'data=4 x fsdp=2' in out and 'compile_report.json' in out and 'per device: total' in out


def test_sample_report_on_one_device():
  c = tiny_config()
  report = compile_report.sample_report(c, compile_report.topology_devices('cpu:8'), 'cpu:8',
                                        batch=4)
  assert report['mode'] == 'sample' and report['num_devices'] == 1 and report['global_batch'] == 4
  assert report['per_device']['total_bytes'] > 0 and report['fits'] is None
  assert report['flops_per_step'] == report['flops_per_device'] > 0
  assert 'one device' in compile_report.table(report)


def test_out_of_memory_messages_and_the_report_of_a_program_that_does_not_fit():
  new = ('RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO '
         'temporaries (32.00G) exceeds available HBM (15.75G).')
  old = 'RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 20.50G of 15.48G hbm.'
  assert compile_report.parse_oom(new) == {'required_bytes': 32 * 2**30,
                                           'hbm_bytes': int(15.75 * 2**30)}
  assert compile_report.parse_oom(old) == {'required_bytes': int(20.5 * 2**30),
                                           'hbm_bytes': int(15.48 * 2**30)}
  assert compile_report.parse_oom('something else') == {'required_bytes': None, 'hbm_bytes': None}
  fields = compile_report._memory(None, new, 15 * 2**30, 'test')  # pylint: disable=protected-access
  assert fields['fits'] is False and fields['per_device'] is None
  assert fields['required_bytes'] == 32 * 2**30 and 'exceeds' in fields['compiler_error']


def test_largest_batch_doubles_then_bisects(monkeypatch):
  probed = []

  def fake(c, devices, topology, breakdown=True):
    assert not breakdown  # a probe that does not fit is not compiled twice
    b = c.optim.batch_size // len(devices)
    probed.append(b)
    return {'fits': b <= 5, 'required_bytes': b, 'hbm_bytes_per_device': 5}

  monkeypatch.setattr(compile_report, 'train_report', fake)
  found = compile_report.largest_batch(tiny_config(), [None] * 8)
  assert found['per_device_batch'] == 5 and found['report']['fits']
  assert probed == [1, 2, 4, 8, 6, 5]
  monkeypatch.setattr(compile_report, 'train_report',
                      lambda c, d, t, breakdown: {'fits': False, 'required_bytes': 9,
                                       'hbm_bytes_per_device': 5})
  assert compile_report.largest_batch(tiny_config(), [None] * 8)['report'] is None


def test_launcher_reports_an_unknown_topology_in_one_line():
  done = subprocess.run([sys.executable, '-m', 'launch.compile_report', '--topology=v9z:2x2'],
                        cwd=ROOT, stderr=subprocess.PIPE, text=True, check=False)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1].startswith('error: unknown topology')


def test_tpu_topology_compile():
  """Needs libtpu (pip install -e '.[tpu-aot]'): the real step compiled for 4 v5e chips."""
  pytest.importorskip('libtpu')
  devices = compile_report.topology_devices('v5e:2x2')
  assert len(devices) == 4 and devices[0].device_kind == 'TPU v5 lite'
  limit, source = compile_report.hbm_limit(devices[0])
  assert 15 * 2**30 < limit <= 16 * 2**30 and 'compiler' in source
  c = tiny_config()
  c.mesh.fsdp = 4
  report = compile_report.train_report(c, devices, 'v5e:2x2')
  assert report['fits'] is True and report['per_device']['total_bytes'] > 0
  assert report['flops_per_device'] > 0 and report['platform'] == 'tpu'
