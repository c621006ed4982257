"""Tests of AdaS's spectral metrics: unfoldings, EVBMF, knowledge gain."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from optax_adaptive import _spectral
from optax_adaptive._minimize_scalar import brent_bounded
from optax_adaptive._spectral import (
  evbmf,
  gain_and_condition,
  input_unfolding,
  knowledge_gain,
  knowledge_gains,
  output_unfolding,
)
from tests import _utils
from tests._numpy_oracles import numpy_evbmf, numpy_knowledge_gain

_evbmf_jit = jax.jit(evbmf, static_argnames=("solver", "spectrum"))


def _gain_of(matrix, solver="brent_ref", p=1, spectrum="gram"):
  result = _evbmf_jit(jnp.asarray(matrix), solver=solver, spectrum=spectrum)
  gain, condition = gain_and_condition(
      result.singular_values, result.rank, matrix.shape[0], p)
  return result, float(gain), float(condition)


def _diagonal_4x16_matrix():
  y = np.zeros((4, 16))
  y[np.arange(4), np.arange(4)] = [20.0, 10.0, 5.0, 1.0]
  return y


# --------------------------- test vectors from an independent NumPy EVBMF


@pytest.mark.parametrize("shape", [(8, 72), (16, 16), (64, 576)])
@pytest.mark.parametrize("c", [0.01, 30.0])
def test_isotropic_spectrum_is_all_noise(shape, c):
  rows, cols = shape
  y = c * np.eye(rows, cols, dtype=np.float32)
  result, gain, condition = _gain_of(y)
  assert int(result.rank) == 0 and gain == 0.0 and condition == 0.0
  np.testing.assert_allclose(float(result.sigma2), c * c / cols, rtol=1e-5)


@pytest.mark.parametrize("shape", [(16, 144), (64, 576)])
def test_rank_one_plus_noise_keeps_one_component(shape):
  rows, cols = shape
  rng = np.random.default_rng(0)
  u, v = rng.standard_normal(rows), rng.standard_normal(cols)
  y = 10 * np.outer(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))
  y = (y + 0.01 * rng.standard_normal(shape)).astype(np.float32)
  result, gain, condition = _gain_of(y)
  assert int(result.rank) == 1
  np.testing.assert_allclose(gain, 1 / rows, rtol=1e-6)
  np.testing.assert_allclose(condition, 1.0, rtol=1e-6)
  np.testing.assert_allclose(float(result.sigma2), 1e-4, rtol=0.1)


@pytest.mark.parametrize(("p", "gain", "condition"),
                         [(1, 0.354246, 2.398173), (2, 0.293469, 5.751236)])
def test_shrinkage_gain_and_condition_at_fixed_sigma2(p, gain, condition):
  geo = _spectral._geometry(4, 16)
  np.testing.assert_allclose(geo.xubar, 2.7054233, rtol=1e-7)
  s2 = jnp.asarray([400.0, 100.0, 25.0, 1.0])
  out = _spectral._evbmf_from_spectrum(s2, geo, "brent_ref")
  # Re-run the shrinkage with sigma^2 fixed at 1.
  kept = jnp.sqrt(s2) > jnp.sqrt(16 * 1.0 * geo.xubar)
  assert int(kept.sum()) == 2 and int(out.rank) == 2
  gamma = jnp.sqrt(s2)
  q = 1 - 20 / s2
  shrunk = gamma / 2 * (q + jnp.sqrt(jnp.maximum(q**2 - 256 / s2**2, 0)))
  shrunk = jnp.where(kept, shrunk, 0.0)
  np.testing.assert_allclose(shrunk[:2], [18.991575, 7.919184], rtol=1e-6)
  g, k = gain_and_condition(shrunk, jnp.asarray(2), 4, p)
  np.testing.assert_allclose([g, k], [gain, condition], rtol=1e-5)


def test_estimated_sigma2_rank_and_gain_in_float64(x64):
  del x64
  result, gain, condition = _gain_of(_diagonal_4x16_matrix())
  np.testing.assert_allclose(float(result.sigma2), 1.137824, atol=1e-5)
  assert int(result.rank) == 2
  np.testing.assert_allclose(result.singular_values[:2], [18.85119, 7.61555],
                             atol=1e-5)
  np.testing.assert_allclose([gain, condition], [0.350996, 2.47535],
                             atol=1e-5)


def test_estimated_sigma2_in_float32_is_close():
  result, gain, _ = _gain_of(_diagonal_4x16_matrix().astype(np.float32))
  assert int(result.rank) == 2
  # float32 objective rounding limits sigma^2 to ~1e-3 relative (docs).
  np.testing.assert_allclose(float(result.sigma2), 1.137824, rtol=1e-3)
  np.testing.assert_allclose(gain, 0.350996, atol=1e-4)


@pytest.mark.parametrize("noise", [1e-2, 1e-3])
def test_separable_conv_kernel_has_rank_one_modes(noise):
  rng = np.random.default_rng(1)
  a, b, c = (rng.standard_normal((3, 3)), rng.standard_normal(4),
             rng.standard_normal(8))
  kernel = np.einsum("hw,i,o->hwio", a, b, c)
  kernel /= np.abs(kernel).max()
  kernel = kernel + noise * rng.standard_normal(kernel.shape)
  kg = knowledge_gain(jnp.asarray(kernel, jnp.float32))
  np.testing.assert_allclose(
      [kg.input_gain, kg.output_gain, kg.gain], [1 / 4, 1 / 8, 0.1875],
      rtol=1e-6)
  np.testing.assert_allclose([kg.input_condition, kg.output_condition],
                             [1.0, 1.0], rtol=1e-6)
  assert int(kg.input_rank) == 1 and int(kg.output_rank) == 1


def test_flax_and_pytorch_layouts_agree(x64):
  del x64
  kernel = np.random.default_rng(2).standard_normal((3, 3, 5, 7))
  torch_weight = kernel.transpose(3, 2, 0, 1)  # OIHW
  torch_mode3 = torch_weight.transpose(1, 0, 2, 3).reshape(5, -1)
  torch_mode4 = torch_weight.reshape(7, -1)
  for flax_unfold, torch_unfold in [(input_unfolding, torch_mode3),
                                    (output_unfolding, torch_mode4)]:
    flax_matrix = np.asarray(flax_unfold(jnp.asarray(kernel)))
    assert flax_matrix.shape[0] == torch_unfold.shape[0]  # N_d = channels
    np.testing.assert_allclose(
        np.linalg.svd(flax_matrix, compute_uv=False),
        np.linalg.svd(torch_unfold, compute_uv=False), rtol=1e-10)


def test_brent_takes_scipys_fast_path_on_narrow_brackets(x64):
  del x64
  fun = lambda x: (x - 3.0) ** 2
  lower, upper = 1e-7, 5e-6
  ours = brent_bounded(fun, jnp.asarray(lower), jnp.asarray(upper))
  theirs = scipy.optimize.minimize_scalar(
      fun, bounds=(lower, upper), method="bounded")
  assert theirs.nfev == 1
  np.testing.assert_allclose(float(ours), 1.97163e-6, rtol=1e-5)
  assert float(ours) == theirs.x


def test_he_init_has_zero_gain():
  kernel = jax.random.normal(jax.random.key(0), (3, 3, 64, 64)) * np.sqrt(
      2 / (9 * 64))
  kg = knowledge_gain(kernel)
  assert int(kg.input_rank) == 0 and int(kg.output_rank) == 0
  assert float(kg.gain) == 0.0


# ------------------------------------------------ parity with the reference


def _random_matrix(rng, rows, cols):
  rank = int(rng.integers(1, 6))
  std = float(rng.choice([0.1, 0.03, 0.01]))
  return (rng.standard_normal((rows, rank)) @ rng.standard_normal(
      (rank, cols)) / np.sqrt(cols) + std * rng.standard_normal((rows, cols)))


@pytest.mark.parametrize("shape", [(8, 72), (24, 24), (16, 48), (48, 16),
                                   (72, 8)])
def test_brent_ref_matches_scipy_on_random_matrices(x64, shape):
  del x64
  rng = np.random.default_rng(shape[0])
  matrices = np.stack([_random_matrix(rng, *shape) for _ in range(6)])
  rows = shape[0]
  for spectrum in ("gram", "svd"):
    result = evbmf(jnp.asarray(matrices), spectrum=spectrum)
    gains, _ = gain_and_condition(result.singular_values, result.rank, rows)
    for i, y in enumerate(matrices):  # tall: untransposed, as the reference
      sigma2, rank, shrunk = numpy_evbmf(y)
      assert int(result.rank[i]) == rank, (i, spectrum)
      ref_gain = shrunk.sum() / shrunk.max() / rows if rank else 0.0
      assert abs(float(gains[i]) - ref_gain) < 1e-5, (i, spectrum)
      if sigma2 <= np.sum(y**2) / y.size:  # a valid bracket
        np.testing.assert_allclose(float(result.sigma2[i]), sigma2,
                                   rtol=1e-8)


def test_scipy_iterates_reproduced_on_objective(x64):
  del x64
  for center in (0.3, 2.0, 7.9):
    fun = lambda x, c=center: jnp.log1p((x - c) ** 2) + 0.1 * jnp.sin(3 * x)
    ref = scipy.optimize.minimize_scalar(
        lambda x, f=fun: float(f(x)), bounds=(0.01, 8.2), method="bounded")
    ours = brent_bounded(fun, jnp.asarray(0.01), jnp.asarray(8.2))
    np.testing.assert_allclose(float(ours), ref.x, rtol=1e-12)


def test_float32_gram_close_to_float64_reference():
  rng = np.random.default_rng(4)
  matrices = np.stack([_random_matrix(rng, 32, 288) for _ in range(8)])
  result = evbmf(jnp.asarray(matrices, jnp.float32))
  gains, _ = gain_and_condition(result.singular_values, result.rank, 32)
  for i, y in enumerate(matrices):
    _, rank, shrunk = numpy_evbmf(y)
    ref_gain = shrunk.sum() / shrunk.max() / 32 if rank else 0.0
    assert int(result.rank[i]) == rank
    assert abs(float(gains[i]) - ref_gain) < 1e-4


def test_golden_log_finds_the_objective_minimum(x64):
  del x64
  y = _diagonal_4x16_matrix()
  result, gain, _ = _gain_of(y, solver="golden_log")
  np.testing.assert_allclose(float(result.sigma2), 1.1378236, rtol=1e-6)
  np.testing.assert_allclose(gain, 0.350996, atol=1e-5)


def test_knowledge_gain_matches_numpy_reference(x64):
  del x64
  rng = np.random.default_rng(5)
  base = np.einsum("hw,io->hwio", rng.standard_normal((3, 3)),
                   rng.standard_normal((6, 10)))
  kernel = base + 0.05 * rng.standard_normal(base.shape)
  (g3, k3, r3), (g4, k4, r4) = numpy_knowledge_gain(kernel)
  kg = knowledge_gain(jnp.asarray(kernel))
  np.testing.assert_allclose(
      [kg.input_gain, kg.output_gain, kg.input_condition, kg.output_condition],
      [g3, g4, k3, k4], atol=1e-8)
  assert (int(kg.input_rank), int(kg.output_rank)) == (r3, r4)


# ------------------------------------------------------------- degenerate


@pytest.mark.parametrize(("shape", "transpose_tall"), [
    ((3, 3, 4, 8), False), ((1, 1, 64, 8), False), ((1, 1, 64, 8), True),
    ((1, 1, 8, 64), False), ((3, 3, 1, 16), False), ((3, 3, 1, 16), True),
    ((5, 1, 4), False), ((2, 2, 2, 3, 4), False), ((12, 6), True)])
def test_degenerate_kernels_are_finite(shape, transpose_tall):
  kernels = jnp.stack([jnp.zeros(shape), jnp.ones(shape),
                       jax.random.normal(jax.random.key(6), shape)])
  (kg,) = knowledge_gains([kernels], transpose_tall=transpose_tall)
  _utils.assert_tree_all_finite(kg)
  assert np.all((kg.gain >= 0.0) & (kg.gain <= 1.0 + 1e-6))
  assert float(kg.gain[0]) == 0.0  # zero kernel
  assert int(kg.input_rank[0]) == 0 and int(kg.output_rank[0]) == 0


def test_depthwise_input_mode_is_always_zero():
  rng = np.random.default_rng(7)
  kernel = rng.standard_normal((3, 3, 1, 32)) + 2 * np.einsum(
      "hw,o->hwo", rng.standard_normal((3, 3)), rng.standard_normal(32))[
          :, :, None]
  kg = knowledge_gain(jnp.asarray(kernel, jnp.float32))
  assert float(kg.input_gain) == 0.0 and int(kg.input_rank) == 0
  assert float(kg.output_gain) > 0.0


def test_strongly_tall_inverted_bracket_gives_rank_zero():
  rng = np.random.default_rng(8)
  y = rng.standard_normal((144, 16)).astype(np.float32)
  _, rank, _ = numpy_evbmf(y.astype(np.float64))
  result, gain, condition = _gain_of(y)
  assert rank == 0 and int(result.rank) == 0
  assert gain == 0.0 and condition == 0.0


# -------------------------------------------------------- batching, jit, vmap


@pytest.mark.slow
def test_batched_by_shape_equals_one_by_one():
  keys = jax.random.split(jax.random.key(9), 4)
  low_rank = lambda k, s: jnp.einsum(
      "hw,io->hwio", jax.random.normal(k, s[:2]),
      jax.random.normal(k, s[2:])) + 0.05 * jax.random.normal(k, s)
  kernels = [low_rank(keys[0], (3, 3, 8, 8)), low_rank(keys[1], (3, 3, 8, 8)),
             low_rank(keys[2], (1, 1, 8, 16)), low_rank(keys[3], (3, 3, 8, 8))]
  together = knowledge_gains([k[None] for k in kernels])
  for kernel, batched in zip(kernels, together):
    alone = knowledge_gain(kernel)
    _utils.assert_trees_all_close(jax.tree.map(lambda x: x[0], batched),
                                  alone, rtol=1e-4, atol=1e-7)  # GPU f32


def test_vmap_over_stacked_kernels_and_single_compile():
  stack = jax.random.normal(jax.random.key(10), (3, 3, 3, 4, 6))
  vmapped = jax.jit(jax.vmap(knowledge_gain))(stack)
  for i in range(3):
    _utils.assert_trees_all_close(
        jax.tree.map(lambda x, i=i: x[i], vmapped), knowledge_gain(stack[i]),
        rtol=1e-4, atol=1e-7)  # batched vs single f32 spectra on GPUs
  fn = jax.jit(knowledge_gain)
  fn(stack[0])
  with _utils.log_compilations() as compiles:
    fn(stack[1])
  assert not compiles


def test_invalid_arguments():
  with pytest.raises(ValueError, match="solver"):
    evbmf(jnp.ones((3, 4)), solver="brent")
  with pytest.raises(ValueError, match="spectrum"):
    knowledge_gain(jnp.ones((3, 3, 2, 2)), spectrum="qr")
  with pytest.raises(ValueError, match="kernel"):
    knowledge_gain(jnp.ones((3,)))
