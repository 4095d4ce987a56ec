"""Fixed-point solvers and JFB on small explicit maps, checked against numpy and Python unrolls."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from viar_jax.models import solvers

B, D = 3, 16
sg = jax.lax.stop_gradient


def _affine(eigenvalues, seed=0):
  """A symmetric (D, D) with the given spectrum, b (B, D), and the exact fixed points z* (B, D)."""
  rng = np.random.default_rng(seed)
  q, _ = np.linalg.qr(rng.normal(size=(D, D)))
  a = (q * eigenvalues) @ q.T
  b = rng.normal(size=(B, D))
  z_star = np.linalg.solve(np.eye(D) - a, b.T).T
  return a.astype(np.float32), b.astype(np.float32), z_star.astype(np.float32)


def _tanh_map(seed=0):
  rng = np.random.default_rng(seed)
  w = jnp.asarray(rng.normal(size=(D, D)) / 4, jnp.float32)
  x = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
  return w, x


def test_picard_and_anderson_reach_the_affine_fixed_point():
  a, b, z_star = _affine(np.linspace(-0.9, 0.9, D))  # spectral norm 0.9
  f = lambda z: z @ a.T + b
  out = {}
  for method in solvers.METHODS:
    z, stats = solvers.solve(f, jnp.zeros((B, D)), max_iters=1000, tol=1e-6, method=method)
    assert np.all(stats.residual <= 1e-6) and stats.iterations < 1000
    np.testing.assert_allclose(z, z_star, atol=1e-4)
    out[method] = z
  np.testing.assert_allclose(out['picard'], out['anderson'], atol=1e-4)


def test_anderson_needs_far_fewer_iterations_when_ill_conditioned():
  a, b, _ = _affine(np.linspace(0.0, 0.99, D))
  f = lambda z: z @ a.T + b
  iterations = {}
  for method in solvers.METHODS:
    _, stats = solvers.solve(f, jnp.zeros((B, D)), max_iters=3000, tol=1e-5, method=method)
    assert np.all(stats.residual <= 1e-5)
    iterations[method] = int(stats.iterations)
  # Measured: picard 689, anderson 43. Picard is held to the 0.99 eigenvalue: ~log(1e-5)/log(0.99).
  assert iterations['anderson'] < iterations['picard'] / 4, iterations


@pytest.mark.parametrize('method', solvers.METHODS)
def test_converged_samples_freeze_while_others_iterate(method):
  # Sample 0 starts at its fixed point, sample 1 contracts fast, sample 2 slowly.
  a, b, z_star = _affine(np.linspace(-0.9, 0.9, D))
  rate = jnp.asarray([0.9, 0.2, 1.0])[:, None]
  f = lambda z: rate * (z @ a.T) + b
  z0 = np.zeros((B, D), np.float32)
  z0[0] = np.linalg.solve(np.eye(D) - 0.9 * a, b[0])
  tol = 1e-5
  z, stats = solvers.solve(f, jnp.asarray(z0), max_iters=500, tol=tol, method=method)
  per_sample = np.asarray(stats.iterations_per_sample)
  assert per_sample[0] == 1 and 1 < per_sample[1] < per_sample[2] == stats.iterations < 500
  assert np.all(stats.residual <= tol)
  np.testing.assert_allclose(z[2], z_star[2], atol=1e-3)
  # A frozen sample keeps the output of its last active iteration: the same as stopping there.
  fixed_count = jax.jit(lambda n: solvers.solve(f, jnp.asarray(z0), max_iters=n, method=method))
  for s in (0, 1):
    z_stopped, stopped = fixed_count(per_sample[s])
    assert stopped.iterations == per_sample[s]
    np.testing.assert_allclose(z[s], z_stopped[s], rtol=1e-6, atol=1e-7)


def test_fixed_count_is_bit_identical_to_a_python_loop():
  w, x = _tanh_map()
  f = lambda z: jnp.tanh(z @ w + x)
  z0 = jnp.asarray(np.random.default_rng(1).normal(size=(B, D)), jnp.float32)
  looped = [z0]
  for _ in range(7):
    looped.append(f(looped[-1]))
  z, stats = solvers.solve(f, z0, max_iters=7)
  np.testing.assert_array_equal(z, looped[7])
  assert stats.iterations == 7 and np.all(stats.iterations_per_sample == 7)
  np.testing.assert_allclose(stats.residual, np.linalg.norm(looped[7] - looped[6], axis=1)
                             / np.linalg.norm(looped[7], axis=1), rtol=1e-5)
  traced = jax.jit(lambda n: solvers.solve(f, z0, max_iters=n))
  for n in (7, 3, 0):
    z, stats = traced(jnp.int32(n))
    np.testing.assert_array_equal(z, looped[n])
    assert stats.iterations == n
  assert np.all(np.isinf(stats.residual))  # n = 0: f never ran


def test_no_gradient_reaches_params_through_solve():
  w, x = _tanh_map()

  def loss(w):
    z, _ = solvers.solve(lambda z: jnp.tanh(z @ w + x), jnp.zeros((B, D)), max_iters=5)
    return jnp.sum(z ** 2)

  np.testing.assert_array_equal(jax.grad(loss)(w), np.zeros((D, D)))


# JFB on step(p, z, x) = tanh(W z + x) with the injection x = U · input.
MAX_M = 12


def _jfb_problem():
  rng = np.random.default_rng(2)
  params = {'W': jnp.asarray(rng.normal(size=(D, D)) * 0.3 / np.sqrt(D), jnp.float32),
            'U': jnp.asarray(rng.normal(size=(D, 5)) / np.sqrt(5), jnp.float32)}
  inputs = jnp.asarray(rng.normal(size=(B, 5)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
  step = lambda p, z, x: jnp.tanh(z @ p['W'].T + x)
  loss = lambda z: jnp.sum((z - target) ** 2)
  return params, inputs, step, loss


def _jfb_loss(params, inputs, k, m):
  _, _, step, loss = _jfb_problem()
  z = solvers.jfb_fixed_point(step, params, jnp.zeros((B, D)), inputs @ params['U'].T,
                              no_grad_iters=k, with_grad_iters=m, max_with_grad_iters=MAX_M)
  return loss(z)


def _unrolled_loss(params, inputs, k, m):
  """K steps with params and injection stopped, then m live steps, as a plain Python loop."""
  _, _, step, loss = _jfb_problem()
  x = inputs @ params['U'].T
  z = jnp.zeros((B, D))
  for _ in range(k):
    z = step(jax.tree.map(sg, params), z, sg(x))
  z = sg(z)
  for _ in range(m):
    z = step(params, z, x)
  return loss(z)


def _assert_grads_close(got, want):
  for name in ('W', 'U'):
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)  # entries are O(1)


def test_jfb_grad_with_iteration_counts_drawn_under_jit():
  params, inputs, _, _ = _jfb_problem()
  grad = jax.jit(jax.grad(lambda p, key: _jfb_loss(p, inputs, *solvers.draw_jfb_iters(key))))
  drawn = set()
  for seed in range(3):
    key = jax.random.key(seed)
    k, m = (int(v) for v in solvers.draw_jfb_iters(key))
    drawn.add((k, m))
    _assert_grads_close(grad(params, key), jax.grad(_unrolled_loss)(params, inputs, k, m))
  assert len(drawn) >= 2, drawn


def test_jfb_grad_comes_only_from_the_differentiated_phase():
  params, inputs, step, loss = _jfb_problem()
  grad = jax.jit(jax.grad(_jfb_loss))
  got = {}
  for k, m in ((4, 1), (0, 3), (9, MAX_M)):
    got[k, m] = grad(params, inputs, jnp.int32(k), jnp.int32(m))
    # The K phase only supplies a constant start: compute it numerically, differentiate m steps.
    x = np.asarray(inputs @ params['U'].T)
    z_k = np.zeros((B, D), np.float32)
    for _ in range(k):
      z_k = np.asarray(step(params, z_k, x))

    def from_constant_start(p):
      z = jnp.asarray(z_k)
      for _ in range(m):
        z = step(p, z, inputs @ p['U'].T)
      return loss(z)

    _assert_grads_close(got[k, m], jax.grad(from_constant_start)(params))
  # Backprop through all K + m steps gives another gradient: the checks above tell them apart.
  full = jax.grad(lambda p: _unrolled_loss(p, inputs, 0, 4 + 1))(params)
  for name in ('W', 'U'):
    assert not np.allclose(got[4, 1][name], full[name], rtol=1e-3)
  # m = 0: nothing is differentiated, so neither W nor the injection's U get any gradient.
  none = grad(params, inputs, jnp.int32(5), jnp.int32(0))
  for name in ('W', 'U'):
    np.testing.assert_array_equal(none[name], np.zeros_like(params[name]))


def test_jfb_runs_only_the_differentiated_steps_it_asks_for():
  """Steps past m are skipped, not computed and discarded: one compiled grad, step evaluations
  counted by a host callback (each run step: forward + checkpointed recompute)."""
  calls = []

  def step(p, z, inj):
    jax.debug.callback(lambda: calls.append(1))
    return jnp.tanh(z @ p + inj)

  p, z0 = 0.5 * jnp.eye(4), jnp.ones((2, 4))
  grad = jax.jit(jax.grad(lambda p, m: jnp.sum(solvers.jfb_fixed_point(
      step, p, z0, z0, no_grad_iters=0, with_grad_iters=m, max_with_grad_iters=12))))
  counts = {}
  for m in (1, 5, 12):
    calls.clear()
    jax.block_until_ready(grad(p, jnp.int32(m)))
    jax.effects_barrier()
    counts[m] = len(calls)
  assert counts == {1: 2, 5: 10, 12: 24}, counts


def test_draw_jfb_iters_covers_inclusive_ranges():
  keys = jax.random.split(jax.random.key(0), 200)
  k, m = jax.vmap(lambda key: solvers.draw_jfb_iters(key, (0, 2), (1, 3)))(keys)
  assert k.dtype == m.dtype == jnp.int32
  assert set(np.asarray(k).tolist()) == {0, 1, 2} and set(np.asarray(m).tolist()) == {1, 2, 3}
  assert not np.array_equal(k + 1, m)  # independent draws, not one shifted stream


def test_bad_arguments():
  f = lambda z: 0.5 * z
  z0 = jnp.ones((B, D))
  with pytest.raises(ValueError, match='newton'):
    solvers.solve(f, z0, max_iters=3, method='newton')
  with pytest.raises(ValueError, match='max_iters'):
    solvers.solve(f, z0, max_iters=-1)
  for tol in (0.0, -1e-3):
    with pytest.raises(ValueError, match='tol'):
      solvers.solve(f, z0, max_iters=3, tol=tol)
  with pytest.raises(ValueError, match='anderson'):
    solvers.solve(f, z0, max_iters=3, method='anderson', anderson_m=0)

  step = lambda p, z, x: z
  jfb = lambda k, m, max_m=MAX_M: solvers.jfb_fixed_point(
      step, {}, z0, z0, no_grad_iters=k, with_grad_iters=m, max_with_grad_iters=max_m)
  with pytest.raises(ValueError, match='no_grad_iters'):
    jfb(-1, 1)
  with pytest.raises(ValueError, match='with_grad_iters'):
    jfb(1, -1)
  with pytest.raises(ValueError, match='exceeds'):
    jfb(1, MAX_M + 1)
  with pytest.raises(ValueError, match='max_with_grad_iters'):
    jfb(1, 0, max_m=-1)
