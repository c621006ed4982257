# Copyright 2026 The optax_adaptive Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
# ==============================================================================
"""Optional XLA:CPU kernels: one loop per leaf where XLA writes one per output.

XLA:CPU compiles every output array of an element-wise computation into its
own loop, so an optimizer update with several outputs (the update and each
moment) reads its inputs once per output. The shared library built from
``csrc/`` (see setup.py) holds XLA FFI handlers that read every input once and
write every output once, in place on the optimizer state.

Each handler is wrapped in a :class:`LeafKernel`, a JAX primitive whose
lowering emits the handler only where it is valid: a CPU-only lowering of a
computation that is not partitioned across devices (plain ``jit``, ``pmap``
or a fully manual ``shard_map``). Everywhere else (GPU and TPU, sharded
``jit``, ``jax.export``) it lowers the pure-JAX ``reference``
that defines the kernel's results, which also gives its ``vmap`` and ``jvp``
rules. The kernels are used only when the library loaded and passed a
self-test; ``OPTAX_ADAPTIVE_CPU_KERNELS=0`` turns them off.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.machinery
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core
from jax.interpreters import ad, batching, mlir

from optax_adaptive import _common

LIBRARY_STEM = "_cprop_cpu_kernels"
DISABLE_VARIABLE = "OPTAX_ADAPTIVE_CPU_KERNELS"
_forced_off = False  # set by xla_loops()


def _library_path() -> pathlib.Path | None:
  here = pathlib.Path(__file__).parent
  for suffix in importlib.machinery.EXTENSION_SUFFIXES:
    path = here / f"{LIBRARY_STEM}{suffix}"
    if path.exists():
      return path
  return None


@functools.cache
def _library() -> ctypes.CDLL | None:
  path = _library_path()
  return None if path is None else ctypes.CDLL(str(path))


def disabled_reason() -> str | None:
  """Why the kernels are off (None when they may be used)."""
  if os.environ.get(DISABLE_VARIABLE, "1") == "0":
    return f"{DISABLE_VARIABLE}=0"
  try:
    library = _library()
  except OSError as error:
    return f"the kernel library did not load: {error}"
  if library is None:
    return "the kernel library was not built (see setup.py)"
  return None


def _use_handler(ctx: mlir.LoweringRuleContext) -> bool:
  """Whether this lowering may call a CPU handler on whole arrays."""
  if tuple(ctx.module_context.platforms) != ("cpu",):
    return False
  parameters = getattr(ctx.module_context, "lowering_parameters", None)
  if getattr(parameters, "for_export", False):  # our targets are not stable
    return False
  axis_context = ctx.module_context.axis_context
  num_devices = getattr(axis_context, "num_devices", None)
  if num_devices is not None:  # jit: the partitioner would replicate it
    return num_devices == 1
  manual_axes = getattr(axis_context, "manual_axes", None)
  if manual_axes is not None:  # shard_map: per-device code if fully manual
    return set(axis_context.mesh.axis_names) <= set(manual_axes)
  return True  # pmap: per-device code


class LeafKernel:
  """A CPU FFI handler with a pure-JAX reference, as a JAX primitive.

  Args:
    name: the primitive's name.
    symbol: the handler's symbol in the library.
    reference: ``reference(*operands, **params) -> tuple of arrays``, the
      results the handler must reproduce; also its abstract evaluation.
    aliases: ``aliases(**params) -> {operand index: result index}``, the
      operands the handler updates in place.
    attributes: ``attributes(**params) -> dict`` of FFI attributes.
    self_test: ``self_test(kernel) -> bool``, run once before first use; it
      should compare ``kernel`` with ``reference`` on small inputs.
  """

  def __init__(self, name: str, symbol: str,
               reference: Callable[..., tuple[jax.Array, ...]],
               aliases: Callable[..., Mapping[int, int]],
               attributes: Callable[..., dict[str, Any]],
               self_test: Callable[[LeafKernel], bool]):
    self.name = name
    self.target = f"optax_adaptive_{name}"
    self._symbol = symbol
    self.reference = reference
    self._aliases = aliases
    self._attributes = attributes
    self._self_test = self_test
    self._registered = False
    self.primitive = jex_core.Primitive(name)
    self.primitive.multiple_results = True
    self.primitive.def_impl(self._impl)
    self.primitive.def_abstract_eval(self._abstract_eval)
    mlir.register_lowering(self.primitive, self._lowering)
    batching.primitive_batchers[self.primitive] = self._batch
    ad.primitive_jvps[self.primitive] = self._jvp

  def __call__(self, *operands: jax.Array, **params: Any
               ) -> tuple[jax.Array, ...]:
    return tuple(self.primitive.bind(*operands, **params))

  @functools.cached_property
  def unavailable_reason(self) -> str | None:
    """Why this kernel is not used (None when it is); checked once."""
    reason = disabled_reason()
    if reason is not None:
      return reason
    if not self._registered:
      handler = getattr(_library(), self._symbol)
      jax.ffi.register_ffi_target(
          self.target, jax.ffi.pycapsule(handler), platform="cpu")
      self._registered = True
    try:
      with jax.ensure_compile_time_eval():
        passed = self._self_test(self)
    except Exception as error:  # any failure disables the kernel
      return f"the self-test raised {type(error).__name__}: {error}"
    return None if passed else "the self-test gave different results"

  # ------------------------------------------------------------ rules

  def _impl(self, *operands, **params):
    return jax.jit(functools.partial(self.primitive.bind, **params))(
        *operands)

  def _abstract_eval(self, *avals, **params):
    shapes = jax.eval_shape(functools.partial(self.reference, **params),
                            *avals)
    return [jax.core.ShapedArray(s.shape, s.dtype) for s in shapes]

  def _lowering(self, ctx, *operands, **params):
    if _use_handler(ctx):
      lower = jax.ffi.ffi_lowering(
          self.target, operand_output_aliases=dict(self._aliases(**params)))
      return lower(ctx, *operands, **self._attributes(**params))
    return mlir.lower_fun(functools.partial(self.reference, **params),
                          multiple_results=True)(ctx, *operands)

  def _batch(self, operands: Sequence[jax.Array], dims: Sequence[Any],
             **params):
    in_axes = [d if isinstance(d, int) else None for d in dims]  # unbatched
    outputs = jax.vmap(functools.partial(self.reference, **params),
                       in_axes=in_axes)(*operands)
    return outputs, [0] * len(outputs)

  def _jvp(self, primals, tangents, **params):
    tangents = [ad.instantiate_zeros(t) for t in tangents]
    primal_out, tangent_out = jax.jvp(
        functools.partial(self.reference, **params), tuple(primals),
        tuple(tangents))
    return list(primal_out), list(tangent_out)


@contextlib.contextmanager
def xla_loops():
  """Computations traced inside use XLA's loops instead of the kernels.

  For comparisons (benchmarks, tests): the choice is made while tracing, so
  a function jitted inside keeps it for later calls.
  """
  global _forced_off
  previous, _forced_off = _forced_off, True
  try:
    yield
  finally:
    _forced_off = previous


def usable(kernel: LeafKernel, *arrays: jax.Array) -> bool:
  """Whether ``kernel`` may take these operands (checked while tracing).

  float32 arrays of at least one element, not explicitly sharded (under an
  explicit mesh the primitive would need sharding rules; the reference path
  has them), a CPU default backend (elsewhere the kernels would only be
  traced and discarded), and a kernel library that loaded and passed its
  self-test.
  """
  if _forced_off or jax.default_backend() != "cpu":
    return False
  for x in arrays:
    aval = jax.typeof(x)
    if (aval.dtype != jnp.float32 or aval.size == 0
        or _common.explicitly_sharded(x)):
      return False
  return kernel.unavailable_reason is None


def close(kernel: LeafKernel, operands: Sequence[np.ndarray],
          params: Mapping[str, Any], rtol: float = 1e-5) -> bool:
  """The self-test helper: kernel and reference agree on ``operands``."""
  cpu = jax.devices("cpu")[0]
  operands = [jax.device_put(np.asarray(x), cpu) for x in operands]
  bound = functools.partial(kernel.primitive.bind, **params)
  got = jax.jit(bound)(*operands)
  expected = jax.jit(functools.partial(kernel.reference, **params))(
      *operands)
  return all(
      np.allclose(np.asarray(g), np.asarray(e), rtol=rtol, atol=1e-30,
                  equal_nan=True)
      for g, e in zip(got, expected, strict=True))
