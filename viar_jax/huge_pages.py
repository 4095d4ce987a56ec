"""Launchers run with glibc's malloc on transparent huge pages: a process option, set before start.

    huge_pages.restart_launcher()   # first thing in launch/__init__.py, before JAX is imported

XLA:CPU allocates each executable's temporary buffers with malloc on every call, and glibc hands
the large ones back to the kernel on free, so every call faults its working set in again 4 KiB at
a time: ~220k minor page faults per VAR-d16 sample call (batch 4, CFG, 256² decode) here. With
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` malloc asks for 2 MiB pages (madvise(MADV_HUGEPAGE)):

  | VAR-d16 sample call, fp32, 2 threads (one process each) | default      | hugetlb=1   |
  |---------------------------------------------------------|--------------|-------------|
  | minor page faults per call                              | 222k-234k    | 3.8k-12.6k  |
  | wall time per call                                      | 24.4-27.5 s  | 22.5-22.6 s |

glibc reads its tunables once, at process start, so a launcher (`python -m launch.<name>`)
re-executes itself once with the tunable added, before it imports anything heavy (a second
interpreter start, 0.1-0.2 s here). Nothing happens where there is nothing to gain: transparent
huge pages `always` (every heap page may already be huge) or `never` (none can be), glibc older
than 2.35 (no such tunable) or another libc, a `glibc.malloc.hugetlb` the user already set (theirs
wins), or `VIAR_JAX_MALLOC_DEFAULTS=1`. This module imports nothing but the standard library: it
runs before JAX.
"""
import os
import sys
from typing import Mapping, Optional

TUNABLE = 'glibc.malloc.hugetlb'
KEEP_DEFAULTS_ENV = 'VIAR_JAX_MALLOC_DEFAULTS'
THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'
MIN_GLIBC = (2, 35)  # the first glibc with glibc.malloc.hugetlb


def transparent_huge_page_mode() -> Optional[str]:
  """'always', 'madvise' or 'never' (the bracketed choice in sysfs); None where there is no file."""
  try:
    with open(THP_MODE_FILE, encoding='ascii') as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else None


def libc_version() -> Optional[str]:
  """E.g. 'glibc 2.36'; None for another libc."""
  try:
    return os.confstr('CS_GNU_LIBC_VERSION')
  except (ValueError, OSError):
    return None


def tuned_environ(environ: Mapping[str, str], thp_mode: Optional[str],
                  libc: Optional[str]) -> Optional[dict]:
  """The environment to restart with, or None when the process should go on as it is."""
  if environ.get(KEEP_DEFAULTS_ENV, '0') not in ('', '0') or thp_mode != 'madvise':
    return None
  name, _, version = (libc or '').partition(' ')
  try:
    if name != 'glibc' or tuple(int(v) for v in version.split('.')[:2]) < MIN_GLIBC:
      return None
  except ValueError:
    return None
  tunables = environ.get('GLIBC_TUNABLES', '')
  if TUNABLE in tunables:
    return None  # the user's setting, or we already restarted
  return {**environ, 'GLIBC_TUNABLES': ':'.join(filter(None, [tunables, f'{TUNABLE}=1']))}


def launched_module(orig_argv) -> Optional[str]:
  """'launch.sample' for `python [options] -m launch.sample ...`; None otherwise."""
  args = list(orig_argv)
  if '-m' in args[:-1]:
    module = args[args.index('-m') + 1]
    return module if module.startswith('launch.') else None
  return None


def restart_launcher() -> None:
  """Re-executes a `python -m launch.<name>` process with huge-page malloc (see the module
  docstring); returns, doing nothing, in any other process or when there is nothing to gain."""
  # sys.argv[0] is '-m' only while `python -m` locates the module (importing its package): this
  # is the process's start, not a later `import launch` (e.g. from `python -c ... -m launch.x`).
  if sys.argv[:1] != ['-m'] or launched_module(getattr(sys, 'orig_argv', ())) is None:
    return
  environ = tuned_environ(os.environ, transparent_huge_page_mode(), libc_version())
  if environ is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
