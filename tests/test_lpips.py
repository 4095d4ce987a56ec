"""LPIPS (VGG16): strict weight conversion, metric properties, a numpy reference forward, and the
perceptual term of tokenizer training. Weights are random, fabricated from `lpips.key_spec()`."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import digits
from viar_jax.eval import lpips
from viar_jax.io import convert
from viar_jax.models import discriminator
from viar_jax.train import tokenizer_loop, tokenizer_step
from viar_jax.train.train_step import TrainState


def compile_fast(fn, *args):
  """jit-compiles `fn` for `args` with LLVM's optimisations off: on CPU they take most of VGG16's
  compile time (measured 8 s -> 3.5 s for its gradient) and buy nothing for a test's few calls."""
  return jax.jit(fn).lower(*args).compile(compiler_options={'xla_backend_optimization_level': 0})


# 24x32: non-square, and VGG16's pools take it to 12x16, 6x8, 3x4, then 1x2 (floor of an odd side).
H, W = 24, 32


def fabricate_state_dict(seed=0):
  """Random weights in the PyTorch layouts: He-scaled convs (activations stay O(1) through 13
  layers), small biases, non-negative linear layers (the released ones are clamped to >= 0)."""
  rng = np.random.default_rng(seed)
  sd = {}
  for key, shape in lpips.key_spec().items():
    if key.startswith('lin'):
      sd[key] = np.abs(rng.standard_normal(shape)).astype(np.float32) / shape[1]
    elif key.endswith('.weight'):
      sd[key] = (rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[1:]))).astype(np.float32)
    else:
      sd[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
  return sd


@pytest.fixture(scope='module')
def weight_files(tmp_path_factory):
  """(vgg .npz like torchvision's file, lin .npz like lpips' vgg.pth, the combined state dict)."""
  sd = fabricate_state_dict()
  d = tmp_path_factory.mktemp('lpips')
  vgg = {k: v for k, v in sd.items() if k.startswith('features.')}
  vgg['classifier.0.bias'] = np.zeros(4096, np.float32)  # torchvision's head: must be ignored
  np.savez(d / 'vgg16.npz', **vgg)
  np.savez(d / 'lin.npz', **{k: v for k, v in sd.items() if k.startswith('lin')})
  return str(d / 'vgg16.npz'), str(d / 'lin.npz'), sd


@pytest.fixture(scope='module')
def params(weight_files):
  vgg, lin, _ = weight_files
  return lpips.load_params(vgg, lin)


# --- (a) weights -----------------------------------------------------------------------------------


def test_key_spec_is_vgg16_features_and_five_linear_layers():
  spec = lpips.key_spec()
  convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
  assert len(spec) == 2 * len(convs) + 5
  assert spec['features.0.weight'] == (64, 3, 3, 3)
  assert spec['features.28.bias'] == (512,)
  assert spec['features.10.weight'] == (256, 128, 3, 3)
  for k, c in enumerate((64, 128, 256, 512, 512)):
    assert spec[f'lin{k}.model.1.weight'] == (1, c, 1, 1)
  assert {f'features.{i}.{p}' for i in convs for p in ('weight', 'bias')} < set(spec)


def test_strict_conversion_round_trip(weight_files, params):
  _, _, sd = weight_files
  np.testing.assert_array_equal(params['features_7']['kernel'],
                                np.transpose(sd['features.7.weight'], (2, 3, 1, 0)))
  np.testing.assert_array_equal(params['features_7']['bias'], sd['features.7.bias'])
  np.testing.assert_array_equal(params['lin3']['model_1']['kernel'][0, 0, :, 0],
                                sd['lin3.model.1.weight'][0, :, 0, 0])
  assert jax.tree.structure(params) == jax.tree.structure(lpips.abstract_params())


def test_whole_lpips_module_state_dict_is_accepted(weight_files, params):
  _, _, sd = weight_files
  slice_of = {i: s for s, convs in enumerate(lpips.VGG16_SLICES, 1) for i, _ in convs}
  module_sd = {(f'net.slice{slice_of[int(k.split(".")[1])]}.{k[len("features."):]}'
                if k.startswith('features.') else k): v for k, v in sd.items()}
  module_sd['scaling_layer.shift'] = np.array(lpips.SHIFT, np.float32).reshape(1, 3, 1, 1)
  module_sd['scaling_layer.scale'] = np.array(lpips.SCALE, np.float32).reshape(1, 3, 1, 1)
  converted = lpips.convert_state_dict(module_sd)
  jax.tree.map(np.testing.assert_array_equal, converted, params)


@pytest.mark.parametrize('edit, message', [
    (lambda sd: sd.pop('features.12.bias'), 'missing key features.12.bias'),
    (lambda sd: sd.pop('lin4.model.1.weight'), 'missing key lin4.model.1.weight'),
    (lambda sd: sd.update({'features.30.weight': np.zeros((1,))}), 'unknown key features.30.weight'),
    (lambda sd: sd.update({'lin2.model.1.weight': np.zeros((1, 128, 1, 1))}),
     r'shape mismatch lin2.model.1.weight: checkpoint \(1, 128, 1, 1\) vs model \(1, 256, 1, 1\)'),
    (lambda sd: sd.update({'features.0.weight': np.zeros((64, 3, 5, 5))}),
     'shape mismatch features.0.weight'),
    (lambda sd: sd.update({'scaling_layer.shift': np.zeros(3)}), 'scaling_layer.shift'),
])
def test_bad_state_dicts_raise_naming_the_key(weight_files, edit, message):
  sd = dict(weight_files[2])
  edit(sd)
  with pytest.raises(convert.CheckpointMismatchError, match=message):
    lpips.convert_state_dict(sd)


def test_missing_files_raise_saying_where_they_come_from(weight_files, tmp_path):
  vgg, lin, _ = weight_files
  with pytest.raises(FileNotFoundError, match='vgg16-397923af.pth'):
    lpips.load_params(str(tmp_path / 'nope.pth'), lin)
  with pytest.raises(FileNotFoundError, match='lpips/weights/v0.1/vgg.pth'):
    lpips.load_params(vgg, str(tmp_path / 'nope.pth'))
  with pytest.raises(ValueError, match='no VGG16 trunk weights'):
    lpips.load_params('', lin)
  with pytest.raises(ValueError, match='no LPIPS linear-layer file'):
    lpips.load_params(vgg, '')
  with pytest.raises(convert.CheckpointMismatchError, match='in both'):
    lpips.load_params(vgg, vgg)


def test_too_small_or_mismatched_images_raise(params):
  x = jnp.zeros((1, 8, 8, 3))
  with pytest.raises(ValueError, match='at least 16x16'):
    jax.eval_shape(lpips.lpips_distance, params, x, x)
  with pytest.raises(ValueError, match='one shape'):
    jax.eval_shape(lpips.lpips_distance, params, jnp.zeros((1, 16, 16, 3)),
                   jnp.zeros((2, 16, 16, 3)))


# --- (b, c) properties and the numpy reference ------------------------------------------------------


def numpy_lpips(sd, x, y):
  """The reference forward, written from lpips.py / torchvision's VGG16 in float64 on torch-layout
  weights: NHWC here, convs as 9 shifted matmuls, pools by reshaping."""
  def conv3x3_relu(h, w, b):  # out[o] = b[o] + sum_{c,i,j} w[o, c, i, j] x[c, y + i - 1, x + j - 1]
    n, hh, ww, c = h.shape
    p = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = b + sum(p[:, i:i + hh, j:j + ww].reshape(-1, c) @ w[:, :, i, j].T
                  for i in range(3) for j in range(3))
    return np.maximum(out, 0).reshape(n, hh, ww, -1)

  def trunk(h):
    h = (h - np.array(lpips.SHIFT)) / np.array(lpips.SCALE)
    taps = []
    for layers in ([0, 2], ['M', 5, 7], ['M', 10, 12, 14], ['M', 17, 19, 21], ['M', 24, 26, 28]):
      for layer in layers:
        if layer == 'M':  # MaxPool2d(2, 2): floor
          n, hh, ww, c = h.shape
          h = h[:, :hh // 2 * 2, :ww // 2 * 2].reshape(n, hh // 2, 2, ww // 2, 2, c).max((2, 4))
        else:
          h = conv3x3_relu(h, sd[f'features.{layer}.weight'].astype(np.float64),
                           sd[f'features.{layer}.bias'].astype(np.float64))
      taps.append(h)
    return taps

  unit = lambda f: f / (np.sqrt(np.sum(f**2, axis=-1, keepdims=True)) + 1e-10)
  total, n = 0.0, len(x)
  for k, f in enumerate(trunk(np.concatenate([x, y]).astype(np.float64))):
    lin = sd[f'lin{k}.model.1.weight'][0, :, 0, 0].astype(np.float64)
    total = total + ((unit(f[:n]) - unit(f[n:]))**2 @ lin).mean(axis=(1, 2))
  return total


def test_properties_and_numpy_reference(weight_files, params):
  rng = np.random.default_rng(1)
  a, b = (rng.uniform(-1, 1, (1, H, W, 3)).astype(np.float32) for _ in range(2))
  x, y = np.concatenate([a, b, a]), np.concatenate([b, a, a])  # pairs (a, b), (b, a), (a, a)
  d = np.asarray(compile_fast(lpips.lpips_distance, params, x, y)(params, x, y))
  assert d.shape == (3,)
  assert d[0] > 1e-3, d  # different images
  np.testing.assert_allclose(d[1], d[0], rtol=1e-6)  # symmetric
  np.testing.assert_allclose(d[2], 0.0, atol=1e-7)  # d(x, x) = 0
  # The reference on the first pair only (float64 VGG16 in numpy costs ~0.3 s per image).
  np.testing.assert_allclose(d[:1], numpy_lpips(weight_files[2], x[:1], y[:1]), rtol=1e-4)


def test_normalisation_gradient_is_finite_at_an_all_zero_position():
  g = jax.jit(jax.grad(lambda f: jnp.sum(lpips._normalize_channels(f))))(jnp.zeros((1, 2, 2, 4)))
  assert np.all(np.isfinite(np.asarray(g)))


# --- (b, d) the perceptual term in tokenizer training, and its gradient wrt the images --------------


class _Decoder(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Conv(3, (1, 1), kernel_init=nn.initializers.zeros, name='conv_out')(x)


class StubVAE(nn.Module):
  """Stands in for `vqvae.VQVAE` (same outputs: reconstruction, VQ loss, code hits) so the step
  compiles in seconds (a real VQ-VAE step adds ~20 s of CPU compile, none of it LPIPS-specific):
  x̂ = x + delta + decoder.conv_out(x). `delta` is a per-pixel shift, so the gradient wrt it is the
  loss's gradient wrt the reconstructed images; conv_out is where `gan_train_step` takes λ.
  Built by `_stub_state`, not `init`."""

  @nn.compact
  def __call__(self, x):
    delta = self.param('delta', nn.initializers.zeros, x.shape)
    return x + delta + _Decoder(name='decoder')(x), jnp.float32(0.0), jnp.ones((2, 4), jnp.int32)


def _stub_state(optimizer, images):
  # StubVAE's params built directly: even a jitted init of it costs ~2 s of compile here.
  delta = 0.2 * np.random.default_rng(3).standard_normal(images.shape)
  params = {'delta': jnp.asarray(delta, jnp.float32),
            'decoder': {'conv_out': {'kernel': jnp.zeros((1, 1, 3, 3)), 'bias': jnp.zeros(3)}}}
  return TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params),
                    rng=jax.random.key_data(jax.random.PRNGKey(1)))


def test_tokenizer_step_with_perceptual_loss_and_its_image_gradient(params):
  # Only the perceptual term (no L1/L2, no VQ loss) and SGD(1): the update is minus the gradient of
  # perceptual_weight * mean LPIPS(x, x̂) wrt x̂.
  optimizer = optax.sgd(1.0)
  images = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (1, 16, 16, 3)), jnp.float32)
  state = _stub_state(optimizer, images)
  step = compile_fast(lambda s, x, lp: tokenizer_step.train_step(
      s, x, vae=StubVAE(), optimizer=optimizer, l1_weight=0.0, l2_weight=0.0,
      perceptual_weight=0.5, lpips_params=lp), state, images, params)
  new, m = step(state, images, params)
  assert all(np.isfinite(float(v)) for v in m.values()), m
  assert float(m['perceptual']) > 0
  np.testing.assert_allclose(m['loss'], 0.5 * m['perceptual'], rtol=1e-6)
  assert int(new.step) == 1
  # The LPIPS params are an argument, not state: the optimizer holds the VQ-VAE's params only.
  assert jax.tree.structure(new.opt_state) == jax.tree.structure(state.opt_state)

  grad = np.asarray(state.params['delta'] - new.params['delta'])  # d loss / d x̂
  assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
  # Along the gradient's own direction the loss must grow at the rate |grad|: a forward difference
  # (the step reports the loss before its update) checks the gradient's size and direction.
  v = grad / np.linalg.norm(grad)
  eps = 3e-3
  moved = state.replace(params={**state.params, 'delta': state.params['delta'] + eps * v})
  fd = (float(step(moved, images, params)[1]['loss']) - float(m['loss'])) / eps
  np.testing.assert_allclose(fd, np.linalg.norm(grad), rtol=5e-3)  # measured: 3e-4


def test_steps_check_the_perceptual_setup_and_the_gan_step_traces(params):
  optimizer = optax.adam(1e-3)
  images = jnp.zeros((2, 16, 16, 3))
  state = jax.eval_shape(lambda: _stub_state(optimizer, images))
  with pytest.raises(ValueError, match='needs LPIPS params'):
    tokenizer_step.train_step(state, images, vae=StubVAE(), optimizer=optimizer,
                                 perceptual_weight=0.5)
  with pytest.raises(ValueError, match='at least 16x16'):  # checked before anything runs
    tokenizer_step.train_step(state, jnp.zeros((2, 8, 8, 3)), vae=StubVAE(),
                                 optimizer=optimizer, perceptual_weight=0.5, lpips_params=params)
  with pytest.raises(ValueError, match='must be >= 0'):
    tokenizer_step.train_step(state, images, vae=StubVAE(), optimizer=optimizer,
                                 perceptual_weight=-1.0)
  # The GAN step carries the term too (traced only: jax.eval_shape compiles nothing).
  disc = discriminator.PatchDiscriminator(ndf=8, n_layers=1)

  def gan_state():
    disc_params = disc.init(jax.random.PRNGKey(2), images)['params']
    return tokenizer_step.GanTrainState(vae=_stub_state(optimizer, images),
                                           disc_params=disc_params,
                                           disc_opt_state=optimizer.init(disc_params))

  _, m = jax.eval_shape(functools.partial(
      tokenizer_step.gan_train_step, vae=StubVAE(), disc=disc, vae_optimizer=optimizer,
      disc_optimizer=optimizer, perceptual_weight=0.5), jax.eval_shape(gan_state), images,
                        lpips_params=lpips.abstract_params())
  assert 'perceptual' in m and 'adaptive_weight' in m


def test_launch_checks_the_perceptual_setup_before_any_compute(weight_files, tmp_path):
  c = digits.get_config()
  c.tokenizer.perceptual_weight = 1.0
  with pytest.raises(ValueError, match='lpips_vgg.*vgg16-397923af.pth.*lpips_lin'):
    tokenizer_loop.train(c, tmp_path / 'tok')
  vgg, lin, _ = weight_files
  c.tokenizer.update(lpips_vgg=vgg, lpips_lin=lin)
  with pytest.raises(ValueError, match='at least 16x16'):  # the digits config's 8px images
    tokenizer_loop.train(c, tmp_path / 'tok')
  c.tokenizer.lpips_vgg = str(tmp_path / 'missing.pth')
  c.tokenizer.vqvae['image_size'], c.tokenizer.vqvae['patch_nums'] = 16, (1, 2, 4, 8)
  with pytest.raises(FileNotFoundError, match='LPIPS VGG16 file not found'):
    tokenizer_loop.train(c, tmp_path / 'tok')
  assert not (tmp_path / 'tok').exists()  # nothing was written or trained
  c.tokenizer.perceptual_weight = 0.0  # off: no files needed
  assert tokenizer_loop.load_perceptual(c.tokenizer, 8) is None
