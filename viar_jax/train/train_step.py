"""The VAR / VIAR training step: pure functions over an explicit `TrainState`.

    state = create_train_state(model, optimizer, key, batch_size)
    state, metrics = train_step(state, images_BHWC, labels_B, model=..., vae=..., vae_params=...,
                                optimizer=..., label_smoothing=0.0)

The frozen VQ-VAE tokenizes the images inside the step (fp32): ground-truth tokens (B, L) and the
teacher-forcing input (B, L - 1, Cvae). The loss is the mean token cross-entropy (the reference's
uniform 1/L weights). Randomness (cond-drop, drop-path, VIAR's K and m) comes from the state's key
folded with the step, so a step is a pure function of (state, batch).
"""
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from viar_jax.data import transforms
from viar_jax.models import factory, transformer, vqvae
from viar_jax.train import progressive


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 ()
  params: Any
  opt_state: Any
  rng: jax.Array  # PRNG key data (uint32), folded with the step every step


def create_train_state(model: transformer.Transformer, optimizer: optax.GradientTransformation,
                       key: jax.Array, params=None) -> TrainState:
  """Fresh state; `params` (e.g. converted weights) replaces the random init when given."""
  init_key, rng = jax.random.split(key)
  if params is None:
    params = factory.init_params(model.config, init_key)
  return TrainState(step=jnp.int32(0), params=params, opt_state=optimizer.init(params),
                    rng=jax.random.key_data(rng))


def tokenize(vae: vqvae.VQVAE, vae_params, images_BHWC):
  """Images (uint8 pixels, or float32 in [-1, 1]) -> (ground-truth tokens (B, L), teacher-forcing
  input (B, L - 1, Cvae)), no gradient."""
  images_BHWC = transforms.to_model_range(images_BHWC)
  variables = {'params': jax.lax.stop_gradient(vae_params)}
  idx, x_BLCv = vae.apply(variables, images_BHWC, method=vqvae.VQVAE.img_to_idx_and_var_input)
  return jnp.concatenate(idx, axis=1), jax.lax.stop_gradient(x_BLCv)


def token_metrics(logits_BLV, gt_BL, last_scale_len: int, label_smoothing: float = 0.0,
                  weights_L=None):
  """Loss (label-smoothed CE, the objective) and plain CE / accuracy overall and on the last scale.

  The loss is the token mean, or sum_l weights_L[l] · CE_l when per-token weights are given
  (progressive training); both are averaged over the batch.
  """
  logp = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)
  nll_BL = -jnp.take_along_axis(logp, gt_BL[..., None], axis=-1)[..., 0]
  loss_BL = (1 - label_smoothing) * nll_BL - label_smoothing * jnp.mean(logp, axis=-1)
  correct_BL = (jnp.argmax(logits_BLV, -1) == gt_BL).astype(jnp.float32)
  loss = jnp.mean(loss_BL) if weights_L is None else jnp.mean(jnp.sum(loss_BL * weights_L, -1))
  return {'loss': loss, 'ce': jnp.mean(nll_BL), 'acc': jnp.mean(correct_BL),
          'ce_last': jnp.mean(nll_BL[:, -last_scale_len:]),
          'acc_last': jnp.mean(correct_BL[:, -last_scale_len:])}


def stage_weights(config: transformer.TransformerConfig, stage: progressive.Stage, step):
  """(e,) loss weights of a progressive stage's tokens: 1/L, the newest scale's times its ramp."""
  begin, end = config.scale_bounds[stage.num_scales - 1]
  newest = progressive.newest_scale_weight(stage, step)
  return jnp.where(jnp.arange(end) >= begin, newest, 1.0) / config.seq_len


def train_step(state: TrainState, images_BHWC, labels_B, *, model: transformer.Transformer,
               vae: vqvae.VQVAE, vae_params, optimizer: optax.GradientTransformation,
               label_smoothing: float = 0.0, stage: Optional[progressive.Stage] = None
               ) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One optimisation step; returns the new state and scalar metrics (loss, acc, grad_norm, ...).

  `stage` (progressive training) trains the scale prefix [0, stage.num_scales) with the
  reference's weights; the last-scale metrics then describe the stage's newest scale.
  """
  c = model.config
  gt_BL, x_BLCv = tokenize(vae, vae_params, images_BHWC)
  num_scales = len(c.patch_nums) if stage is None else stage.num_scales
  begin, end = c.scale_bounds[num_scales - 1]
  weights_L = None
  if num_scales < len(c.patch_nums):
    gt_BL, x_BLCv = gt_BL[:, :end], x_BLCv[:, :end - c.patch_nums[0]**2]
    weights_L = stage_weights(c, stage, state.step)
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  dropout_key, jfb_key = jax.random.split(key)

  def loss_fn(params):
    logits, sown = model.apply({'params': params}, labels_B, x_BLCv, deterministic=False,
                               rngs={'dropout': dropout_key, 'jfb': jfb_key},
                               mutable=['intermediates'])
    metrics = token_metrics(logits, gt_BL, end - begin, label_smoothing, weights_L)
    if 'jfb_iters' in sown.get('intermediates', {}):  # VIAR: the K and m this step ran
      (k_m,) = sown['intermediates']['jfb_iters']
      metrics.update(no_grad_iters=k_m[0], with_grad_iters=k_m[1])
    return metrics['loss'], metrics

  grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics['grad_norm'] = optax.tree.norm(grads)
  metrics['param_norm'] = optax.tree.norm(params)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, images_BHWC, labels_B, *, model: transformer.Transformer, vae: vqvae.VQVAE,
              vae_params) -> Dict[str, jax.Array]:
  """Deterministic teacher-forced metrics (no cond-drop; VIAR at eval_iters)."""
  gt_BL, x_BLCv = tokenize(vae, vae_params, images_BHWC)
  logits = model.apply({'params': params}, labels_B, x_BLCv)
  return token_metrics(logits, gt_BL, model.config.patch_nums[-1]**2)


class ShardedStep(NamedTuple):
  """`sharded_train_step`'s result: the jitted step and create functions and their shardings."""
  step: Callable  # (state, vae_params, images_BHWC, labels_B) -> (state, metrics); state donated
  create: Callable  # key -> TrainState, sharded
  state_sharding: Any
  batch_sharding: NamedSharding
  replicated: NamedSharding  # the tokenizer's params (and any other whole-on-every-device input)


def sharded_train_step(model, vae, optimizer, mesh, *, replicate=(),
                       label_smoothing: float = 0.0,
                       stage: Optional[progressive.Stage] = None) -> ShardedStep:
  """`train_step` jitted for a mesh: state sharded by `sharding.tree_specs`, batch over (data, fsdp),
  the tokenizer's params replicated (an argument, not a closure: no constants in the program, and
  it compiles from shapes alone), the state donated; `stage` makes it the step of one
  progressive-training stage."""
  from viar_jax.train import sharding  # pylint: disable=import-outside-toplevel
  create = lambda key: create_train_state(model, optimizer, key)
  shapes = jax.eval_shape(create, jax.random.PRNGKey(0))
  state_sharding = sharding.named_shardings(
      sharding.tree_specs(shapes, mesh, replicate=replicate), mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  replicated = NamedSharding(mesh, PartitionSpec())
  step = jax.jit(
      lambda s, vp, x, y: train_step(s, x, y, model=model, vae=vae, vae_params=vp,
                                     optimizer=optimizer, label_smoothing=label_smoothing,
                                     stage=stage),
      in_shardings=(state_sharding, replicated, batch_sharding, batch_sharding),
      out_shardings=(state_sharding, None), donate_argnums=(0,))
  return ShardedStep(step, jax.jit(create, out_shardings=state_sharding), state_sharding,
                     batch_sharding, replicated)
