"""Progressive training (the reference's `--pg`): the model first learns a prefix of the scales.

Over the first `fraction` of the steps the number of scales trained grows from `first_stage + 1` to
all K; in stage s the model sees tokens [0, e_s) only (e_s = end of scale s) and the loss weight of
the newest scale s ramps as min(1, max(0.01, steps_in_stage / ramp_steps)), except in the first
stage. Weights stay 1/L of the full sequence (not renormalised), and the last stage is plain
training. Everything is a pure function of the global step, so a resumed run continues exactly;
each stage is one compiled train step (static sequence length).

Reference: VAR `train.py` (prog_si) and `train_step.py` (prog_wp, loss weights); shared/spec/VAR.md §4.
"""
import bisect
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Stage(NamedTuple):
  """What one compiled train step needs (hashable, static)."""
  num_scales: int  # scales [0, num_scales) are trained
  start_step: int  # first global step of the stage
  ramp_steps: float  # newest scale's weight ramp length; 0 = no ramp (weight 1)


@dataclasses.dataclass(frozen=True)
class Schedule:
  fraction: float  # pg: the stages grow over the first `fraction` of the steps (0 = off)
  first_stage: int  # pg0: the scale index trained up to at the start
  ramp_steps: float  # pgwp · iterations per epoch in the reference (default total_steps / 300)
  warmup_steps: int
  total_steps: int
  num_scales: int

  def __post_init__(self):
    if not 0 <= self.fraction <= 1:
      raise ValueError(f'progressive fraction (pg) must lie in [0, 1], got {self.fraction}')
    if self.fraction and not 0 <= self.first_stage < self.num_scales:
      raise ValueError(f'progressive first stage (pg0) must lie in [0, {self.num_scales - 1}] for '
                       f'{self.num_scales} scales, got {self.first_stage}')
    if self.ramp_steps < 0:
      raise ValueError(f'progressive ramp_steps must be >= 0, got {self.ramp_steps}')

  @property
  def enabled(self) -> bool:
    return self.fraction > 0

  def scale_index(self, step: int) -> int:
    """The newest scale trained at global step `step` (the reference's prog_si)."""
    last = self.num_scales - 1
    if not self.enabled:
      return last
    if step <= self.warmup_steps:
      return self.first_stage
    end = self.total_steps * self.fraction
    if step >= end:
      return last
    progress = min(max((step - self.warmup_steps) / (end - self.warmup_steps), 0), 1)
    return self.first_stage + round(progress * (last - self.first_stage))  # Python's round, as ref

  def stage(self, step: int) -> Stage:
    s = self.scale_index(step)
    start = bisect.bisect_left(range(step + 1), s, key=self.scale_index)  # stages only grow
    first = not self.enabled or s == self.first_stage
    final = s == self.num_scales - 1
    return Stage(s + 1, start, 0.0 if first or final else float(self.ramp_steps))


def newest_scale_weight(stage: Stage, step):
  """Loss-weight factor of the stage's newest scale at global `step` (traced or not)."""
  if stage.ramp_steps <= 0:
    return 1.0
  ratio = (step - stage.start_step + 1) / stage.ramp_steps
  if isinstance(ratio, jax.Array):  # the step counter inside the train step
    return jnp.clip(ratio, 0.01, 1.0)
  return min(max(ratio, 0.01), 1.0)
