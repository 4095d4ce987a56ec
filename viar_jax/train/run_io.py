"""Training-run I/O: the orbax CheckpointManager for train states, and the metric log.

Checkpoints: `<workdir>/checkpoints/<step>/{state, data, meta}`: the TrainState pytree (params,
optimizer state, step, rng), the data iterators' states (grain's handler: one
`process_<i>-of-<n>.json` per process, each restored by its own process) and the run config (JSON).
Async saves, keep the last N plus every `keep_period`-th step. Every process takes part in a save
and a restore (the state's arrays are sharded over all of them).
Metrics: one JSON object per line in `<workdir>/<name>_metrics.jsonl`, TensorBoard scalars in
`<workdir>/tensorboard/<name>/` (tensorboardX: no TensorFlow needed), and a console line with steps/s,
images/s, ETA; all written by process 0 only.
Paths are `etils.epath` paths: local directories or bucket URLs (gs://...) alike.
"""
import json
import math
import time
import uuid
from typing import Any, Callable, Dict, Optional, Union

import grain.checkpoint
import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorboardX
from etils import epath

from viar_jax import runtime
from viar_jax.io import integrity, manifest, writable
from viar_jax.train import mfu


class RunCheckpointer:
  def __init__(self, workdir, *, keep: int = 3, keep_period: Optional[int] = None,
               async_save: bool = True):
    self.directory = writable.absolute(workdir) / 'checkpoints'
    # A save killed before orbax's atomic rename leaves `<step>.orbax-checkpoint-tmp`: never read
    # as a step, and removed here on the next start (cleanup_tmp_directories).
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, keep_period=keep_period,
                                           enable_async_checkpointing=async_save,
                                           cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state, data_iterator=None, meta: Optional[Dict] = None,
           force: bool = False) -> bool:
    """Saves (asynchronously) on every process; `data_iterator`: this process's grain iterator."""
    self._write_manifests()  # of the steps finalised since the last save (waits for them)
    items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {}))
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(int(step), args=ocp.args.Composite(**items), force=force)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def restore(self, step: int, state_template, data_iterator=None) -> Dict[str, Any]:
    """-> {'state': TrainState like the template, 'meta': dict}; moves `data_iterator` (this
    process's, built as the saved one was) to its saved position.

    Verified as model checkpoints are (viar_jax.io.checkpoint): the stored state tree has the
    template's names, shapes and dtypes (read from orbax's metadata before any array), every item
    reads, the state is finite, and the step holds this process's data state (it does not when the
    run was saved with another process count).

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
    items = dict(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
    if data_iterator is not None:
      self._check_data_state(step_dir)
      items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    with integrity.reading(step_dir, step_dir, what):
      restored = dict(self.manager.restore(int(step), args=ocp.args.Composite(**items)))
    if not isinstance(restored['meta'], dict):  # an unreadable JSON item restores as None
      raise integrity.damaged(step_dir, 'meta/', 'missing or unreadable', what)
    integrity.check_finite(step_dir, restored['state'], 'state/', what)
    return restored

  @staticmethod
  def _check_data_state(step_dir):
    index, count = jax.process_index(), jax.process_count()
    name = f'process_{index}-of-{count}.json'  # grain.checkpoint.CheckpointHandler's file name
    if (step_dir / 'data' / name).exists():
      return
    saved = sorted(p.name for p in (step_dir / 'data').glob('process_*.json')) \
        if (step_dir / 'data').is_dir() else []
    if saved and all(not n.endswith(f'-of-{count}.json') for n in saved):
      counts = sorted({n.rsplit('-of-', 1)[1][:-len('.json')] for n in saved})
      raise ValueError(
          f'training checkpoint {step_dir} was written by {" / ".join(counts)} process(es); this '
          f'run has {count}. Each process resumes its own data position: resume with the same '
          'process count (or start a new workdir)')
    raise integrity.damaged(step_dir, f'data/{name}', 'missing', 'training checkpoint')

  def _write_manifests(self):
    """Checksums every finalised step that has none yet (orbax's own files carry no checksum of
    the array bytes, so a flipped bit would otherwise restore silently); process 0 writes them,
    the others wait for that (a restore right after must see them)."""
    self.manager.wait_until_finished()
    if jax.process_index() == 0:
      for step in self.manager.all_steps():
        step_dir = self.directory / str(step)
        if step_dir.is_dir() and not (step_dir / manifest.MANIFEST).exists():
          manifest.write_manifest(step_dir, covers=None)
    runtime.sync('step manifests')

  def wait(self):
    self._write_manifests()

  def close(self):
    self._write_manifests()
    self.manager.close()


class MetricLog:
  """JSONL + TensorBoard metrics and a console line every call with rate and ETA, from process 0
  (every process may call `write`; the others only compute the returned values)."""

  def __init__(self, workdir, total_steps: int, batch_size: int, name: str = 'train'):
    self.path = epath.Path(workdir) / f'{name}_metrics.jsonl'
    self.total, self.batch, self.name = total_steps, batch_size, name
    self.t0, self.step0 = None, None
    self.primary = jax.process_index() == 0
    if self.primary:
      self.path.parent.mkdir(parents=True, exist_ok=True)
    self.tb = scalar_writer(epath.Path(workdir) / 'tensorboard' / name) if self.primary else None

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
    if not self.primary:
      return values
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
    if self.tb is not None:
      self.tb.close()


def scalar_writer(logdir, flush_secs: int = 30) -> tensorboardX.SummaryWriter:
  """A TensorBoard event-file writer for `logdir` (created if missing).

  tensorboardX names files by second and host and opens them with 'wb': a resumed run that starts a
  new writer in the same second would truncate the old file, so each writer gets a unique suffix.
  """
  logdir = epath.Path(logdir)
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
