"""Offline data sets with fixed train/validation/test splits.

Every data set is generated locally (mnist1d) or shipped inside a package
(scikit-learn's 8x8 digits); nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Arrays of one task, split once and for all by a fixed seed."""

  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int

  @property
  def input_shape(self) -> tuple[int, ...]:
    return self.x_train.shape[1:]


def _split_validation(x, y, val_fraction: float, seed: int):
  order = np.random.default_rng(seed).permutation(len(y))
  n_val = round(len(y) * val_fraction)
  val, train = order[:n_val], order[n_val:]
  return x[train], y[train], x[val], y[val]


def _cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get(
      "OPTAX_ADAPTIVE_CACHE",
      pathlib.Path.home() / ".cache" / "optax_adaptive"))


def _mnist1d_raw(num_samples: int, seed: int) -> dict[str, np.ndarray]:
  """mnist1d's generated arrays, cached on disk (generation takes seconds)."""
  from importlib.metadata import version

  from mnist1d.data import get_dataset_args, make_dataset

  path = _cache_dir() / (
      f"mnist1d-{version('mnist1d')}-n{num_samples}-seed{seed}.npz")
  keys = ("x", "y", "x_test", "y_test")
  try:
    with np.load(path) as cached:
      return {k: cached[k] for k in keys}
  except (OSError, KeyError, ValueError):
    pass
  args = get_dataset_args()
  args.num_samples = num_samples
  args.seed = seed
  # make_dataset reseeds the global generator; restore it afterwards.
  state = np.random.get_state()  # noqa: NPY002
  try:
    raw = make_dataset(args)
  finally:
    np.random.set_state(state)  # noqa: NPY002
  raw = {k: np.asarray(raw[k]) for k in keys}
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **raw)
    os.replace(tmp, path)
  except OSError:
    pass  # a read-only home only costs the regeneration
  return raw


@functools.cache
def mnist1d(num_samples: int = 5000, seed: int = 42,
            val_fraction: float = 0.1) -> Dataset:
  """mnist1d generated offline: sequences of length 40 with one channel.

  The default (5000 samples, 80/20 train/test split, seed 42) is the
  package's standard data set; 10% of the training split is held out for
  validation.
  """
  from mnist1d.data import get_dataset_args, make_dataset

  args = get_dataset_args()
  args.num_samples = num_samples
  args.seed = seed
  # make_dataset reseeds NumPy's global generator; restore it afterwards.
  state = np.random.get_state()  # noqa: NPY002
  try:
    raw = make_dataset(args)
  finally:
    np.random.set_state(state)  # noqa: NPY002
  x = raw["x"].astype(np.float32)[..., None]
  y = raw["y"].astype(np.int32)
  x_tr, y_tr, x_val, y_val = _split_validation(x, y, val_fraction, seed)
  return Dataset(
      name=f"mnist1d-{num_samples}",
      x_train=x_tr, y_train=y_tr, x_val=x_val, y_val=y_val,
      x_test=raw["x_test"].astype(np.float32)[..., None],
      y_test=raw["y_test"].astype(np.int32),
      num_classes=10,
  )


@functools.cache
def digits(seed: int = 0, test_fraction: float = 0.2,
           val_fraction: float = 0.1) -> Dataset:
  """scikit-learn's 8x8 handwritten digits as (8, 8, 1) images in [0, 1]."""
  from sklearn.datasets import load_digits

  raw = load_digits()
  x = (raw.images.astype(np.float32) / 16.0)[..., None]
  y = raw.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(y))
  n_test = round(len(y) * test_fraction)
  test, rest = order[:n_test], order[n_test:]
  x_tr, y_tr, x_val, y_val = _split_validation(
      x[rest], y[rest], val_fraction, seed + 1)
  return Dataset(
      name="digits",
      x_train=x_tr, y_train=y_tr, x_val=x_val, y_val=y_val,
      x_test=x[test], y_test=y[test], num_classes=10,
  )
