"""How every launcher runs: absl flags, and errors the user can act on as one line with exit status 2.

    if __name__ == '__main__':
      cli.run(main)

Expected errors are the user's to fix: bad flags, missing or unwritable files, bad configs, damaged
or mismatched checkpoints, a diverged run. They print as `error: <what went wrong>` on stderr and
exit with status 2 (absl's usage errors included); `--verbose` shows the traceback instead.
Anything else is a bug and keeps its traceback.

Compiled programs are cached across runs (JAX's persistent compilation cache) in
`$JAX_COMPILATION_CACHE_DIR`, else `$XDG_CACHE_HOME/viar_jax/jit` (default ~/.cache/viar_jax/jit):
a second run of the same launcher with the same shapes skips most of its compile time. XLA flags
measured to be faster on this platform are set before JAX starts (viar_jax/xla_options.py); before
that, a launcher process restarted itself with huge-page malloc (launch/__init__.py).
"""
import os
import pathlib
import sys
from typing import Callable, NoReturn, Sequence

from absl import app, flags
from absl import logging as absl_logging

from viar_jax import xla_options

# ValueError covers bad values and configs (checkpoint errors derive from it), OSError missing,
# unreadable and unwritable files, FloatingPointError a run that stopped on a NaN / inf, ImportError
# an optional extra that is not installed (its message says which).
EXPECTED_ERRORS = (ValueError, OSError, FloatingPointError, ImportError, app.UsageError)
EXIT_USER_ERROR = 2

_VERBOSE = flags.DEFINE_bool('verbose', False, 'on an error, show the full traceback; also keep '
                             "absl INFO log lines (orbax's, ...)")


def one_line(error: BaseException) -> str:
  """The error's message on one line (multi-line messages joined with '; ')."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return '; '.join(lines) or type(error).__name__


def fail(message: str) -> NoReturn:
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def _parse_flags(argv: Sequence[str]):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(f'{one_line(e)} (see --help)')


def compilation_cache_dir() -> pathlib.Path:
  """Where launchers keep compiled programs between runs (see the module docstring)."""
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return pathlib.Path(os.environ['JAX_COMPILATION_CACHE_DIR'])
  cache_home = os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
  return pathlib.Path(cache_home) / 'viar_jax' / 'jit'


def use_compilation_cache() -> pathlib.Path:
  """Turns on JAX's persistent compilation cache for programs that take >= 1 s to compile."""
  import jax  # pylint: disable=import-outside-toplevel  (keeps `--help` fast)
  path = compilation_cache_dir()
  jax.config.update('jax_compilation_cache_dir', str(path))
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  return path


def run(main: Callable[[Sequence[str]], None]) -> None:
  """`absl.app.run(main)` with the compilation cache on, and expected errors turned into one line
  with exit status 2."""

  def guarded(argv):
    xla_options.use_tuned_flags()
    use_compilation_cache()
    if not _VERBOSE.value:
      # absl's default shows every INFO line of orbax (~15 per checkpoint save and process);
      # warnings stay.
      absl_logging.set_verbosity(absl_logging.WARNING)
    try:
      return main(argv)
    except EXPECTED_ERRORS as e:
      if _VERBOSE.value:
        raise
      fail(one_line(e))

  app.run(guarded, flags_parser=_parse_flags)
