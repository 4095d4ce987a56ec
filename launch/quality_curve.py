"""The quality-compute curve of the digits demo: VIAR iteration schedules against VAR.

    python -m launch.train --config configs/digits.py                                  # out/digits
    python -m launch.train --config configs/digits.py --config.model.implicit=False \
        --config.tokenizer.ckpt=out/digits/tokenizer --workdir out/digits_var
    python -m launch.quality_curve --viar_dir out/digits --var_dir out/digits_var \
        [--per_class 100] [--schedules '1 2 4 6 8 10 10,2'] [--batch 100] [--out out/quality_curve]

One VIAR row per schedule in --schedules (space-separated; each `n` at every scale, `L,R` a linear
ramp, or one count per scale), then a VAR row (none when --var_dir is empty): digits-FID, class
accuracy, images/s and compiled memory. Writes quality_curve.md, .json, .png and grids/ under --out
(viar_jax.eval.quality_curve).
"""
from absl import flags

from viar_jax import cli
from viar_jax.eval import digits_eval, quality_curve

_VIAR_DIR = flags.DEFINE_string('viar_dir', 'out/digits',
                                'VIAR training workdir (model/ and tokenizer/)')
_VAR_DIR = flags.DEFINE_string('var_dir', 'out/digits_var', 'VAR training workdir; empty = no VAR row')
_PER_CLASS = flags.DEFINE_integer('per_class', 100, 'samples per digit (10 classes)')
_SCHEDULES = flags.DEFINE_spaceseplist(
    'schedules', list(quality_curve.DEFAULT_SCHEDULES),
    'VIAR rows, space-separated: n = n iterations at every scale, L,R = a linear ramp, or one '
    'count per scale')
_BATCH = flags.DEFINE_integer('batch', 100, 'images per sampler call (the same for every row)')
_CFG = flags.DEFINE_float('cfg', 1.5, 'classifier-free guidance (ramped over scales)')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'top-k filtering (0 = off)')
_TOP_P = flags.DEFINE_float('top_p', 0.0, 'top-p filtering (0 = off)')
_SEED = flags.DEFINE_integer('seed', 0, 'PRNG seed (the same keys for every row)')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'minimum number of timed sampler calls per row')
_CLASSIFIER_SEED = flags.DEFINE_integer('classifier_seed', 0, 'seed of the cached digits classifier')
_DIGITS_DATA_DIR = flags.DEFINE_string('digits_data_dir', None,
                                       'TFDS dir of the digits dataset (default: its cache)')
_OUT = flags.DEFINE_string('out', 'out/quality_curve', 'output directory')


def main(argv):
  del argv
  evaluator = digits_eval.get_evaluator(_CLASSIFIER_SEED.value, data_dir=_DIGITS_DATA_DIR.value)
  quality_curve.run(_VIAR_DIR.value, _VAR_DIR.value, _OUT.value, per_class=_PER_CLASS.value,
                    schedules=_SCHEDULES.value, batch=_BATCH.value, cfg=_CFG.value,
                    top_k=_TOP_K.value, top_p=_TOP_P.value, seed=_SEED.value,
                    repeats=_REPEATS.value, evaluator=evaluator)


if __name__ == '__main__':
  cli.run(main)
