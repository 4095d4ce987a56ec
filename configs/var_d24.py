"""VAR-d24 (1.0B): bs 768, 350 epochs, tblr 8e-5, alng 1e-4, wpe 0.01.

    python -m launch.train --config configs/var_d24.py --config.data.data_dir=<tfds data dir>

Needs ImageNet as a TFDS array_record dataset and the converted tokenizer in ckpt/vae (see
configs/imagenet.py). Expect the reference's numbers only at full scale (multi-host TPU/GPU).
"""
from configs import imagenet


def get_config(arg=None):
  del arg
  return imagenet.imagenet_config(depth=24, batch_size=768, epochs=350, tblr=8e-5, aln_gamma_init=1e-4, wpe=0.01)
