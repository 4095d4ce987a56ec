"""Shared ImageNet-256 recipe of VAR / VIAR (VAR.md §4, VIAR.md §2); the model files pick from it.

Data: ImageNet prepared by the user as a TFDS array_record dataset (`imagenet2012`, read with
`tfds.data_source`, no TensorFlow needed), or `folder` with --config.data.data_dir=<root of class
folders>. The frozen tokenizer is the converted `vae_ch160v4096z32.pth` (launch.convert).
"""
import ml_collections

from configs import digits


def imagenet_config(*, depth, batch_size, epochs, tblr, aln_gamma_init, wpe, twde=None,
                    implicit=False, pre_depth=5, post_depth=5, shared_aln=False, image_size=256):
  c = digits.get_config()
  c.workdir = f'out/{"viar" if implicit else "var"}_d{depth}'
  c.data.name = 'imagenet2012'
  c.data.image_size = image_size
  c.tokenizer.ckpt = 'ckpt/vae'  # python -m launch.convert --src vae_ch160v4096z32.pth --dst ckpt/vae
  c.model = ml_collections.ConfigDict(dict(
      depth=depth, embed_dim=64 * depth, num_heads=depth, num_classes=1000, implicit=implicit,
      pre_depth=pre_depth, post_depth=post_depth, shared_aln=shared_aln,
      no_grad_iters_range=(0, 10), with_grad_iters_range=(1, 12), eval_iters=10,
      aln_gamma_init=aln_gamma_init, cond_drop_rate=0.1, dtype='bfloat16'))
  steps_per_epoch = 1_281_167 // batch_size
  c.optim.batch_size = batch_size
  c.optim.steps = epochs * steps_per_epoch
  c.optim.tblr = tblr
  c.optim.warmup_steps = max(1, epochs // 50) * steps_per_epoch  # wp = ep/50 epochs
  c.optim.wpe = wpe
  c.optim.twd = 0.05
  c.optim.twde = twde
  c.optim.pg0 = 4
  c.mesh.fsdp = 8
  c.log_every, c.ckpt_every, c.sample_every = 100, 5000, 10000
  c.ckpt_keep, c.ckpt_keep_period = 3, 50_000
  c.sample = ml_collections.ConfigDict(dict(per_class=1, cfg=1.5, top_k=900, top_p=0.96))
  return c
