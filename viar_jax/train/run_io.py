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
from typing import Any, Callable, Dict, Optional, Union

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorboardX

from viar_jax.io import integrity, manifest
from viar_jax.train import mfu


class RunCheckpointer:
  def __init__(self, workdir, *, keep: int = 3, keep_period: Optional[int] = None,
               async_save: bool = True):
    self.directory = pathlib.Path(workdir).absolute() / 'checkpoints'
    # A save killed before orbax's atomic rename leaves `<step>.orbax-checkpoint-tmp`: never read
    # as a step, and removed here on the next start (cleanup_tmp_directories).
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, keep_period=keep_period,
                                           enable_async_checkpointing=async_save,
                                           cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state, data_state: Optional[Dict] = None, meta: Optional[Dict] = None,
           force: bool = False) -> bool:
    self._write_manifests()  # of the steps finalised since the last save (waits for them)
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data_state or {}),
                              meta=ocp.args.JsonSave(meta or {}))
    return self.manager.save(int(step), args=args, force=force)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def restore(self, step: int, state_template) -> Dict[str, Any]:
    """-> {'state': TrainState like the template, 'data': dict, 'meta': dict}.

    Verified as model checkpoints are (viar_jax.io.checkpoint): the stored state tree has the
    template's names, shapes and dtypes (read from orbax's metadata before any array), every item
    reads, and the state is finite.

    Raises:
      integrity.CheckpointError: naming the step directory and the file or parameter; reason
        OTHER_MODEL when the run's config builds another state than the one saved.
    """
    step_dir = self.directory / str(int(step))
    what = 'training checkpoint'
    if not step_dir.is_dir():
      raise integrity.CheckpointNotFoundError(f'{what} {step_dir} does not exist', step_dir)
    if (step_dir / manifest.MANIFEST).exists():  # absent if killed between finalising and writing it
      problems = manifest.verify_manifest(step_dir, covers=None, what=what)
      if problems:
        raise integrity.damaged(step_dir, problems[0][0], problems[0][1], what)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
    stored = integrity.tree_metadata(step_dir, step_dir / 'state', what)
    integrity.check_tree(step_dir, abstract, stored, what=what, where='state/',
                          expected_from="this run's config")
    args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore(),
                              meta=ocp.args.JsonRestore())
    with integrity.reading(step_dir, step_dir, what):
      restored = self.manager.restore(int(step), args=args)
    for item in ('data', 'meta'):
      if not isinstance(restored[item], dict):  # an unreadable JSON item restores as None
        raise integrity.damaged(step_dir, f'{item}/', 'missing or unreadable', what)
    integrity.check_finite(step_dir, restored['state'], 'state/', what)
    return restored

  def _write_manifests(self):
    """Checksums every finalised step that has none yet (orbax's own files carry no checksum of
    the array bytes, so a flipped bit would otherwise restore silently)."""
    self.manager.wait_until_finished()
    if jax.process_index() != 0:
      return
    for step in self.manager.all_steps():
      step_dir = self.directory / str(step)
      if step_dir.is_dir() and not (step_dir / manifest.MANIFEST).exists():
        manifest.write_manifest(step_dir, covers=None)

  def wait(self):
    self._write_manifests()

  def close(self):
    self._write_manifests()
    self.manager.close()


class MetricLog:
  """JSONL + TensorBoard metrics and a console line every call with rate and ETA."""

  def __init__(self, workdir, total_steps: int, batch_size: int, name: str = 'train'):
    self.path = pathlib.Path(workdir) / f'{name}_metrics.jsonl'
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.total, self.batch, self.name = total_steps, batch_size, name
    self.t0, self.step0 = None, None
    self.tb = scalar_writer(pathlib.Path(workdir) / 'tensorboard' / name)

  def write(self, step: int, metrics: Dict[str, Any], console: bool = True,
            model_flops: Optional[float] = None, compiler_flops: Optional[float] = None
            ) -> Dict[str, float]:
    """Logs a step's metrics with the rates since the first logged step.

    model_flops (`mfu.model_flops_per_step`) adds model TFLOP/s and, on devices with a known peak,
    MFU; compiler_flops (XLA's cost analysis of the compiled step, per device) adds the compiler's
    TFLOP/s, which also counts recompute.
    """
    now = time.perf_counter()
    if self.t0 is None:  # the first logged step includes compilation: rates start after it
      self.t0, self.step0 = now, step
    values = {k: float(np.asarray(v)) for k, v in metrics.items()}
    steps_per_s = (step - self.step0) / (now - self.t0) if step > self.step0 else float('nan')
    values.update(step=step, steps_per_s=steps_per_s, images_per_s=steps_per_s * self.batch)
    rate = ''
    if model_flops is not None and steps_per_s > 0:
      values['model_tflops_per_s'] = model_flops * steps_per_s / 1e12
      utilisation = mfu.utilisation(model_flops, 1 / steps_per_s, jax.devices())
      if utilisation is not None:
        values['mfu'] = utilisation
      rate = (f' MFU {100 * utilisation:.1f}%' if utilisation is not None else
              f' {values["model_tflops_per_s"]:.3g} model TFLOP/s')
    if compiler_flops is not None and steps_per_s > 0:
      values['compiler_tflops_per_s'] = compiler_flops * steps_per_s / 1e12
    with self.path.open('a') as f:
      f.write(json.dumps(values) + '\n')
    for tag, value in values.items():
      if tag != 'step' and math.isfinite(value):
        self.tb.add_scalar(tag, value, step)
    if console:
      eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float('nan')
      shown = ' '.join(f'{k} {v:.4g}' for k, v in metrics.items() if k in values)
      print(f'[{self.name}] step {step}/{self.total} {shown} | {steps_per_s:.2f} steps/s '
            f'{steps_per_s * self.batch:.1f} img/s{rate} ETA {_fmt(eta)}', flush=True)
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


# What `check_finite` checks by default: the loss, the gradient norm and, where a step reports it,
# the norm of the params it returns (a finite loss with non-finite new params is still a bad state).
FINITE_METRICS = ('loss', 'grad_norm', 'param_norm')


class NonFiniteError(FloatingPointError):
  """A training metric went NaN / inf; the run stopped without saving that state."""


def check_finite(step: int, metrics: Dict[str, Any], keys=FINITE_METRICS,
                 kept: Union[str, Callable[[], str]] = 'The last checkpoint on disk is the last '
                                                        'good state.'):
  """Raises `NonFiniteError` naming `step` and every NaN / inf metric among `keys` (those present).

  One host fetch of the checked scalars: call it where metrics are fetched anyway (log steps) and
  right before every save, not every step. `kept` (or its result, computed only on failure) ends the
  message: what the user still has.
  """
  values = jax.device_get({k: metrics[k] for k in keys if k in metrics})
  bad = {k: float(np.asarray(values[k])) for k in keys if k in values
         and not np.all(np.isfinite(values[k]))}  # in `keys` order (device_get sorts dict keys)
  if bad:
    what = ', '.join(f'{k} is {v}' for k, v in bad.items())
    raise NonFiniteError(f'{what} at step {step}; stopping without saving this state. '
                         f'{kept() if callable(kept) else kept}')
