"""VIAR-d16, a smaller variant (not released): d16 width, 3 pre / implicit / 3 post, VAR-d16's recipe.

    python -m launch.train --config configs/viar_d16.py --config.data.data_dir=<tfds data dir>

Needs ImageNet as a TFDS array_record dataset and the converted tokenizer in ckpt/vae (see
configs/imagenet.py). Expect the reference's numbers only at full scale (multi-host TPU/GPU).
"""
from configs import imagenet


def get_config(arg=None):
  del arg
  return imagenet.imagenet_config(depth=16, batch_size=768, epochs=200, tblr=1e-4, aln_gamma_init=1e-3, wpe=0.1, implicit=True, pre_depth=3, post_depth=3)
