"""Every launcher is thin: absl flags, no launcher imports another, and its flags parse as documented."""
import ast
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# launcher -> (argv, {flag: expected value}) checked in one subprocess (the launchers share flag
# names on absl's global FlagValues, so each one's flags are removed before the next is imported).
CASES = {
    'bench_jfb_memory': (['--full_scales', '--batch=4'], {'full_scales': True, 'batch': 4}),
    'bench_jfb_time': (['--repeats=5'], {'repeats': 5, 'embed_dim': 256}),
    'bench_loader': (['--workers=0,2', '--batches=3'], {'workers': ['0', '2'], 'batches': 3}),
    'benchmark': (['--quick', '--patch_nums=1,2', '--noisolate'],
                  {'quick': True, 'patch_nums': ['1', '2'], 'isolate': False, 'out': 'out/benchmark'}),
    'compile_report': (['--config=configs/imagenet.py:var_d30', '--topology=v5p-64', '--mode=sample',
                        '--batch=8'], {'topology': 'v5p-64', 'mode': 'sample', 'batch': 8,
                                       'search_batch': False, 'out': 'out/compile_report'}),
    'convert': (['--src=a.pth', '--dst=ckpt/a', '--model=var_d16'], {'model': 'var_d16'}),
    'device_check': (['--tiny', '--sizes=16'], {'tiny': True, 'sizes': ['16']}),
    'evaluate': (['--samples=s.npz', '--metrics=digits,adm', '--iters=10,2'],
                 {'metrics': ['digits', 'adm'], 'iters': ['10', '2'], 'out': 'out/evaluate'}),
    'quality_curve': (['--schedules=1 10,2', '--var_dir='], {'schedules': ['1', '10,2'], 'var_dir': ''}),
    'sample': (['--vae_ckpt=v', '--model_ckpt=m', '--iters=4', '--edit_mode=outpaint'],
               {'iters': ['4'], 'edit_mode': 'outpaint', 'out': 'out/samples', 'top_k': 900}),
    'study': (['--widths=32,64', '--schedules=1 10,2', '--seeds=0'],
              {'widths': ['32', '64'], 'schedules': ['1', '10,2'], 'seeds': ['0'], 'out': 'out/study',
               'steps': 400}),
    'tokenizer_demo': (['--out=x'], {'out': 'x', 'fixture_dir': 'tests/fixtures/reference_small'}),
    'train': (['--config=configs/imagenet.py:viar_d30', '--workdir=w'], {'workdir': 'w'}),
    'train_tokenizer': (['--config=configs/digits.py'], {}),
}

CHECK = '''
import importlib, json, sys
from absl import flags
cases, out = json.loads(sys.argv[1]), {}
for name, (argv, _) in cases.items():
  before = set(flags.FLAGS)
  importlib.import_module(f'launch.{name}')
  flags.FLAGS(['prog', *argv])
  new = set(flags.FLAGS) - before
  values = {k: getattr(flags.FLAGS, k) for k in new if k != 'config'}
  if 'config' in new:
    c = flags.FLAGS.config
    values['config'] = {'implicit': c.model.implicit, 'batch_size': c.optim.batch_size,
                        'workdir': c.workdir}
  out[name] = values
  flags.FLAGS.unparse_flags()
  for k in new:
    delattr(flags.FLAGS, k)
print(json.dumps(out))
'''


def test_no_launcher_imports_another_launcher_or_argparse():
  for path in sorted((ROOT / 'launch').glob('*.py')):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom):
        names = [node.module or '']
      elif isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      else:
        continue
      for name in names:
        assert not name.startswith('launch') and name != 'argparse', f'{path.name} imports {name}'


def test_every_launcher_parses_its_flags():
  assert set(CASES) == {p.stem for p in (ROOT / 'launch').glob('*.py') if p.stem != '__init__'}
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  done = subprocess.run([sys.executable, '-c', CHECK, json.dumps(CASES)], cwd=ROOT, env=env,
                        stdout=subprocess.PIPE, text=True, check=True)
  parsed = json.loads(done.stdout.strip().splitlines()[-1])
  for name, (_, expected) in CASES.items():
    for flag, value in expected.items():
      assert parsed[name][flag] == value, (name, flag)
  assert parsed['train']['config'] == {'implicit': True, 'batch_size': 512, 'workdir': 'out/viar_d30'}
  assert parsed['train_tokenizer']['config']['workdir'] == 'out/digits'
  assert parsed['train']['stop_after'] is None
