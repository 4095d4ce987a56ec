"""Per-scale VIAR iteration counts: one grammar for sampling, evaluation and the quality curve.

    parse('10', 10)       -> (10,) * 10                          constant
    parse('10,2', 10)     -> (10, 9, 8, 7, 6, 5, 4, 3, 2, 2)     linear ramp (iteration_schedule)
    parse('3,2,2,1', 4)   -> (3, 2, 2, 1)                        explicit, one entry per scale
    parse('', 10)         -> None                                the model's eval_iters

A spec is a comma-separated string or its items (an absl list flag's value).
"""
from typing import Optional, Sequence, Tuple, Union

import numpy as np

Spec = Union[str, int, Sequence[Union[str, int]]]


def _checked_counts(counts: Sequence[int], iter_left, iter_right) -> Tuple[int, ...]:
  counts = tuple(counts)
  if min(counts) < 1:
    raise ValueError(f'iterations {iter_left} -> {iter_right} give a scale with < 1 iteration: '
                     f'{counts}')
  return counts


def iteration_schedule(iter_left: float, iter_right: float, num_scales: int) -> Tuple[int, ...]:
  """Per-scale counts int(x) for x in linspace(iter_left, iter_right, num_scales) (truncated).

  10 -> 5 over 10 scales: (10, 9, 8, 8, 7, 7, 6, 6, 5, 5); 10 -> 2: (10, 9, 8, 7, 6, 5, 4, 3, 2, 2).
  """
  if num_scales < 1:
    raise ValueError(f'num_scales must be >= 1, got {num_scales}')
  return _checked_counts((int(x) for x in np.linspace(iter_left, iter_right, num_scales)),
                         iter_left, iter_right)


def reference_iteration_schedule(iter_left: float, iter_right: float,
                                 num_scales: int) -> Tuple[int, ...]:
  """The reference's schedule: always a 10-point linspace, cut to the first num_scales entries.

  So fewer than 10 scales never reach iter_right: (4, 1) over 4 scales -> (4, 3, 3, 3),
  (1, 4) -> (1, 1, 1, 2), (1, 10) -> (1, 2, 3, 4). More than 10 scales cannot be expressed.
  """
  if not 1 <= num_scales <= 10:
    raise ValueError(f'the reference schedule has 1..10 scales, got {num_scales}')
  counts = [int(x) for x in np.linspace(iter_left, iter_right, 10)][:num_scales]
  return _checked_counts(counts, iter_left, iter_right)


def _counts(spec: Spec) -> Tuple[int, ...]:
  """The integers of a spec; () for an empty one."""
  items = spec.split(',') if isinstance(spec, str) else [spec] if isinstance(spec, int) else spec
  items = [str(i).strip() for i in items]
  items = [] if items == [''] else items
  try:
    return tuple(int(i) for i in items)
  except ValueError:
    raise ValueError(f'bad iteration schedule {spec!r}: expected n (constant), L,R (a ramp) or '
                     'one count per scale, comma-separated integers') from None


def parse(spec: Spec, num_scales: int) -> Optional[Tuple[int, ...]]:
  """-> per-scale iteration counts (num_scales,), or None for an empty spec (see the module doc)."""
  counts = _counts(spec)
  if not counts:
    return None
  if len(counts) == 1:
    counts = counts * num_scales
  elif len(counts) == 2:
    counts = iteration_schedule(counts[0], counts[1], num_scales)
  elif len(counts) != num_scales:
    raise ValueError(f'iteration schedule {spec!r}: give n, L,R or one count per scale '
                     f'({num_scales}), not {len(counts)} counts')
  if min(counts) < 1:
    raise ValueError(f'iteration schedule {spec!r}: every scale needs >= 1 iteration, got {counts}')
  return tuple(counts)


def label(spec: Spec) -> str:
  """A spec as tables show it: '4' (constant), '10->2' (ramp) or the explicit '3,2,2,1'."""
  counts = _counts(spec)
  if not counts:
    return 'eval_iters'
  return '->'.join(map(str, counts)) if len(counts) == 2 else ','.join(map(str, counts))
