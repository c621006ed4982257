"""Assertions and helpers shared by the test modules (not a public API)."""

from __future__ import annotations

import contextlib
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def assert_trees_all_close(actual, desired, rtol=1e-6, atol=0.0, err_msg=""):
  """Leaf-wise ``np.testing.assert_allclose`` with matching structures."""
  a_leaves, a_def = jax.tree.flatten(actual)
  d_leaves, d_def = jax.tree.flatten(desired)
  assert a_def == d_def, f"tree structures differ: {a_def} vs {d_def}"
  for i, (a, d) in enumerate(zip(a_leaves, d_leaves)):
    np.testing.assert_allclose(
        np.asarray(a, np.float64), np.asarray(d, np.float64),
        rtol=rtol, atol=atol, err_msg=f"leaf {i}: {err_msg}")


def assert_trees_all_equal(actual, desired, err_msg=""):
  """Leaf-wise exact equality (bit for bit for floating point)."""
  a_leaves, a_def = jax.tree.flatten(actual)
  d_leaves, d_def = jax.tree.flatten(desired)
  assert a_def == d_def, f"tree structures differ: {a_def} vs {d_def}"
  for i, (a, d) in enumerate(zip(a_leaves, d_leaves)):
    a, d = np.asarray(a), np.asarray(d)
    assert a.dtype == d.dtype, f"leaf {i}: dtype {a.dtype} vs {d.dtype}"
    np.testing.assert_array_equal(a, d, err_msg=f"leaf {i}: {err_msg}")


def assert_tree_all_finite(tree, err_msg=""):
  for i, leaf in enumerate(jax.tree.leaves(tree)):
    leaf = np.asarray(leaf)
    if leaf.dtype.kind == "f" or leaf.dtype.name == "bfloat16":
      leaf = leaf.astype(np.float64)
    assert np.all(np.isfinite(leaf)), f"leaf {i} not finite: {err_msg}"


class _ListHandler(logging.Handler):

  def __init__(self, records):
    super().__init__()
    self.records = records

  def emit(self, record):
    if re.search(r"Finished .* compilation", record.getMessage()):
      self.records.append(record.getMessage())


@contextlib.contextmanager
def log_compilations():
  """Collects the compilations that happen inside the block."""
  records = []
  handler = _ListHandler(records)
  logger = logging.getLogger("jax")
  logger.addHandler(handler)
  previous = logger.level
  logger.setLevel(logging.DEBUG)
  try:
    with jax.log_compiles():
      yield records
  finally:
    logger.removeHandler(handler)
    logger.setLevel(previous)


class BatchNormNet(nnx.Module):
  """A tiny regression net with BatchNorm, whose statistics tests watch."""

  def __init__(self, rngs):
    self.lin1 = nnx.Linear(3, 8, rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.lin2 = nnx.Linear(8, 1, rngs=rngs)

  def __call__(self, x):
    return self.lin2(nnx.relu(self.bn(self.lin1(x))))[:, 0]


def mlp_problem():
  """Params of a 2-layer MLP (linen names) and a loss of them alone."""
  rng = np.random.default_rng(0)
  params = {"Dense_0": {"kernel": rng.normal(size=(4, 8)) / 2,
                        "bias": np.zeros(8)},
            "Dense_1": {"kernel": rng.normal(size=(8, 2)) / 3,
                        "bias": np.zeros(2)}}
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  x = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)

  def objective(p):
    h = jnp.tanh(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    return jnp.mean((h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]) ** 2)

  return params, objective


def cnn_problem():
  """Params of a conv + dense model (linen names) and a loss of them alone."""
  rng = np.random.default_rng(0)
  params = {"Conv_0": {"kernel": rng.normal(size=(3, 3, 2, 4)) / 4,
                       "bias": np.zeros(4)},
            "Dense_0": {"kernel": rng.normal(size=(4, 2)) / 2,
                        "bias": np.zeros(2)}}
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  x = jnp.asarray(rng.normal(size=(8, 5, 5, 2)), jnp.float32)

  def objective(p):
    h = jax.lax.conv_general_dilated(
        x, p["Conv_0"]["kernel"], (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["Conv_0"]["bias"]
    h = jnp.mean(jnp.tanh(h), axis=(1, 2))
    return jnp.mean((h @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]) ** 2)

  return params, objective
