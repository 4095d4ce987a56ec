"""Fixed-point solvers for z = f(z) and Jacobian-free backprop (JFB) for training implicit blocks.

Nothing here knows about a model: `f` / `step` are plain functions of arrays. States are (B, ...),
the leading axis a batch of independent samples; residuals are per sample, L2 over all other axes.

  solve             no-grad Picard or Anderson iteration under `lax.while_loop`, optional per-sample
                    early stop.
  jfb_fixed_point   training forward: K no-grad iterations, then m differentiated ones (VIAR's JFB).

Per-scale iteration counts of the sampler are in viar_jax.sample.schedule.
"""
from typing import Any, Callable, NamedTuple, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

IntLike = Union[int, jax.Array]  # a Python int or a (traced) int32 scalar
METHODS = ('picard', 'anderson')
HIGHEST = jax.lax.Precision.HIGHEST
_EPS = 1e-12  # keeps the relative residual finite at z = 0


class SolverStats(NamedTuple):
  """What `solve` did. A NamedTuple, hence a pytree that can leave a jitted function.

  iterations: int32 (): loop iterations run, each one evaluation of f on the whole batch.
  iterations_per_sample: int32 (B,): iterations a sample was active in (it froze after the last).
  residual: float32 (B,): ||f(x) - x|| / (||f(x)|| + 1e-12) from the sample's last active
    evaluation; inf if f was never evaluated (max_iters = 0).
  """
  iterations: jax.Array
  iterations_per_sample: jax.Array
  residual: jax.Array


def _check_count(name: str, value: IntLike) -> None:
  """Only Python ints can be checked; a traced count is trusted."""
  if isinstance(value, (int, np.integer)) and value < 0:
    raise ValueError(f'{name} must be >= 0, got {value}')


def _relative_residual(fx, x):
  """(B, ...) x2 -> (B,) float32 ||fx - x|| / (||fx|| + eps), L2 over the non-batch axes."""
  fx = fx.reshape(fx.shape[0], -1).astype(jnp.float32)
  x = x.reshape(x.shape[0], -1).astype(jnp.float32)
  return jnp.linalg.norm(fx - x, axis=1) / (jnp.linalg.norm(fx, axis=1) + _EPS)


def _anderson_mix(xs, fs, num_valid, beta, lam):
  """One type-II Anderson step from a ring buffer of past (x, f(x)), all float32.

  xs, fs: (B, m, D) past inputs and outputs of f; slots >= num_valid are zero and unused.
  Returns (B, D): beta·Σ α_i f(x_i) + (1 - beta)·Σ α_i x_i, where α minimises
  ||Σ α_i (f(x_i) - x_i)||² + ridge subject to Σ α_i = 1. The constraint is the border of the
  (m+1)x(m+1) system [[0, 1ᵀ], [1, GGᵀ/s]] + lam·I, solved per sample as in the "Deep Implicit
  Layers" tutorial, except that the Gram matrix is divided by s, the mean ||f(x_i) - x_i||² of the
  history. With the tutorial's absolute ridge, lam swamps GGᵀ once residuals are small and the step
  decays to averaging the history (slower than Picard near tol=1e-5 in float32); relative to s the
  ridge stays a ridge.
  Unused slots get a zero border and a zero Gram row/column, so their row reads lam·α_i = 0.
  """
  batch, m, _ = xs.shape
  g = fs - xs
  gram = jnp.einsum('bid,bjd->bij', g, g, precision=HIGHEST)
  border = (jnp.arange(m) < num_valid).astype(jnp.float32)
  scale = jnp.einsum('bii,i->b', gram, border) / jnp.maximum(num_valid, 1)
  gram = gram / jnp.maximum(scale, 1e-30)[:, None, None]
  h = jnp.zeros((batch, m + 1, m + 1), jnp.float32)
  h = h.at[:, 0, 1:].set(border).at[:, 1:, 0].set(border).at[:, 1:, 1:].set(gram)
  h = h + lam * jnp.eye(m + 1, dtype=jnp.float32)
  rhs = jnp.zeros((batch, m + 1, 1), jnp.float32).at[:, 0, 0].set(1.0)
  alpha = jnp.linalg.solve(h, rhs)[:, 1:, 0]  # (B, m)
  mix = lambda v: jnp.einsum('bi,bid->bd', alpha, v, precision=HIGHEST)
  return beta * mix(fs) + (1 - beta) * mix(xs)


def solve(f: Callable[[jax.Array], jax.Array], z0: jax.Array, *, max_iters: IntLike,
          tol: Optional[float] = None, method: str = 'picard', anderson_m: int = 5,
          anderson_beta: float = 1.0, anderson_lam: float = 1e-4) -> Tuple[jax.Array, SolverStats]:
  """Solves z = f(z) from z0 without gradients.

  Counting: one iteration = one evaluation of f on the whole batch; at most `max_iters` of them.
    picard:   x_k = z_k (the previous output; z0 at first) and z_{k+1} = f(x_k). With tol=None the
              result is f applied max_iters times, bit for bit what a Python loop gives.
    anderson: x_0 = z0, then x_k mixes the last min(k, anderson_m) pairs (x_i, f(x_i)). With one
              pair the mix is a damped Picard step, so iterations 1 and 2 are the tutorial's two
              warm-up evaluations (it reports k + 2 for its loop index k).
  The returned z is f(x) of the sample's last active iteration (z0 if max_iters = 0). With `tol` a
  sample freezes (z, counters and residual stop changing) at the first iteration whose relative
  residual ||f(x) - x|| / (||f(x)|| + 1e-12) is <= tol; the loop ends when all are frozen. f still
  runs on the whole batch; frozen samples' outputs are discarded. A NaN residual never converges.

  Args:
    f: (B, ...) -> same shape and dtype. May close over params: no gradient reaches them.
    z0: (B, ...) initial state.
    max_iters: Python int or traced int32 scalar (varies under jit without recompiling).
    tol: per-sample relative residual to stop at (a Python number > 0), or None to always run
      max_iters iterations.
    method: 'picard' or 'anderson'.
    anderson_m: history size. anderson_beta: mixing (1 = undamped). anderson_lam: ridge (> 0),
      relative to the mean squared residual of the history (see `_anderson_mix`).

  Returns:
    z (B, ...) stop-gradient'ed, and SolverStats.
  """
  if method not in METHODS:
    raise ValueError(f'unknown fixed-point method {method!r}; expected one of {METHODS}')
  _check_count('max_iters', max_iters)
  if tol is not None and not tol > 0:
    raise ValueError(f'tol must be > 0 (or None), got {tol}')
  if method == 'anderson' and (anderson_m < 1 or not anderson_lam > 0):
    raise ValueError(f'anderson needs anderson_m >= 1 and anderson_lam > 0, got {anderson_m} and '
                     f'{anderson_lam}')

  # The solver is a no-grad phase: its while_loop is never differentiated because nothing it carries
  # has a tangent, even when f closes over live params.
  z0 = jax.lax.stop_gradient(z0)
  f_nograd = lambda x: jax.lax.stop_gradient(f(x))
  batch = z0.shape[0]
  flat_dim = int(np.prod(z0.shape[1:]))
  max_iters = jnp.asarray(max_iters, jnp.int32)

  def propose(k, z, history):
    """The next input of f: (B, ...) like z0."""
    if method == 'picard':
      return z
    xs, fs = history
    mixed = _anderson_mix(xs, fs, jnp.minimum(k, anderson_m), anderson_beta, anderson_lam)
    return jnp.where(k == 0, z, mixed.reshape(z.shape).astype(z.dtype))

  def remember(k, history, x, fx):
    if method == 'picard':
      return history
    xs, fs = history
    slot = k % anderson_m
    flat = lambda v: v.reshape(batch, flat_dim).astype(jnp.float32)
    return xs.at[:, slot].set(flat(x)), fs.at[:, slot].set(flat(fx))

  def body(state):
    k, z, history, active, iters, residual = state
    x = propose(k, z, history)
    fx = f_nograd(x)
    r = _relative_residual(fx, x)
    z = jnp.where(active.reshape((batch,) + (1,) * (z.ndim - 1)), fx, z)
    iters = iters + active.astype(jnp.int32)
    residual = jnp.where(active, r, residual)
    if tol is not None:
      active = active & ~(r <= tol)
    return k + 1, z, remember(k, history, x, fx), active, iters, residual

  def cond(state):
    k, _, _, active, _, _ = state
    return (k < max_iters) & jnp.any(active)

  if method == 'picard':
    history = ()
  else:
    history = (jnp.zeros((batch, anderson_m, flat_dim), jnp.float32),) * 2
  state = (jnp.int32(0), z0, history, jnp.ones((batch,), bool), jnp.zeros((batch,), jnp.int32),
           jnp.full((batch,), jnp.inf, jnp.float32))
  k, z, _, _, iters, residual = jax.lax.while_loop(cond, body, state)
  return jax.lax.stop_gradient(z), SolverStats(k, iters, residual)


def jfb_fixed_point(step: Callable[[Any, jax.Array, Any], jax.Array], params: Any, z0: jax.Array,
                    injection: Any, *, no_grad_iters: IntLike, with_grad_iters: IntLike,
                    max_with_grad_iters: int) -> jax.Array:
  """Jacobian-free backprop forward: K no-grad iterations, then m differentiated ones.

  Phase 1 runs z <- step(sg(params), z, sg(injection)) K times from sg(z0) in a while_loop and
  stop-gradients the result, so neither params nor injection get gradient from it (and the loop is
  never linearized). Phase 2 runs z <- step(params, z, injection) m times with everything live, as a
  fixed-length scan of max_with_grad_iters checkpointed steps where step i runs iff i < m (a
  `lax.cond`, so steps past m cost nothing in the forward, recompute or backward pass). A traced m
  therefore does not recompile; the backward pass stores one carry per scan step and recomputes the
  step, and the skipped steps pass the cotangent through unchanged.

  Args:
    step: (params, z (B, ...), injection) -> z_next like z. Gradients reach params/injection only
      through these explicit arguments; do not close over differentiated values.
    params, injection: pytrees.
    z0: (B, ...) initial state.
    no_grad_iters: K, Python int or traced int32 scalar >= 0.
    with_grad_iters: m, Python int or traced int32 scalar, 0 <= m <= max_with_grad_iters.
    max_with_grad_iters: static Python int >= 0, the scan length.

  Returns:
    z (B, ...) after K + m steps, differentiable through the last m only.
  """
  _check_count('no_grad_iters', no_grad_iters)
  _check_count('with_grad_iters', with_grad_iters)
  if not isinstance(max_with_grad_iters, (int, np.integer)) or max_with_grad_iters < 0:
    raise ValueError(f'max_with_grad_iters must be a Python int >= 0, got {max_with_grad_iters!r}')
  if isinstance(with_grad_iters, (int, np.integer)) and with_grad_iters > max_with_grad_iters:
    raise ValueError(f'with_grad_iters={with_grad_iters} exceeds max_with_grad_iters='
                     f'{max_with_grad_iters}')

  sg = jax.lax.stop_gradient
  frozen_params, frozen_injection = jax.tree.map(sg, params), jax.tree.map(sg, injection)
  z = jax.lax.fori_loop(0, jnp.asarray(no_grad_iters, jnp.int32),
                        lambda _, z: sg(step(frozen_params, z, frozen_injection)), sg(z0))
  z = sg(z)

  # `lax.cond` rather than a select: a step past m is skipped in the forward pass, in its
  # checkpointed recompute and in the backward pass (the cotangent passes through unchanged), so a
  # step with small m costs what it asks for, with one compiled program for every m.
  @jax.checkpoint
  def maybe_step(params, z, injection, apply):
    return jax.lax.cond(apply, lambda: step(params, z, injection).astype(z.dtype), lambda: z)

  m = jnp.asarray(with_grad_iters, jnp.int32)
  z, _ = jax.lax.scan(lambda z, i: (maybe_step(params, z, injection, i < m), None), z,
                      jnp.arange(max_with_grad_iters, dtype=jnp.int32))
  return z


def draw_jfb_iters(key: jax.Array, no_grad_range: Tuple[int, int] = (0, 10),
                   with_grad_range: Tuple[int, int] = (1, 12)) -> Tuple[jax.Array, jax.Array]:
  """(K, m) int32 scalars, each uniform over its inclusive range, from independent halves of key."""
  for name, (lo, hi) in (('no_grad_range', no_grad_range), ('with_grad_range', with_grad_range)):
    if not 0 <= lo <= hi:
      raise ValueError(f'{name} must satisfy 0 <= lo <= hi, got {(lo, hi)}')
  key_k, key_m = jax.random.split(key)
  draw = lambda k, r: jax.random.randint(k, (), r[0], r[1] + 1, dtype=jnp.int32)
  return draw(key_k, no_grad_range), draw(key_m, with_grad_range)

