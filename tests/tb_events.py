"""Reads TensorBoard event files back with TensorBoard's own loader (the `test` extra), in file order."""
import pathlib
from typing import List, Tuple

import pytest


def event_files(path) -> List[pathlib.Path]:
  """`path` itself if it is a file, else its event files (sorted by name, i.e. by creation second)."""
  path = pathlib.Path(path)
  return [path] if path.is_file() else sorted(path.glob('events.out.tfevents.*'))


def read_scalars(path) -> List[Tuple[int, str, float]]:
  """(step, tag, value) of every scalar in the event file(s) under `path`, in write order."""
  pytest.importorskip('tensorboard', reason='reading event files needs tensorboard (the test extra)')
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top
  out = []
  for f in event_files(path):
    for event in event_file_loader.LegacyEventFileLoader(str(f)).Load():
      out += [(event.step, v.tag, v.simple_value) for v in event.summary.value
              if v.WhichOneof('value') == 'simple_value']
  return out
