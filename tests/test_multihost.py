"""Multi-host training on JAX's own runtime: 2 processes x 4 CPU devices.

The test launches two ``tests/_multihost_worker.py`` processes on localhost
that join one job through :func:`jax.distributed.initialize` (gloo CPU
collectives), train the CNN with every method over the 8-device global mesh
and write the result. It must match the single-process 8-device run of the
same code within float32 tolerance (``_cnn_tasks.tolerance``: only the order
of the cross-process reductions differs). Processes are always killed on exit,
and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from tests import _cnn_tasks as T
from tests import _utils

REPO = pathlib.Path(__file__).resolve().parent.parent
NUM_PROCESSES = 2
STEPS = 3
TIMEOUT_S = 540

pytestmark = pytest.mark.slow  # two fresh jax processes: about a minute


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _available_methods():
  out = []
  for method in T.METHODS:
    try:
      method.build(None)
      out.append(method.name)
    except (ImportError, AttributeError):
      pass
  return out


@contextlib.contextmanager
def _processes(commands, env, log_dir):
  """Starts ``commands``; on exit kills whatever is still running."""
  procs, logs = [], []
  try:
    for i, command in enumerate(commands):
      log = open(log_dir / f"process{i}.log", "w")
      logs.append(log)
      procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=log,
                                    stderr=subprocess.STDOUT))
    yield procs
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
    for proc in procs:
      with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    for log in logs:
      log.close()


def _wait_all(procs, log_dir, timeout_s):
  deadline = time.monotonic() + timeout_s
  while any(p.poll() is None for p in procs):
    failed = [p for p in procs if p.poll() not in (None, 0)]
    if failed or time.monotonic() > deadline:
      break
    time.sleep(0.5)
  codes = [p.poll() for p in procs]
  if codes != [0] * len(procs):
    logs = "\n".join(
        f"--- process {i} (exit {codes[i]}) ---\n"
        + (log_dir / f"process{i}.log").read_text()[-4000:]
        for i in range(len(procs)))
    pytest.fail(f"multi-host job failed or timed out:\n{logs}")


def _run_job(tmp_path, methods, fsdp):
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  env["JAX_PLATFORMS"] = "cpu"
  port = _free_port()
  commands = [
      [sys.executable, "-m", "tests._multihost_worker",
       "--process-id", str(i), "--num-processes", str(NUM_PROCESSES),
       "--port", str(port), "--out", str(tmp_path),
       "--methods", ",".join(methods), "--steps", str(STEPS)]
      + (["--fsdp"] if fsdp else [])
      for i in range(NUM_PROCESSES)
  ]
  with _processes(commands, env, tmp_path) as procs:
    _wait_all(procs, tmp_path, TIMEOUT_S)


@pytest.mark.parametrize("fsdp", [False, True], ids=["data_parallel", "fsdp"])
def test_two_processes_match_single_process(tmp_path, fsdp):
  if jax.device_count() < T.N_DEVICES:
    pytest.skip(f"needs {T.N_DEVICES} devices")
  methods = _available_methods()
  _run_job(tmp_path, methods, fsdp)
  mesh = jax.make_mesh((T.N_DEVICES,), ("data",),
                       axis_types=(AxisType.Explicit,))
  data = T.make_data(steps=STEPS)
  for name in methods:
    out = T.run_on_mesh(T.METHODS_BY_NAME[name], data, STEPS, mesh,
                        fsdp=fsdp)
    expected = [np.asarray(x) for x in jax.tree.leaves(
        (out["params"], out["state"], out["losses"]))]
    with np.load(tmp_path / f"{name}.npz") as f:
      got = [f[f"arr_{i}"] for i in range(len(f.files))]
    _utils.assert_trees_all_close(got, expected, err_msg=name,
                                  **T.tolerance(name))
