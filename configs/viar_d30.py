"""VIAR-d30 (770.9M): 5 pre / implicit / 5 post at d30 width, bs 512, 550 epochs, tblr 8e-5, JFB K~U[0,10], m~U[1,12].

    python -m launch.train --config configs/viar_d30.py --config.data.data_dir=<tfds data dir>

Needs ImageNet as a TFDS array_record dataset and the converted tokenizer in ckpt/vae (see
configs/imagenet.py). Expect the reference's numbers only at full scale (multi-host TPU/GPU).
"""
from configs import imagenet


def get_config(arg=None):
  del arg
  return imagenet.imagenet_config(depth=30, batch_size=512, epochs=550, tblr=8e-5, aln_gamma_init=1e-5, wpe=0.01, twde=0.08, implicit=True, pre_depth=5, post_depth=5)
