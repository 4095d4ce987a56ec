"""A fair VIAR-vs-VAR quality-compute study on the digits, in one resumable command.

    python -m launch.study [--out out/study] [--widths 64,128] [--var_depths 1,2,4] \
        [--schedules '1 2 4 8'] [--seeds 0,1,2] [--steps 400] [--per_class 100] [--batch 100] \
        [--tokenizer_ckpt out/digits/tokenizer] [--config configs/digits.py --config.optim.tblr=...]

Trains one shared tokenizer (or uses --tokenizer_ckpt), then VAR at each depth of --var_depths and
VIAR (the config's 1 pre / implicit / 1 post blocks) at each width of --widths, once per seed, all
for --steps steps at the config's batch and lr recipe; samples every run (VAR one row, VIAR one row
per schedule), scores digits-FID and class accuracy, times every row's images/s in this process, and
writes study.md (mean ± std over seeds, training GFLOPs and seconds per run, the verdicts), study.json
and the plots under --out (viar_jax.eval.study). Killed at any point (Ctrl-C, SIGTERM), the same
command resumes: finished runs and evaluations are kept, an interrupted run resumes from its last
checkpoint; only the timing pass is always redone.

How long, on 2 CPU cores shared with other jobs (load average ~8; measured: tokenizer 2 min, one
800-step width-128 run VAR d1 3 min, VAR d4 11 min, VIAR 10 min; evaluation of a VIAR run's 4
rows 1.5 min, of a VAR run 0.5 min): the default (2 widths x (3 VAR depths + VIAR) x 3 seeds = 24
runs of 400 steps) about 90 min, likely half that on idle cores. --var_depths 1,2,4,6 adds VAR at
VIAR's training FLOPs (+~40 min); --steps 800 doubles the training time. A smoke test in a few
minutes: --widths 32 --var_depths 1 --schedules 1 --seeds 0 --steps 20 --per_class 10.
"""
from absl import flags
from ml_collections import config_flags

from viar_jax import cli, runtime
from viar_jax.eval import digits_eval, study

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/digits.py', 'base training config: tokenizer, VIAR blocks, batch, lr recipe')
_OUT = flags.DEFINE_string('out', 'out/study', 'output directory (runs/, tokenizer/, reports)')
_WIDTHS = flags.DEFINE_list('widths', [str(w) for w in study.DEFAULT_WIDTHS],
                            'transformer widths (num_heads = width // 64, at least 1)')
_VAR_DEPTHS = flags.DEFINE_list('var_depths', [str(d) for d in study.DEFAULT_VAR_DEPTHS],
                                'VAR depths (blocks) at every width')
_SCHEDULES = flags.DEFINE_spaceseplist(
    'schedules', list(study.DEFAULT_SCHEDULES),
    'VIAR rows, space-separated: n = n iterations at every scale, L,R = a linear ramp, or one '
    'count per scale')
_SEEDS = flags.DEFINE_list('seeds', [str(s) for s in study.DEFAULT_SEEDS], 'training seeds')
_STEPS = flags.DEFINE_integer('steps', study.DEFAULT_STEPS, 'training steps of every run (equal steps)')
_TRAIN_BATCH = flags.DEFINE_integer('train_batch', None, 'training batch (default: the config\'s)')
_PER_CLASS = flags.DEFINE_integer('per_class', 100, 'samples per digit and row (10 classes)')
_BATCH = flags.DEFINE_integer('batch', 100, 'images per sampler call (every row)')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'timed sampler calls per row (interleaved rounds)')
_CFG = flags.DEFINE_float('cfg', 1.5, 'classifier-free guidance (ramped over scales)')
_SAMPLE_SEED = flags.DEFINE_integer('sample_seed', 0, 'PRNG seed of the samples (every row alike)')
_TOKENIZER_CKPT = flags.DEFINE_string('tokenizer_ckpt', None,
                                      'a trained tokenizer for every run (default: train one)')
_CLASSIFIER_SEED = flags.DEFINE_integer('classifier_seed', 0, 'seed of the cached digits classifier')
_DIGITS_DATA_DIR = flags.DEFINE_string('digits_data_dir', None,
                                       'TFDS dir of the digits dataset (default: its cache)')


def main(argv):
  del argv
  evaluator = digits_eval.get_evaluator(_CLASSIFIER_SEED.value, data_dir=_DIGITS_DATA_DIR.value)
  study.run(_OUT.value, widths=[int(w) for w in _WIDTHS.value],
            var_depths=[int(d) for d in _VAR_DEPTHS.value], viar_schedules=_SCHEDULES.value,
            seeds=[int(s) for s in _SEEDS.value], steps=_STEPS.value, per_class=_PER_CLASS.value,
            batch=_BATCH.value, tokenizer_ckpt=_TOKENIZER_CKPT.value, base_config=_CONFIG.value,
            evaluator=evaluator, train_batch=_TRAIN_BATCH.value, sample_seed=_SAMPLE_SEED.value,
            repeats=_REPEATS.value, cfg=_CFG.value, stop=runtime.Stop())


if __name__ == '__main__':
  cli.run(main)
