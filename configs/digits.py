"""The embedded default: class-conditional VIAR on scikit-learn's 8x8 digits, on a laptop CPU.

    python -m launch.train --config configs/digits.py
    python -m launch.train --config configs/digits.py --config.model.implicit=False   # VAR instead

Prepares the digits dataset (no download), trains a small multi-scale VQ-VAE on the native 8x8
images (latent 4x4, 4 scales 1-2-3-4, 30 tokens), then a small VIAR (1 pre / implicit / 1 post block,
width 128), and writes sample grids with one row per class to `<workdir>/samples_<step>.png`
(shown 4x enlarged). Under 10 minutes on 2 CPU cores.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.workdir = 'out/digits'
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = 'digits'  # 'digits', 'folder' (class subfolders in data_dir), or a TFDS name
  c.data.data_dir = ml_collections.config_dict.placeholder(str)  # default ~/.cache/viar_jax/tfds
  c.data.hflip = False  # digits are not mirror-symmetric
  # False: tokenizer and transformer train on the exact 8x8 pixels, not the reference augmentation,
  # which resamples every pixel of these tiny images (resize 8 -> 9 px, crop 8): the tokenizer's
  # reconstructions went from digits-FID 73.6 to 6.2 with this alone.
  c.data.augment = False
  # grain: worker processes decoding batches (0: in the training process), reader threads and
  # records read ahead. Batches reach the device as uint8 and are normalised there.
  c.data.worker_count = 0
  c.data.read_threads = 16
  c.data.prefetch_buffer = 500

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.ckpt = ''  # a launch.convert / earlier tokenizer checkpoint; empty = train one
  c.tokenizer.vqvae = dict(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                           image_size=8, patch_nums=(1, 2, 3, 4))
  # Training recipe (measured on the 1000-digit protocol of viar_jax.eval.tokenizer_quality, whose
  # numbers land in <workdir>/tokenizer/reconstruction_metrics.json): 600 steps of 32 exact digits.
  c.tokenizer.steps = 600
  c.tokenizer.batch_size = 32
  c.tokenizer.lr = 5e-3
  c.tokenizer.l1_weight = 1.0
  c.tokenizer.l2_weight = 1.0
  c.tokenizer.vq_weight = 1.0
  # Grey data (the digits are one channel, repeated to RGB by the loader): the decoder's three output
  # channels are tied (tokenizer_step.tie_output_channels), so reconstructions and samples are grey.
  c.tokenizer.grayscale = True
  # Quantization warm-up (tokenizer_step.quantization_mix): the decoder sees the unquantized latent
  # for the first 150 steps, then codes are mixed in linearly until step 250.
  c.tokenizer.quant_ramp = (150, 250)
  # Codebook care (tokenizer_step.CodebookOptions): usage / perplexity per scale over the last 50
  # steps (logged), the codebook re-initialised by k-means of the residuals at every scale when
  # quantization switches on, dead codes restarted from the batch's residuals every 50 steps.
  c.tokenizer.codebook = ml_collections.ConfigDict(dict(
      window=50, kmeans_step=150, kmeans_iters=10, restart_every=50, restart_until=-1,
      scale_balanced=True))
  c.tokenizer.eval_digits = True  # reconstruction_metrics.json: digits-FID / accuracy / usage
  c.tokenizer.disc_weight = 0.0  # > 0: add a VQGAN-style patch-discriminator loss (off by default)
  c.tokenizer.disc_start_step = 200  # discriminator and adversarial term switch on here
  c.tokenizer.disc_ndf = 32
  c.tokenizer.disc_layers = 1  # 8px images: side // 2^layers - 2 >= 1 allows at most 1 (2x2 logits)
  c.tokenizer.disc_lr = 2e-4  # constant Adam(b1=0.5, b2=0.9)
  # > 0: add perceptual_weight * mean LPIPS (VGG16) to the reconstruction loss (taming uses 1.0).
  # Needs user-supplied weights (never downloaded) and images of >= 16 px, so not these 8px digits.
  c.tokenizer.perceptual_weight = 0.0
  c.tokenizer.lpips_vgg = ''  # torchvision's vgg16-397923af.pth (or an .npz/.safetensors export)
  c.tokenizer.lpips_lin = ''  # lpips package's weights/v0.1/vgg.pth (= taming's vgg_lpips)

  c.model = ml_collections.ConfigDict()
  c.model.depth = 4  # nominal depth: init rescale and drop-path indices
  c.model.embed_dim = 128
  c.model.num_heads = 2
  c.model.num_classes = 10
  c.model.implicit = True
  c.model.pre_depth = 1
  c.model.post_depth = 1
  c.model.no_grad_iters_range = (0, 4)
  c.model.with_grad_iters_range = (1, 3)
  c.model.eval_iters = 4
  c.model.aln_gamma_init = 1e-3
  c.model.cond_drop_rate = 0.1
  c.model.dtype = 'float32'
  c.model.remat = 'none'  # 'dots_saveable' / 'full': recompute the blocks' activations in backward
  # 'auto': cuDNN fused attention on GPUs in bf16, Pallas splash attention on TPUs, XLA otherwise;
  # or 'xla' / 'cudnn' / 'splash' (viar_jax.models.blocks.resolve_attention).
  c.model.attn_implementation = 'auto'

  c.optim = ml_collections.ConfigDict()
  c.optim.batch_size = 64  # global
  c.optim.steps = 800
  c.optim.tblr = 4e-3  # peak lr = tblr * batch / 256 = 1e-3
  c.optim.warmup_steps = 50
  c.optim.schedule = 'lin0'
  c.optim.wpe = 0.1
  c.optim.twd = 0.05
  c.optim.twde = ml_collections.config_dict.placeholder(float)
  c.optim.clip_norm = 2.0
  c.optim.label_smoothing = 0.0
  c.optim.mu_dtype = 'float32'  # AdamW first-moment dtype ('bfloat16' halves its memory)
  # Progressive training (reference --pg/--pg0/--pgwp): > 0 grows the trained scales from pg0 + 1
  # to all over the first pg of the steps (the lr schedule becomes 'lin<pg>'); one compile per stage.
  c.optim.pg = 0.0
  c.optim.pg0 = 1  # the reference default is 4 (of 10 scales)
  c.optim.pg_ramp_steps = ml_collections.config_dict.placeholder(float)  # default: steps / 300

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: all devices not used by fsdp
  c.mesh.fsdp = 1
  c.mesh.replicate_implicit = True

  c.log_every = 50
  c.ckpt_every = 400
  c.ckpt_keep = 2
  c.ckpt_keep_period = ml_collections.config_dict.placeholder(int)
  c.sample_every = 400
  c.sample = ml_collections.ConfigDict()
  # The in-training grid: one row per class, per_class samples each; one compiled sampler, its batch
  # sharded over every device (padded to a multiple of the device count).
  c.sample.classes = tuple(range(10))
  c.sample.per_class = 8
  c.sample.cfg = 1.5
  c.sample.top_k = 0
  c.sample.top_p = 0.0
  return c
