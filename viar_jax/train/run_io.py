"""Training-run I/O: the orbax CheckpointManager for train states, and the metric log.

Checkpoints: `<workdir>/checkpoints/<step>/{state, data, meta}`: the TrainState pytree (params,
optimizer state, step, rng), the data iterator state (JSON) and the run config (JSON). Async saves,
keep the last N plus every `keep_period`-th step; `restore_latest` resumes a preempted run.
Metrics: one JSON object per line in `<workdir>/<name>_metrics.jsonl`, TensorBoard scalars in
`<workdir>/tensorboard/<name>/` (tensorboardX: no TensorFlow needed), and a console line with steps/s,
images/s, ETA.
"""
import json
import math
import pathlib
import time
import uuid
from typing import Any, Dict, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorboardX


class RunCheckpointer:
  def __init__(self, workdir, *, keep: int = 3, keep_period: Optional[int] = None,
               async_save: bool = True):
    self.directory = pathlib.Path(workdir).absolute() / 'checkpoints'
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, keep_period=keep_period,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state, data_state: Optional[Dict] = None, meta: Optional[Dict] = None,
           force: bool = False) -> bool:
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data_state or {}),
                              meta=ocp.args.JsonSave(meta or {}))
    return self.manager.save(int(step), args=args, force=force)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def restore(self, step: int, state_template) -> Dict[str, Any]:
    """-> {'state': TrainState like the template, 'data': dict, 'meta': dict}."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore(),
                              meta=ocp.args.JsonRestore())
    return self.manager.restore(int(step), args=args)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


class MetricLog:
  """JSONL + TensorBoard metrics and a console line every call with rate and ETA."""

  def __init__(self, workdir, total_steps: int, batch_size: int, name: str = 'train'):
    self.path = pathlib.Path(workdir) / f'{name}_metrics.jsonl'
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.total, self.batch, self.name = total_steps, batch_size, name
    self.t0, self.step0 = None, None
    self.tb = scalar_writer(pathlib.Path(workdir) / 'tensorboard' / name)

  def write(self, step: int, metrics: Dict[str, Any], console: bool = True) -> Dict[str, float]:
    now = time.perf_counter()
    if self.t0 is None:  # the first logged step includes compilation: rates start after it
      self.t0, self.step0 = now, step
    values = {k: float(np.asarray(v)) for k, v in metrics.items()}
    steps_per_s = (step - self.step0) / (now - self.t0) if step > self.step0 else float('nan')
    values.update(step=step, steps_per_s=steps_per_s, images_per_s=steps_per_s * self.batch)
    with self.path.open('a') as f:
      f.write(json.dumps(values) + '\n')
    for tag, value in values.items():
      if tag != 'step' and math.isfinite(value):
        self.tb.add_scalar(tag, value, step)
    if console:
      eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float('nan')
      shown = ' '.join(f'{k} {v:.4g}' for k, v in metrics.items() if k in values)
      print(f'[{self.name}] step {step}/{self.total} {shown} | {steps_per_s:.2f} steps/s '
            f'{steps_per_s * self.batch:.1f} img/s ETA {_fmt(eta)}', flush=True)
    return values

  def close(self):
    self.tb.close()


def scalar_writer(logdir, flush_secs: int = 30) -> tensorboardX.SummaryWriter:
  """A TensorBoard event-file writer for `logdir` (created if missing).

  tensorboardX names files by second and host and opens them with 'wb': a resumed run that starts a
  new writer in the same second would truncate the old file, so each writer gets a unique suffix.
  """
  logdir = pathlib.Path(logdir)
  logdir.mkdir(parents=True, exist_ok=True)
  return tensorboardX.SummaryWriter(str(logdir), max_queue=1000, flush_secs=flush_secs,
                                    filename_suffix=f'.{uuid.uuid4().hex[:12]}')


def _fmt(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  m, s = divmod(int(seconds), 60)
  return f'{m}m{s:02d}s'


def check_finite(step: int, metrics: Dict[str, Any], what: str = 'loss'):
  """Stops the run (before any save) when the loss is NaN or inf."""
  value = float(np.asarray(metrics[what]))
  if not math.isfinite(value):
    raise FloatingPointError(f'{what} is {value} at step {step}; stopping. The last checkpoint on '
                             f'disk is the last good state.')
