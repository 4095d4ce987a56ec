"""Class-conditional sampling (and editing) from converted VAR / VIAR checkpoints.

    python -m launch.sample --vae_ckpt ckpt/vae --model_ckpt ckpt/viar_d30 --classes 207,360,387 \
        --per_class 8 --cfg 1.5 --top_k 900 --top_p 0.96 --iters 10,2 --out out/samples

Writes `<out>/grid.png` (one row per class), `<out>/images/<class>_<i>.png` and `<out>/samples.npz`
(`arr_0`: uint8 N x H x W x 3 as the ADM evaluator expects, `arr_1`: labels), plus per-scale VIAR
iteration stats in `<out>/stats.json` (viar_jax.sample.generate).

Every device samples, `--batch` images each per call; on several hosts start one process per host
with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (or a cluster JAX detects) and an
`--out` every host sees. Images stream to `<out>/shards/` as they are made; the same command again
resumes a killed run (same images), and a directory of a run with other settings is refused.
`--fsdp n` splits the model's params over groups of n devices when a replica does not fit.

VIAR compute: `--iters n` runs n iterations at every scale, `--iters L,R` ramps linearly from L at the
first scale to R at the last, `--iters a,b,c,...` (one entry per scale) is explicit;
`--cache final_iterate` with `--tol` / `--solver anderson` exits early per sample. Editing:
`--edit photo.jpg --edit_box y0,y1,x0,x1` (relative units) regenerates the box (`--edit_mode
inpaint`) or everything but the box (`outpaint`), for the given classes (use the null class,
num_classes, for pure in/out-painting); `--edit_mask mask.png` (white = regenerate, the photo's size)
replaces the box. PNG / JPEG sources of any size are resized and centre-cropped as the reference
evaluates; .npy / .npz sources must be at the model's resolution (viar_jax.sample.edit).
"""
from absl import app, flags

from viar_jax import cli, runtime
from viar_jax.sample import edit, generate, pair, sampling_flags

sampling_flags.define()
_EDIT = flags.DEFINE_string('edit', None, 'source image for editing: PNG / JPEG of any size, or '
                            '.npy/.npz uint8 (R, R, 3) or float [-1, 1]')
_EDIT_MASK = flags.DEFINE_string('edit_mask', None, 'mask image (the edit image\'s size), white = '
                                 'regenerate; instead of --edit_box')
_EDIT_BOX = flags.DEFINE_list('edit_box', ['0.25', '0.75', '0.25', '0.75'],
                              'y0,y1,x0,x1 in relative units')
_EDIT_MODE = flags.DEFINE_enum('edit_mode', 'inpaint', ['inpaint', 'outpaint'],
                               'regenerate inside / outside the box')
_OUT = flags.DEFINE_string('out', 'out/samples', 'output directory')


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.vae_ckpt or not f.model_ckpt:
    raise app.UsageError('--vae_ckpt and --model_ckpt are required (see launch.convert)')
  vae_cfg, cfg = pair.configs(f.vae_ckpt, f.model_ckpt)
  runtime.initialize()  # several processes: each samples and writes its rows
  source = None
  if _EDIT_MASK.value and not _EDIT.value:
    raise app.UsageError('--edit_mask needs --edit (the image to edit)')
  if _EDIT.value:
    image, image_hw = edit.load_image(_EDIT.value, vae_cfg.image_size)
    n = cfg.patch_nums[-1]
    mask = (edit.mask_from_image(_EDIT_MASK.value, image_hw, vae_cfg.image_size, n)
            if _EDIT_MASK.value else edit.keep_mask(_EDIT_BOX.value, _EDIT_MODE.value, n))
    source = (image, mask)
  options = sampling_flags.options(len(cfg.patch_nums))
  generate.generate(**sampling_flags.generate_args(options), out=_OUT.value, edit=source)


if __name__ == '__main__':
  cli.run(main)
