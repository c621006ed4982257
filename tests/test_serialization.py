"""Compiled and exported updates of every public transformation run elsewhere.

A train step of each registered case (tests/_registry.py) is compiled,
serialized with ``jax.experimental.serialize_executable`` and with
``jax.export``, and run in a fresh Python process, which must reproduce the
in-process result. Nothing of the library may depend on state that only the
compiling process has (for example a custom-call target registered at import).
"""

from __future__ import annotations

import os
import pathlib
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.experimental import serialize_executable

from tests import _utils
from tests._registry import CASES
from tests._registry import make_step as _make_step

_RUNNER = r"""
import pickle, sys
import jax
from jax.experimental import serialize_executable
jax.config.update("jax_platforms", "cpu")
with open(sys.argv[1], "rb") as f:
  jobs = pickle.load(f)
results = {}
for name, job in jobs.items():
  compiled = serialize_executable.deserialize_and_load(*job["executable"])
  exported = jax.export.deserialize(job["exported"])
  results[name] = (jax.device_get(compiled(*job["args"])),
                   jax.device_get(exported.call(*job["leaves"])))
with open(sys.argv[2], "wb") as f:
  pickle.dump(results, f)
"""


def _objective(p):
  return jnp.sum(jnp.cos(p["a"]) * p["a"] ** 2) + jnp.sum(p["b"] ** 4)


def _job(case):
  tx = case.build()
  params = {"a": jnp.array([0.5, -1.5, 2.0]),
            "b": jnp.array([[1.0, -2.0], [0.3, 0.7]])}
  args = (params, tx.init(params))
  step = jax.jit(_make_step(case, tx, _objective))
  for _ in range(2):  # a state past the first step
    params, state, _ = step(*args)
    args = (params, state)
  compiled = step.lower(*args).compile()
  # jax.export serializes flat leaves: the state's NamedTuples (optax's
  # included) are not registered for its tree serialization.
  leaves, treedef = jax.tree.flatten(args)
  flat_step = jax.jit(lambda *xs: jax.tree.leaves(
      step(*jax.tree.unflatten(treedef, xs))))
  exported = jax.export.export(flat_step, platforms=("cpu",))(*leaves)
  job = {"executable": serialize_executable.serialize(compiled),
         "exported": exported.serialize(),
         "args": jax.device_get(args),
         "leaves": jax.device_get(leaves)}
  return job, jax.device_get(step(*args))


@pytest.mark.slow  # one compile and export per case, and a fresh process
def test_serialized_updates_run_in_a_fresh_process(tmp_path: pathlib.Path):
  jobs, expected = {}, {}
  for case in CASES:
    jobs[case.name], expected[case.name] = _job(case)
  jobs_path, out_path = tmp_path / "jobs.pkl", tmp_path / "out.pkl"
  jobs_path.write_bytes(pickle.dumps(jobs))
  # One CPU device, as the executables were compiled for (conftest.py gives
  # this process 8).
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  run = subprocess.run(
      [sys.executable, "-c", _RUNNER, str(jobs_path), str(out_path)],
      capture_output=True, text=True, timeout=300, check=False, env=env)
  assert run.returncode == 0, run.stderr[-3000:]
  results = pickle.loads(out_path.read_bytes())
  assert sorted(results) == sorted(expected)
  for name, (from_executable, from_export) in results.items():
    _utils.assert_trees_all_close(from_executable, expected[name], rtol=1e-6,
                                  atol=0)
    _utils.assert_trees_all_close(from_export, jax.tree.leaves(expected[name]),
                                  rtol=1e-6, atol=0)
