"""One process of the 2-process job of ``test_multihost.py``.

Run from the repository root as ``python -m tests._multihost_worker
--process-id I --num-processes N --port PORT --out DIR --methods a,b
--steps S [--fsdp]`` with 4 CPU devices per process
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``). It joins the job
through :func:`jax.distributed.initialize` (CPU devices, gloo collectives),
builds one mesh over the devices of all processes, trains each method for S
steps with the same code as the single-process runs
(``_cnn_tasks.run_on_mesh``), and process 0 writes the gathered params,
state and losses of each method to ``DIR/<method>.npz``.
"""

from __future__ import annotations

import argparse
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType

from tests import _cnn_tasks as T


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--process-id", type=int, required=True)
  parser.add_argument("--num-processes", type=int, required=True)
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--out", type=pathlib.Path, required=True)
  parser.add_argument("--methods", required=True)
  parser.add_argument("--steps", type=int, required=True)
  parser.add_argument("--fsdp", action="store_true")
  args = parser.parse_args()

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
      coordinator_address=f"localhost:{args.port}",
      num_processes=args.num_processes,
      process_id=args.process_id,
      initialization_timeout=120,
  )
  assert jax.process_count() == args.num_processes
  assert jax.device_count() == T.N_DEVICES, jax.devices()
  mesh = jax.make_mesh((T.N_DEVICES,), ("data",),
                       axis_types=(AxisType.Explicit,))
  data = T.make_data(steps=args.steps)
  for name in args.methods.split(","):
    out = T.run_on_mesh(T.METHODS_BY_NAME[name], data, args.steps, mesh,
                        fsdp=args.fsdp)
    tree = (out["params"], out["state"], out["losses"])
    with jax.set_mesh(mesh):
      local = multihost_utils.process_allgather(tree, tiled=True)
    if jax.process_index() == 0:
      np.savez(args.out / f"{name}.npz",
               *[np.asarray(x) for x in jax.tree.leaves(local)])
    print(f"process {jax.process_index()}: {name} done", flush=True)
  multihost_utils.sync_global_devices("done")
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
