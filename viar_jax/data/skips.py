"""Marker for records that could not be read, and the counter of records the pipeline dropped.

A corrupt file in a folder of millions must not end a long run: sources return an `Unreadable`
marker (or None) instead of raising, the pipeline's filter drops it and counts it in `SkipStats`.
"""
import dataclasses
import multiprocessing
import threading


@dataclasses.dataclass(frozen=True)
class Unreadable:
  """Stands in for a record that failed to load; `what` names the file (or record), `error` why."""
  what: str
  error: str


class NoReadableRecordsError(ValueError):
  """A source whose records are all unreadable: a training loader would never yield a batch."""


def is_skipped(record) -> bool:
  """True for records the pipeline must drop: None or an `Unreadable` marker."""
  return record is None or isinstance(record, Unreadable)


class SkipStats:
  """Count of dropped records and the distinct names of what was dropped; safe across threads.

  `shared=False` (for worker_count=0): counts live in this object, in the process that runs the
  pipeline. `shared=True` (for grain worker processes, which receive pickled copies): events go
  to a `multiprocessing` manager list owned by this object, so the workers' skips show up here.
  """

  def __init__(self, shared: bool = False):
    self._manager = None
    if shared:
      # 'spawn' like grain's own workers; the manager process ends with this object / the program.
      self._manager = multiprocessing.get_context('spawn').Manager()
      self._events = self._manager.list()
    else:
      self._events = []
    self._lock = threading.Lock()

  @property
  def shared(self) -> bool:
    return not isinstance(self._events, list)

  def add(self, record) -> None:
    """Counts one dropped record (`None` or `Unreadable`)."""
    name = record.what if isinstance(record, Unreadable) else None
    with self._lock:
      self._events.append(name)  # One manager call when shared: skips are rare.

  def _snapshot(self) -> list:
    with self._lock:
      return self._events[:]

  @property
  def count(self) -> int:
    """Number of records dropped so far (a file skipped in two epochs counts twice)."""
    return len(self._snapshot())

  @property
  def names(self) -> frozenset[str]:
    """Distinct files / records dropped so far."""
    return frozenset(n for n in self._snapshot() if n is not None)

  def __getstate__(self):
    # Locks and the manager itself do not pickle; the manager's list proxy does (and keeps
    # pointing at the same list), a plain list is copied.
    return {'events': self._events if self.shared else self._snapshot()}

  def __setstate__(self, state):
    self._manager = None
    self._events = state['events']
    self._lock = threading.Lock()

  def __repr__(self) -> str:
    return f'SkipStats(count={self.count}, files={len(self.names)}, shared={self.shared})'


class SkipReport:
  """Unreadable images the loader skipped: `data_skipped` in the logged metrics once there are any
  (runs without skips log exactly what they did before) and a console line when the count grows."""

  def __init__(self, stats: SkipStats, name: str = 'data'):
    self.stats, self.name, self.reported = stats, name, 0

  def add_to(self, metrics):
    count = self.stats.count
    if not count:
      return metrics
    if count > self.reported:
      self.reported = count
      files = sorted(self.stats.names)
      print(f'[{self.name}] skipped {count} unreadable image(s) so far, {len(files)} file(s): '
            f'{", ".join(files[:3])}{" ..." if len(files) > 3 else ""}', flush=True)
    return dict(metrics, data_skipped=count)

  def summary(self):
    if self.stats.count:
      print(f'[{self.name}] {self.stats.count} unreadable image(s) skipped in this run '
            f'({len(self.stats.names)} file(s)); see the warnings above for the reasons',
            flush=True)
