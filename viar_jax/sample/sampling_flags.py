"""The sampling flags that launch.sample and launch.evaluate share, and the options they give.

    sampling_flags.define()                                   # at import of a launcher
    options = sampling_flags.options(num_scales)              # in its main
    args = sampling_flags.generate_args(options)              # for generate.generate(**args, out=...)

Iterations (`--iters`) use the one schedule grammar: `10` at every scale, `10,2` a linear ramp,
or one count per scale (viar_jax.sample.schedule).
"""
from typing import Dict

from absl import flags

from viar_jax.models import solvers
from viar_jax.sample import sampler, schedule


def define(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the checkpoint, class, batch, guidance, filtering, VIAR and seed flags."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string('vae_ckpt', None, 'tokenizer checkpoint directory (launch.convert)', **fv)
  flags.DEFINE_string('model_ckpt', None, 'VAR / VIAR checkpoint directory (launch.convert)', **fv)
  flags.DEFINE_list('classes', [], 'class ids to sample; empty = all classes', **fv)
  flags.DEFINE_integer('per_class', 4, 'samples per class', **fv)
  flags.DEFINE_integer('batch', 16, 'images per device and call (every device of every process '
                       'samples)', **fv)
  flags.DEFINE_integer('fsdp', 1, 'split the model\'s large params over groups of this many devices '
                       'instead of replicating them (models too large for one device)', **fv)
  flags.DEFINE_float('cfg', 1.5, 'classifier-free guidance (ramped over scales)', **fv)
  flags.DEFINE_integer('top_k', 900, 'top-k filtering (0 = off)', **fv)
  flags.DEFINE_float('top_p', 0.96, 'top-p filtering (0 = off)', **fv)
  flags.DEFINE_bool('more_smooth', False, 'soft Gumbel mixing of code vectors (reference demo option)',
                    **fv)
  flags.DEFINE_list('iters', [], 'VIAR iterations per scale: n (constant), L,R (ramp) or one per '
                    'scale; empty = the model\'s eval_iters', **fv)
  flags.DEFINE_enum('cache', 'per_iteration', sampler.CACHE_MODES, 'VIAR implicit KV-cache mode', **fv)
  flags.DEFINE_float('tol', None, 'VIAR early-exit tolerance (final_iterate cache only)', **fv)
  flags.DEFINE_enum('solver', 'picard', solvers.METHODS, 'VIAR solver (anderson: final_iterate only)',
                    **fv)
  flags.DEFINE_integer('seed', 0, 'PRNG seed', **fv)


def options(num_scales: int, flag_values: flags.FlagValues = flags.FLAGS) -> sampler.SampleOptions:
  """SampleOptions from the flags; `num_scales` resolves the --iters schedule."""
  f = flag_values
  return sampler.SampleOptions(
      cfg=f.cfg, top_k=f.top_k, top_p=f.top_p, more_smooth=f.more_smooth,
      iters=schedule.parse(f.iters, num_scales), tol=f.tol, solver=f.solver, cache_mode=f.cache)


def generate_args(sample_options: sampler.SampleOptions,
                  flag_values: flags.FlagValues = flags.FLAGS) -> Dict:
  """The keyword arguments of generate.generate, but `out` and `edit`."""
  f = flag_values
  return dict(vae_ckpt=f.vae_ckpt, model_ckpt=f.model_ckpt, classes=f.classes,
              per_class=f.per_class, batch=f.batch, options=sample_options, seed=f.seed, fsdp=f.fsdp)

