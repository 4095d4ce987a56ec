"""VAR-d16 (310M), README recipe: bs 768, 200 epochs, alng 1e-3, wpe 0.1.

    python -m launch.train --config configs/var_d16.py --config.data.data_dir=<tfds data dir>

Needs ImageNet as a TFDS array_record dataset and the converted tokenizer in ckpt/vae (see
configs/imagenet.py). Expect the reference's numbers only at full scale (multi-host TPU/GPU).
"""
from configs import imagenet


def get_config(arg=None):
  del arg
  return imagenet.imagenet_config(depth=16, batch_size=768, epochs=200, tblr=1e-4, aln_gamma_init=1e-3, wpe=0.1)
