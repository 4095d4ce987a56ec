"""ImageNet-256 VAR / VIAR with the reference's recipes (VAR.md §4, VIAR.md §2), one preset each.

    python -m launch.train --config configs/imagenet.py:var_d16 --config.data.data_dir=<tfds data dir>
    python -m launch.train --config configs/imagenet.py:viar_d30 --config.data.data_dir=<tfds data dir>

Presets: var_d16, var_d20, var_d24, var_d30, viar_d30 and viar_d16 (a smaller VIAR, not released).
Architectures and recipes (batch, epochs, tblr, wpe, final weight decay) come from the one table in
viar_jax/io/released.py.

Data: ImageNet prepared by the user as a TFDS array_record dataset (`imagenet2012`, read with
`tfds.data_source`, no TensorFlow needed), or `folder` with --config.data.data_dir=<root of class
folders>. The frozen tokenizer is the converted `vae_ch160v4096z32.pth`:
`python -m launch.convert --src vae_ch160v4096z32.pth --dst ckpt/vae`. Expect the reference's
numbers only at full scale (multi-host TPU/GPU).
"""
import dataclasses

import ml_collections

from configs import digits
from viar_jax.io import released

# config.model keys (overridable from the command line); the tokenizer supplies patch_nums,
# vocab_size and z_channels.
MODEL_KEYS = ('depth', 'embed_dim', 'num_heads', 'num_classes', 'implicit', 'pre_depth', 'post_depth',
              'shared_aln', 'no_grad_iters_range', 'with_grad_iters_range', 'eval_iters',
              'aln_gamma_init', 'cond_drop_rate', 'remat', 'attn_implementation')


def get_config(preset: str = None) -> ml_collections.ConfigDict:
  """`preset` is one of released.RECIPES, given after the file name: configs/imagenet.py:var_d16."""
  if preset not in released.RECIPES:
    raise ValueError(f'configs/imagenet.py needs a preset, e.g. configs/imagenet.py:var_d16; got '
                     f'{preset!r}, expected one of {released.RECIPES}')
  model, recipe = released.config(preset), released.recipe(preset)
  c = digits.get_config()
  c.workdir = f'out/{preset}'
  c.data.name = 'imagenet2012'
  c.data.worker_count = 8  # JPEG decode + Lanczos resize of 256 px images: keep them off the trainer
  c.tokenizer.ckpt = 'ckpt/vae'
  c.tokenizer.vqvae = dataclasses.asdict(released.tokenizer_config())  # what an empty ckpt trains
  c.model = ml_collections.ConfigDict({k: getattr(model, k) for k in MODEL_KEYS})
  c.model.dtype = 'bfloat16'
  steps_per_epoch = released.IMAGENET_TRAIN_IMAGES // recipe.batch_size
  c.optim.batch_size = recipe.batch_size
  c.optim.steps = recipe.epochs * steps_per_epoch
  c.optim.tblr = recipe.tblr
  c.optim.warmup_steps = max(1, recipe.epochs // 50) * steps_per_epoch  # wp = ep/50 epochs
  c.optim.wpe = recipe.wpe
  c.optim.twd = 0.05
  c.optim.twde = recipe.twde
  c.optim.pg0 = 4
  c.mesh.fsdp = 8
  c.log_every, c.ckpt_every, c.sample_every = 100, 5000, 10000
  c.ckpt_keep, c.ckpt_keep_period = 3, 50_000
  # The in-training grid: 8 fixed classes (VAR's demo set), one sample each, batch over the mesh.
  c.sample = ml_collections.ConfigDict(dict(classes=(207, 360, 387, 974, 88, 979, 417, 279),
                                            per_class=1, cfg=1.5, top_k=900, top_p=0.96))
  return c
