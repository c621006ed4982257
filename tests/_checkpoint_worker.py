"""Fresh-process half of ``test_checkpoint.py``: restore, continue, save.

Run from the repository root as ``python -m tests._checkpoint_worker DIR
--methods a,b --mode single|fsdp``. For each method it restores
``DIR/<method>/ckpt`` (written by the test after ``SAVE_AT`` steps) with
orbax into the layout of ``--mode`` (``single``: the default device;
``fsdp``: params and optimizer state sharded over an 8-device Explicit
mesh), checks that the restored arrays equal the saved ones and carry the
requested shardings, runs the remaining steps and writes the final params
and state to ``DIR/<method>/<mode>.npz``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from tests import _cnn_tasks as T

SAVE_AT = 7
TOTAL = 9


def load_data(directory: pathlib.Path) -> dict[str, np.ndarray]:
  with np.load(directory / "data.npz") as f:
    return {k: f[k] for k in f.files}


def target_layout(tx, mode: str, mesh):
  """Abstract ``{"params", "opt_state"}`` with the shardings to restore."""
  params = T.init_params()
  if mode == "single":
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: device, params)
  else:
    shardings = T.fsdp_shardings(params, mesh)
  params = jax.tree.map(jax.device_put, params, shardings)
  # tx.init places params-shaped slots like the params and replicates the
  # small ones; its layout is the target layout.
  tree = {"params": params, "opt_state": tx.init(params)}
  return jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
      tree)


def restore_and_continue(directory: pathlib.Path, name: str, mode: str):
  method = T.METHODS_BY_NAME[name]
  tx = method.build(None)
  data = load_data(directory)
  mesh = jax.make_mesh((T.N_DEVICES,), ("data",),
                       axis_types=(AxisType.Explicit,))
  # Single mode runs outside any mesh context, exactly like the
  # uninterrupted run it must reproduce bit for bit.
  context = jax.set_mesh(mesh) if mode == "fsdp" else contextlib.nullcontext()
  with context:
    target = target_layout(tx, mode, mesh)
    restored = ocp.StandardCheckpointer().restore(
        (directory / name / "ckpt").absolute(), target)
    for leaf, want in zip(jax.tree.leaves(restored),
                          jax.tree.leaves(target)):
      assert leaf.sharding.is_equivalent_to(want.sharding, leaf.ndim), (
          f"{name}: restored {leaf.shape} as {leaf.sharding}, "
          f"asked for {want.sharding}")
    with np.load(directory / name / "saved.npz") as saved:
      leaves = jax.tree.leaves(restored)
      assert len(leaves) == len(saved.files)
      for i, leaf in enumerate(leaves):
        np.testing.assert_array_equal(np.asarray(leaf), saved[f"arr_{i}"])
    params, state = restored["params"], restored["opt_state"]
    gather = T.gather_explicit if mode == "fsdp" else None
    step = jax.jit(T.make_step(method, tx, gather=gather))
    for i in range(SAVE_AT, TOTAL):
      batch, approx = T.batch_at(data, i), T.approx_at(data, i)
      if mode == "fsdp":
        put = lambda t, spec: jax.tree.map(
            lambda a: jax.device_put(a, NamedSharding(mesh, spec)), t)
        batch, approx = put(batch, P("data")), put(approx, P(None, "data"))
      params, state, _ = step(params, state, batch, approx)
  np.savez(directory / name / f"{mode}.npz",
           *[np.asarray(x) for x in jax.tree.leaves((params, state))])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("directory", type=pathlib.Path)
  parser.add_argument("--methods", required=True)
  parser.add_argument("--mode", choices=("single", "fsdp"), default="single")
  args = parser.parse_args()
  for name in args.methods.split(","):
    restore_and_continue(args.directory, name, args.mode)
    print(f"{name}: restored ({args.mode}) and continued", flush=True)


if __name__ == "__main__":
  main()
