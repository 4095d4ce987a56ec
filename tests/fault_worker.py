"""A tiny digits training run (tests/test_faults.py) that SIGKILLs itself at a chosen moment.

    python tests/fault_worker.py <tokenizer_dir> <workdir> train:<N>
    python tests/fault_worker.py <tokenizer_dir> <workdir> save:<N>

train:N dies after logging step N, once a checkpoint is complete; save:N inside the save of step N,
before orbax's atomic rename. The process kills itself, so the moment is exact and the test does
not race a timer. Also imported by the test for `tiny_config`, so both sides train the same run.
"""
import os
import pathlib
import signal
import sys
import time


def tiny_config(workdir, tokenizer_dir):
  from configs import digits  # pylint: disable=import-outside-toplevel
  c = digits.get_config()
  c.workdir = str(workdir)
  c.tokenizer.ckpt = str(tokenizer_dir)
  c.model.embed_dim, c.model.num_heads = 64, 1
  c.optim.batch_size = 16
  c.optim.steps = 6
  c.mesh.data = 8  # all 8 simulated devices (XLA_FLAGS from tests/conftest.py, inherited)
  c.log_every = 1
  c.ckpt_every = 2
  c.sample_every = 0
  return c


def finished_steps(workdir) -> list:
  """Checkpoint steps whose orbax directory was renamed into place (complete)."""
  directory = pathlib.Path(workdir) / 'checkpoints'
  return sorted(int(p.name) for p in directory.glob('*') if p.name.isdigit())


def kill_self():
  os.kill(os.getpid(), signal.SIGKILL)


def main(tokenizer_dir, workdir, mode):
  from viar_jax.train import loop, run_io  # pylint: disable=import-outside-toplevel
  kind, step = mode.split(':')
  step = int(step)
  if kind == 'train':
    write = run_io.MetricLog.write

    def write_then_die(self, at, metrics, *args, **kwargs):
      out = write(self, at, metrics, *args, **kwargs)
      if at == step:
        deadline = time.time() + 120
        while not finished_steps(workdir) and time.time() < deadline:
          time.sleep(0.05)  # the async save of an earlier step must have landed
        kill_self()
      return out

    run_io.MetricLog.write = write_then_die
  elif kind == 'save':
    from orbax.checkpoint._src.path import atomicity  # pylint: disable=import-outside-toplevel
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def die_before_rename(self):
      if self.get_final().name == str(step):
        print(f'killing inside the save of step {step}: {self.get()}', flush=True)
        kill_self()
      return await finalize(self)

    atomicity.AtomicRenameTemporaryPath.finalize = die_before_rename
  else:
    raise ValueError(f'unknown mode {mode!r}')
  loop.train(tiny_config(workdir, tokenizer_dir), workdir)
  sys.exit('the run was not killed')


if __name__ == '__main__':
  main(*sys.argv[1:4])
