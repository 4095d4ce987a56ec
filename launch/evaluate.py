"""Image-quality metrics of a samples.npz, or of fresh samples from VAR / VIAR checkpoints.

    # an existing sample file (arr_0: uint8 N x H x W x 3, arr_1: requested labels)
    python -m launch.evaluate --samples out/samples/samples.npz --metrics digits --out out/eval

    # sample first (launch.sample's flags and outputs), then evaluate
    python -m launch.evaluate --vae_ckpt out/digits/tokenizer --model_ckpt out/digits/model \
        --per_class 100 --top_k 0 --top_p 0 --iters 10,2 --metrics digits --out out/eval_digits

    # ADM-evaluator metrics (FID, sFID, IS, precision/recall) with user-supplied Inception weights
    python -m launch.evaluate --samples samples.npz --metrics adm \
        --inception_weights pt_inception-2015-12-05-6726825d.pth \
        --ref_batch VIRTUAL_imagenet256_labeled.npz

    # a 50k-image FID run: every device of every host samples, images stream to <out>/shards/,
    # the same command resumes a killed run (same images, same metrics)
    python -m launch.evaluate --vae_ckpt vae --model_ckpt viar_d30 --per_class 50 --metrics adm \
        --inception_weights pt_inception-2015-12-05-6726825d.pth \
        --ref_batch VIRTUAL_imagenet256_labeled.npz --out out/fid50k

Metrics (`--metrics`, comma-separated): `digits` (class accuracy, digits-FID; 8x8 images) and `adm`
(FID / sFID / IS / precision / recall); see viar_jax.eval.evaluate. The sampling flags (--classes,
--per_class, --batch, --cfg, --top_k, --top_p, --iters, --cache, --tol, --solver, --seed,
--more_smooth) are launch.sample's, with its defaults (note top_k 900 / top_p 0.96, the ImageNet
settings; the digits demo samples with --top_k 0 --top_p 0), and so are its outputs, resume and
multi-host rules. Writes `<out>/metrics.json` (default out/evaluate) and prints a markdown table;
on several processes, process 0 scores.
"""
from absl import app, flags

from viar_jax import cli, runtime
from viar_jax.eval import digits_eval, evaluate
from viar_jax.sample import pair, sampling_flags

sampling_flags.define()
_SAMPLES = flags.DEFINE_string('samples', None, '.npz with arr_0 uint8 (N, H, W, 3) images and arr_1 '
                               'labels; if unset, sample from --vae_ckpt / --model_ckpt')
_METRICS = flags.DEFINE_list('metrics', ['digits'],
                             f'metric groups to compute, of {evaluate.METRICS}')
_INCEPTION_WEIGHTS = flags.DEFINE_string('inception_weights', None,
                                         'FID Inception weights (pytorch-fid .pth / .npz) for adm')
_REF_BATCH = flags.DEFINE_string('ref_batch', None,
                                 'ADM reference batch .npz (images and/or statistics) for adm')
_INCEPTION_BATCH = flags.DEFINE_integer('inception_batch', 100, 'images per Inception call')
_DIGITS_DATA_DIR = flags.DEFINE_string('digits_data_dir', None,
                                       'TFDS dir of the digits dataset (default: its cache)')
_CLASSIFIER_SEED = flags.DEFINE_integer('classifier_seed', 0, 'seed of the cached digits classifier')
_OUT = flags.DEFINE_string('out', 'out/evaluate', 'output directory (samples too, when sampling)')


def main(argv):
  del argv
  f = flags.FLAGS
  runtime.initialize()  # several processes: each samples its rows, process 0 scores
  sample_args = None
  if not _SAMPLES.value:
    if not f.vae_ckpt or not f.model_ckpt:
      raise app.UsageError('give --samples file.npz, or --vae_ckpt and --model_ckpt to sample from')
    _, cfg = pair.configs(f.vae_ckpt, f.model_ckpt)
    sample_args = sampling_flags.generate_args(sampling_flags.options(len(cfg.patch_nums)))
  evaluator = None
  if 'digits' in evaluate.check_metric_names(_METRICS.value) and runtime.is_primary():
    evaluator = digits_eval.get_evaluator(_CLASSIFIER_SEED.value, data_dir=_DIGITS_DATA_DIR.value)
  evaluate.run(_OUT.value, _METRICS.value, samples=_SAMPLES.value, sample_args=sample_args,
               digits_evaluator=evaluator, inception_weights=_INCEPTION_WEIGHTS.value,
               ref_batch=_REF_BATCH.value, inception_batch=_INCEPTION_BATCH.value, seed=f.seed)


if __name__ == '__main__':
  cli.run(main)
