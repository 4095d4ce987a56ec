"""Output directories checked before any compute: a run that cannot write fails first, not hours in.

    workdir = writable.ensure_dir(workdir, 'workdir')  # creates it, writes + removes a probe

A directory that cannot be created or written (a parent that is a file, no permission, a read-only
or full file system) raises `UnwritableDirectoryError` naming the directory and the OS's reason.
Paths are `etils.epath` paths: local directories and bucket URLs (gs://..., s3://...) alike.
"""
import os
import uuid

from etils import epath


def is_local(path) -> bool:
  return '://' not in os.fspath(path)


def absolute(path) -> epath.Path:
  """`path` as an epath.Path: a local one with `~` expanded and made absolute, a URL unchanged."""
  path = epath.Path(path)
  return path.expanduser().absolute() if is_local(path) else path


class UnwritableDirectoryError(OSError):
  """An output directory that cannot be created or written; the message names it."""


def ensure_dir(path, what: str = 'output directory') -> epath.Path:
  """Creates `path` (and its parents) if missing and proves it writable with a probe file.

  Args:
    path: the directory.
    what: how the message names it (e.g. 'workdir', 'sample output directory').

  Returns:
    `absolute(path)`.

  Raises:
    UnwritableDirectoryError: creating it or writing in it failed.
  """
  path = absolute(path)
  # The probe is really written and flushed: a full disk can still allow mkdir (no new blocks for an
  # existing directory) but not data. Named per process so several processes can probe one workdir.
  probe = path / f'.write_probe.{os.getpid()}.{uuid.uuid4().hex[:8]}'
  try:
    path.mkdir(parents=True, exist_ok=True)
    with probe.open('wb') as f:
      f.write(b'viar-jax write probe\n')
      f.flush()
      if is_local(path):
        os.fsync(f.fileno())
  except OSError as e:
    reason = e.strerror or str(e)
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
      reason += f': {str(blocker)!r} is a file'
    raise UnwritableDirectoryError(f'{what} {str(path)!r} is not writable ({reason}); choose '
                                   'another directory, or fix its permissions / free space') from e
  finally:
    try:
      probe.unlink()
    except OSError:
      pass  # never created
  return path
