"""Huge-page malloc for launchers: when a launcher restarts itself with the glibc tunable, when it
must not (another process, nothing to gain, the user's own setting), and that a real launcher
process ends up with it."""
import os
import subprocess
import sys

import pytest

from viar_jax import huge_pages

GLIBC = 'glibc 2.36'


def test_the_tunable_is_added_to_the_users_tunables():
  assert huge_pages.tuned_environ({'A': '1'}, 'madvise', GLIBC) == {
      'A': '1', 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
  assert huge_pages.tuned_environ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, 'madvise', GLIBC) == {
      'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'}


@pytest.mark.parametrize('environ, thp_mode, libc', [
    ({}, 'always', GLIBC),  # every page may be huge already
    ({}, 'never', GLIBC),
    ({}, None, GLIBC),  # no sysfs file (not Linux)
    ({}, 'madvise', 'glibc 2.34'),  # no such tunable yet
    ({}, 'madvise', None),  # not glibc
    ({}, 'madvise', 'glibc weird'),
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, 'madvise', GLIBC),  # the user's choice
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}, 'madvise', GLIBC),  # already restarted
    ({huge_pages.KEEP_DEFAULTS_ENV: '1'}, 'madvise', GLIBC),
])
def test_no_restart_where_there_is_nothing_to_gain(environ, thp_mode, libc):
  assert huge_pages.tuned_environ(environ, thp_mode, libc) is None


def test_only_launcher_processes_restart():
  assert huge_pages.launched_module(['python', '-m', 'launch.sample', '--x']) == 'launch.sample'
  assert huge_pages.launched_module(['python', '-X', 'dev', '-m', 'launch.train']) == 'launch.train'
  assert huge_pages.launched_module(['python', '-m', 'pytest', 'tests']) is None
  assert huge_pages.launched_module(['python', '-c', 'import launch']) is None
  assert huge_pages.launched_module(['python', '-m']) is None


def test_this_host_is_described():
  assert huge_pages.transparent_huge_page_mode() in ('always', 'madvise', 'never', None)
  libc = huge_pages.libc_version()
  assert libc is None or libc.startswith('glibc ')


# A real launcher process (--helpshort: absl prints its flags and exits) with a probe that prints, at
# exit, the GLIBC_TUNABLES it ended with (sitecustomize.py runs in the restarted process too).
PROBE = 'import atexit, os; atexit.register(lambda: print("TUNABLES=" + os.environ.get("GLIBC_TUNABLES", "")))'


def launcher_tunables(probe_dir, **env) -> str:
  clean = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', huge_pages.KEEP_DEFAULTS_ENV)}
  (probe_dir / 'sitecustomize.py').write_text(PROBE)
  path = os.pathsep.join([str(probe_dir), os.getcwd(), clean.get('PYTHONPATH', '')])
  done = subprocess.run([sys.executable, '-m', 'launch.convert', '--helpshort'],
                        env=dict(clean, PYTHONPATH=path, **env), capture_output=True, text=True, timeout=120)
  return done.stdout.rpartition('TUNABLES=')[2].strip()


@pytest.mark.skipif(huge_pages.tuned_environ({}, huge_pages.transparent_huge_page_mode(),
                                             huge_pages.libc_version()) is None,
                    reason='this host gains nothing from huge-page malloc')
def test_a_launcher_restarts_with_the_tunable(tmp_path):
  assert launcher_tunables(tmp_path) == 'glibc.malloc.hugetlb=1'
  assert launcher_tunables(tmp_path, **{huge_pages.KEEP_DEFAULTS_ENV: '1'}) == ''
  assert launcher_tunables(tmp_path, GLIBC_TUNABLES='glibc.malloc.arena_max=4') == \
      'glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1'
