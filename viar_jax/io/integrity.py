"""Is a checkpoint usable? The one error type and the checks that model checkpoints
(viar_jax.io.checkpoint) and training states (viar_jax.train.run_io) share.

Every failure is one `CheckpointError` naming the checkpoint directory, the file or parameter, what
was expected, and whether the checkpoint is damaged or of another model:
  `tree_metadata` + `check_tree`  the stored parameter tree (orbax's metadata, read before any
                                  array) against the one the config builds: names, shapes, dtypes;
  `reading`                       orbax / tensorstore read errors, located to a file or parameter;
  `check_finite`                  every array finite.
"""
import contextlib
import json
import logging
import os
import re
import sys
import warnings
from typing import Dict, Iterator, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath


_MAX_LISTED = 5  # differences listed in a message; the rest are counted


DAMAGED, OTHER_MODEL, NOT_FOUND = 'damaged', 'of another model', 'not found'


class CheckpointError(ValueError):
  """A checkpoint that cannot be used. The message says why; the attributes say it for code.

  Attributes:
    directory: the checkpoint (or training step) directory.
    where: the file or parameter at fault, relative to `directory` (None when not one place).
    reason: DAMAGED, OTHER_MODEL or NOT_FOUND.
  """

  def __init__(self, message: str, directory=None, where: Optional[str] = None,
               reason: str = DAMAGED):
    super().__init__(message)
    self.directory, self.where, self.reason = directory, where, reason


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
  """Nothing usable at the path; also a FileNotFoundError, as before checkpoints were verified."""

  def __init__(self, message: str, directory=None, where: Optional[str] = None):
    super().__init__(message, directory, where, NOT_FOUND)


def damaged(directory, where: Optional[str], detail: str, what: str = 'checkpoint'
            ) -> CheckpointError:
  at = f' {where}:' if where else ''
  return CheckpointError(f'{what} {directory} is damaged:{at} {detail}', directory, where, DAMAGED)


def _key_name(entry) -> str:
  for attr in ('key', 'name', 'idx'):  # DictKey / FlattenedIndexKey, GetAttrKey, SequenceKey
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def flat_shapes(tree) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
  """{'a/b/kernel': (shape, dtype)} of an array, ShapeDtypeStruct or orbax-metadata tree. Names do
  not depend on the container type (a TrainState field, a dict key, a NamedTuple field)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(_key_name(k) for k in path): (tuple(getattr(leaf, 'shape', ())),
                                                 np.dtype(getattr(leaf, 'dtype', None) or 'O'))
          for path, leaf in leaves}


def _fmt_leaf(shape, dtype) -> str:
  return f'{tuple(shape)} {dtype}'


def tree_differences(expected: Dict, stored: Dict) -> List[Tuple[str, str]]:
  """[(name, readable difference)] between two `flat_shapes` dicts: missing, unexpected, then
  wrong shape or dtype."""
  order = lambda names: sorted(names, key=lambda n: (n.startswith('opt_state/'), n))  # params first
  out = [(n, f'missing {n} {_fmt_leaf(*expected[n])}') for n in order(set(expected) - set(stored))]
  out += [(n, f'unexpected {n} {_fmt_leaf(*stored[n])}')
          for n in order(set(stored) - set(expected))]
  out += [(n, f'{n} is {_fmt_leaf(*stored[n])}, expected {_fmt_leaf(*expected[n])}')
          for n in order(set(expected) & set(stored)) if stored[n] != expected[n]]
  return out


def _listed(diff: List[Tuple[str, str]]) -> str:
  more = len(diff) - _MAX_LISTED
  listed = '; '.join(text for _, text in diff[:_MAX_LISTED])
  return listed + (f'; and {more} more' if more > 0 else '')


def describe(shapes: Dict) -> Optional[str]:
  """A model in a few words from its param shapes (`flat_shapes`; a training state's 'params/'
  subtree), or None when not recognised."""
  if 'params/class_emb/embedding' in shapes or 'params/quantize/embedding/embedding' in shapes:
    shapes = {n[len('params/'):]: v for n, v in shapes.items() if n.startswith('params/')}
  names = set(shapes)
  dim = lambda name, i: shapes[name][0][i]
  try:
    if 'class_emb/embedding' in names:  # a transformer
      count = lambda prefix: len({n.split('/')[0] for n in names if n.startswith(prefix)})
      if any(n.startswith('implicit_block/') for n in names):
        stack = f'VIAR ({count("pre_blocks_")} pre + implicit + {count("post_blocks_")} post blocks'
      else:
        stack = f'VAR ({count("blocks_")} blocks'
      return (f'{stack}, width {dim("class_emb/embedding", 1)}, '
              f'{dim("class_emb/embedding", 0) - 1} classes, vocabulary {dim("head/bias", 0)})')
    if 'quantize/embedding/embedding' in names:
      return (f'VQ-VAE (codebook {dim("quantize/embedding/embedding", 0)} x '
              f'{dim("quantize/embedding/embedding", 1)}, base channels '
              f'{dim("encoder/conv_in/kernel", -1)})')
  except (KeyError, IndexError):
    pass
  return None


def check_tree(directory, expected_tree, stored_tree, *, what: str = 'checkpoint',
               where: str = 'params/', expected_from: str = 'its config.json',
               config_edited: bool = False) -> None:
  """Raises a CheckpointError (OTHER_MODEL) when the stored tree's names, shapes or dtypes differ
  from the expected tree, listing the first differences and, when both are recognised, the two
  models in words."""
  expected, stored = flat_shapes(expected_tree), flat_shapes(stored_tree)
  diff = tree_differences(expected, stored)
  if not diff:
    return
  saved, built = describe(stored), describe(expected)
  models = (f' {where} holds a {saved}; {expected_from} describes a {built}.'
            if saved and built and saved != built else '')
  edited = ' (config.json was changed after the checkpoint was saved)' if config_edited else ''
  raise CheckpointError(
      f'{what} {directory} is {OTHER_MODEL} than {expected_from}{edited}:{models} '
      f'{len(diff)} parameter(s) differ: {_listed(diff)}', directory, where + diff[0][0],
      OTHER_MODEL)


def short_message(error: BaseException, limit: int = 240) -> str:
  """The informative part of an error: for tensorstore's nested 'context: context: cause'
  messages the status and the innermost cause, never the spec dump."""
  text = str(error) or type(error).__name__
  for cut in (' [tensorstore_spec', ' See full TensorStore details', '\n'):
    text = text.split(cut)[0]
  status = re.match(r'([A-Z_]{4,}): ', text)
  if status:  # the status, then the innermost contexts that fit in a line
    parts = text[status.end():].split(': ')
    tail = parts.pop()
    while parts and len(parts[-1]) + len(tail) < 100:
      tail = f'{parts.pop()}: {tail}'
    text = f'{status.group(1)}: {tail}'
  text = text.strip()
  text = text if len(text) <= limit else text[:limit] + '...'
  return f'{type(error).__name__}: {text}' if not isinstance(error, OSError) else text


def _chain(error: BaseException) -> Iterator[BaseException]:
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def _bad_orbax_file(item_dir: epath.Path) -> Optional[Tuple[epath.Path, str]]:
  """The first orbax file under `item_dir` (an item, or a step of items) that is missing (a tree's
  metadata) or is not valid JSON: (its path, what is wrong). orbax's JSON errors name no file."""
  dirs = [item_dir] + sorted(p for p in item_dir.iterdir() if p.is_dir() and p.name not in (
      'd', 'array_metadatas') and not p.name.startswith('ocdbt.'))
  for folder in dirs:
    if (folder / 'manifest.ocdbt').exists() and not (folder / '_METADATA').exists():
      return folder / '_METADATA', "missing (orbax's tree metadata)"
    # _CHECKPOINT_METADATA is left out: orbax reads past a damaged one.
    candidates = [folder / n for n in ('_METADATA', '_sharding', 'metadata')]
    for path in candidates + sorted((folder / 'array_metadatas').glob('*')):
      if path.is_file():
        try:
          json.loads(path.read_bytes().decode('utf-8'))
        except ValueError as e:
          return path, f'not valid JSON ({short_message(e)})'
  return None


def locate(error: BaseException, directory: epath.Path, item_dir: epath.Path
           ) -> Tuple[Optional[str], str]:
  """(the file or parameter at fault, relative to `directory`, or None; what is wrong, one line)
  for an exception raised while orbax read `item_dir`."""
  rel = lambda path: os.path.relpath(path, directory)
  chain = [e for e in _chain(error) if str(e)] or [error]
  reason = f'cannot be read ({short_message(chain[-1])})'  # the root cause
  texts = [str(e) for e in chain]
  for text in texts:  # tensorstore names the file it failed on
    files = re.findall(r'local file "([^"]+)"', text) + re.findall(r'File (/\S+) not found', text)
    files = [f for f in files if not f.endswith('/')]
    if files:
      return rel(files[-1]), reason if os.path.exists(files[-1]) else 'missing'
  everything = '\n'.join(texts)
  param = (re.search(r"'path': '([\w.]+)/'", everything) or
           re.search(r'"([\w.]+)/[^"]*" in OCDBT', everything))
  if param:  # ...or the array it was reading, in which item
    database = (re.search(r'OCDBT database at local file "([^"]+)/"', everything) or
                re.search(r"'path': '(/[^']+)/'", everything))
    prefix = rel(database.group(1)) + '/' if database else ''
    return f'parameter {prefix}{param.group(1).replace(".", "/")}', reason
  bad = _bad_orbax_file(item_dir)
  if bad:
    return rel(bad[0]), bad[1]
  return None, reason


_ABANDONED = ('Event loop is closed', 'Encountered error while reading array index')


def _abandoned_read(error: Optional[BaseException]) -> bool:
  return any(str(e).startswith(_ABANDONED) or 'OCDBT database' in str(e) or 'local file "' in str(e)
             for e in _chain(error))


class _AbandonedReadsFilter(logging.Filter):
  def filter(self, record):
    return not ('never retrieved' in record.getMessage() and record.exc_info and
                _abandoned_read(record.exc_info[1]))


def _quiet_abandoned_reads():
  """After a failed restore, orbax's other pending reads of the same checkpoint end later, each with
  a traceback of its own on stderr ('Event loop is closed' through sys.unraisablehook, 'Task
  exception was never retrieved' through the asyncio logger, 'coroutine ... was never awaited'),
  after and unrelated to the CheckpointError that says what is wrong. Those are dropped; any other
  error still reaches its hook."""
  previous = sys.unraisablehook
  if getattr(previous, 'viar_jax_quiet', False):
    return

  def hook(unraisable):
    if not _abandoned_read(unraisable.exc_value):
      previous(unraisable)

  hook.viar_jax_quiet = True
  sys.unraisablehook = hook
  logging.getLogger('asyncio').addFilter(_AbandonedReadsFilter())
  warnings.filterwarnings('ignore', r"coroutine '(_read_array_index_and_device_put|"
                          r"async_deserialize|_read_and_create_array)' was never awaited",
                          RuntimeWarning)


@contextlib.contextmanager
def reading(directory, item_dir, what: str = 'checkpoint'):
  """Turns any error while orbax reads `item_dir` into a CheckpointError (DAMAGED) naming the file
  or parameter when the error allows."""
  directory, item_dir = epath.Path(directory), epath.Path(item_dir)
  try:
    yield
  except CheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise anything)
    _quiet_abandoned_reads()
    where, reason = locate(e, directory, item_dir)
    raise damaged(directory, where or item_dir.relative_to(directory).as_posix() + '/',
                  reason, what) from e


def tree_metadata(directory, item_dir, what: str = 'checkpoint'):
  """orbax's metadata tree (names, shapes, dtypes) of a StandardCheckpointer item; reads no
  array."""
  if not epath.Path(item_dir).is_dir():
    rel = epath.Path(item_dir).relative_to(directory).as_posix()
    raise damaged(directory, rel + '/', 'missing', what)
  handler = ocp.StandardCheckpointHandler()
  try:
    with reading(directory, item_dir, what):
      tree = handler.metadata(epath.Path(item_dir))
      if tree is None:
        raise ValueError('no tree metadata')
      return tree
  finally:
    handler.close()


def _all_finite(leaf) -> bool:
  if not jnp.issubdtype(leaf.dtype, jnp.inexact):
    return True
  if isinstance(leaf, jax.Array) and (not leaf.is_fully_addressable or
                                      any(d.platform != 'cpu' for d in leaf.devices())):
    return bool(jnp.isfinite(leaf).all())  # on the device: no host copy of an accelerator's params
  return bool(np.isfinite(np.asarray(leaf)).all())


def check_finite(directory, tree, where: str = 'params/', what: str = 'checkpoint') -> None:
  """Raises a CheckpointError naming the first parameter with NaN or inf values."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if hasattr(leaf, 'dtype') and not _all_finite(leaf):
      name = '/'.join(_key_name(k) for k in path)
      count = ''
      if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
        host = np.asarray(leaf)
        count = (f' ({int(np.isnan(host).sum())} NaN, {int(np.isinf(host).sum())} inf of '
                 f'{host.size} values)')
      raise CheckpointError(
          f'{what} {directory} is damaged (or was saved from a diverged run): parameter {name} '
          f'holds non-finite values{count}', directory, where + name, DAMAGED)
