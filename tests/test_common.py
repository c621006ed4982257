"""Tests of the helpers shared by the methods (optax_adaptive/_common.py)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_adaptive import _common


def test_tree_vdot_f32_multiplies_low_precision_leaves_in_float32():
  """Each bfloat16 leaf is cast before the product: 1.0078125² is not
  rounded to bfloat16 (where it would be 1.015625)."""
  x = jnp.full((3,), 1.0078125, jnp.bfloat16)  # 1 + 2^-7, exact in bf16
  tree = {"a": x, "b": jnp.ones((2, 2), jnp.float16)}
  out = _common.tree_vdot_f32(tree, tree)
  assert out.dtype == jnp.float32
  assert float(out) == 3 * 1.0078125**2 + 4.0


def test_tree_vdot_f32_keeps_float64(x64):
  del x64
  a = {"w": jnp.asarray([1e-20, 1e-20], jnp.float64)}  # 1e-40: f32 subnormal
  out = _common.tree_vdot_f32(a, a)
  assert out.dtype == jnp.float64
  assert float(out) == 2 * np.float64(1e-20) ** 2


def test_tree_vdot_f32_of_an_empty_tree_is_a_float32_zero():
  out = _common.tree_vdot_f32({}, {})
  chex.assert_trees_all_equal(out, jnp.zeros((), jnp.float32), strict=True)


def test_tree_vdot_f32_and_norm_sum_over_axis_name():
  """With ``axis_name`` each shard's partial sum is psum-ed over the axis."""
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
  shards = jax.vmap(
      lambda x, y: (_common.tree_vdot_f32({"x": x}, {"x": y}, "i"),
                    _common.tree_norm_f32({"x": x}, "i")),
      axis_name="i")(a, b)
  np.testing.assert_allclose(shards[0], np.full(4, np.sum(a * b)), rtol=1e-6)
  np.testing.assert_allclose(shards[1], np.full(4, np.linalg.norm(a)),
                             rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_tree_norm_f32_is_the_global_norm(dtype):
  tree = {"a": jnp.full((2,), 3.0, dtype), "b": [jnp.full((1,), 4.0, dtype)]}
  out = _common.tree_norm_f32(tree)
  assert out.dtype == jnp.float32
  assert float(out) == pytest.approx(np.sqrt(2 * 9.0 + 16.0), rel=1e-7)
