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
"""Helpers shared by every transformation of optax_adaptive.

Everything that more than one method needs lives here once: the dtype policy
for statistics, safe division, the float32 dot product of two pytrees,
schedules, and hyperparameter validation that stays out of the way of
:func:`optax.inject_hyperparams`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

_LOW_PRECISION = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


# ------------------------------------------------------------------- dtypes


def stats_dtype(dtype: Any) -> jnp.dtype:
  """The dtype in which statistics of a leaf of ``dtype`` are kept.

  float32 for float16/bfloat16 leaves (their EMAs stall and their ``1 - beta``
  rounds to zero), the leaf's own dtype for float32/float64, float32 for
  anything else.
  """
  dtype = jnp.dtype(dtype)
  if dtype in _LOW_PRECISION or not jnp.issubdtype(dtype, jnp.floating):
    return jnp.dtype(jnp.float32)
  return dtype


def stats_zeros_like(tree: optax.Params) -> optax.Params:
  """Zeros shaped like ``tree`` in :func:`stats_dtype`, keeping its sharding.

  Works on concrete arrays and on :class:`jax.ShapeDtypeStruct` leaves.
  """
  return jax.tree.map(
      lambda x: jnp.zeros_like(x, dtype=stats_dtype(x.dtype)), tree
  )


def widest_float_dtype(tree: optax.Params) -> jnp.dtype:
  """float64 if any leaf is float64, else float32 (scalar state dtype)."""
  dtypes = {jnp.dtype(x.dtype) for x in jax.tree.leaves(tree)}
  if jnp.dtype(jnp.float64) in dtypes:
    return jnp.dtype(jnp.float64)
  return jnp.dtype(jnp.float32)


# ---------------------------------------------------------------- numerics


def safe_divide(
    numerator: jax.Array, denominator: jax.Array, fallback: Any = 0.0
) -> jax.Array:
  """``numerator / denominator`` where the denominator is non-zero.

  Elsewhere returns ``fallback``. The "double where" keeps the gradient of
  this function finite too.
  """
  nonzero = denominator != 0
  safe_den = jnp.where(nonzero, denominator, jnp.ones_like(denominator))
  return jnp.where(nonzero, numerator / safe_den, fallback)


def tree_vdot_f32(
    a: optax.Params, b: optax.Params, axis_name: Hashable | None = None
) -> jax.Array:
  """Sum over all leaves of ``<a, b>``, accumulated in at least float32.

  Each leaf is cast to :func:`stats_dtype` before the product, and the sum is
  ``psum``-ed over ``axis_name`` when the params are split model-parallel
  over that mapped axis. Not :func:`optax.tree.vdot`: that one keeps a
  bfloat16 leaf's dtype, and it contracts with ``jnp.vdot``, while an
  element-wise product and a sum stay well defined over an axis sharded
  under an Explicit mesh.
  """
  parts = jax.tree.leaves(
      jax.tree.map(
          lambda x, y: jnp.sum(
              x.astype(stats_dtype(x.dtype)) * y.astype(stats_dtype(y.dtype))
          ),
          a,
          b,
      )
  )
  total = sum(parts[1:], parts[0]) if parts else jnp.zeros((), jnp.float32)
  if axis_name is not None:
    total = jax.lax.psum(total, axis_name)
  return total


def tree_norm_f32(
    tree: optax.Params, axis_name: Hashable | None = None
) -> jax.Array:
  """Global L2 norm of ``tree``, accumulated in at least float32."""
  return jnp.sqrt(tree_vdot_f32(tree, tree, axis_name))


# -------------------------------------------------------------- schedules


def value_at(hyperparam: optax.ScalarOrSchedule, count: jax.Array) -> Any:
  """Evaluates a schedule at ``count``, or returns a constant unchanged."""
  return hyperparam(count) if callable(hyperparam) else hyperparam


# ------------------------------------------------------------- validation


def is_concrete_number(value: Any) -> bool:
  """True for Python/NumPy numbers, which may be validated at construction.

  Traced values (from :func:`optax.inject_hyperparams`) and jax arrays are
  never validated, so that injection keeps working.
  """
  if isinstance(value, bool):
    return False
  return isinstance(value, (numbers.Real, np.number))


def check_range(
    name: str,
    value: Any,
    *,
    lower: float | None = None,
    upper: float | None = None,
    lower_inclusive: bool = True,
    upper_inclusive: bool = True,
) -> None:
  """Raises ``ValueError`` naming ``name`` if a concrete value is out of range.

  Non-concrete values (traced arrays, schedules) are accepted unchecked;
  anything else that is not a number (a string, None, a bool, a list) raises
  ``TypeError`` naming ``name``.
  """
  if not is_concrete_number(value):
    check_number_type(name, value)
    return
  value = float(value)
  bad = np.isnan(value)
  if lower is not None:
    bad |= value < lower if lower_inclusive else value <= lower
  if upper is not None:
    bad |= value > upper if upper_inclusive else value >= upper
  if bad:
    left = "(-inf" if lower is None else ("[" if lower_inclusive else "(")
    left += "" if lower is None else f"{lower}"
    right = "inf)" if upper is None else f"{upper}"
    right += "" if upper is None else ("]" if upper_inclusive else ")")
    raise ValueError(f"`{name}` must be in {left}, {right}; got {value}.")


def check_number_type(name: str, value: Any) -> None:
  """Raises ``TypeError`` naming ``name`` unless ``value`` can be a number.

  Accepted: Python/NumPy real numbers, arrays (concrete or traced) and
  callables (schedules); rejected: strings, None, bools, containers.
  """
  if is_concrete_number(value) or callable(value):
    return
  if isinstance(value, (jax.Array, np.ndarray)) or hasattr(
      value, "__jax_array__"):
    return
  raise TypeError(
      f"`{name}` must be a real number; got {type(value).__name__}"
      f" {value!r}.")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
  """Raises ``ValueError`` naming ``name`` if ``value`` is not a choice."""
  choices = tuple(choices)
  if value not in choices:
    raise ValueError(f"`{name}` must be one of {choices}; got {value!r}.")


def check_positive_int(name: str, value: Any, *, allow_none: bool = False):
  """Raises ``TypeError``/``ValueError`` unless ``value`` is an int >= 1.

  For counts that set an array shape in the state (LABPAL's ``avg_window``,
  AutoDrop's ``buffer_size``): they must be Python ints, so an array, which
  is what :func:`optax.inject_hyperparams` passes for every numeric argument
  not in its ``static_args``, gets an error that names that fix.
  """
  if value is None and allow_none:
    return
  if isinstance(value, (jax.Array, np.ndarray)) or hasattr(
      value, "__jax_array__"):
    raise TypeError(
        f"`{name}` sets the shape of an array in the optimizer state, so it"
        f" must be a Python int and cannot be injected; got an array"
        f" {value!r}. Under `optax.inject_hyperparams`, which passes every"
        f" numeric argument as an array, declare it static:"
        f" `optax.inject_hyperparams(factory, static_args=(\"{name}\",))`."
    )
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(
        f"`{name}` must be a Python int >= 1"
        f"{' or None' if allow_none else ''}; got {value!r}."
    )
  if value < 1:
    raise ValueError(f"`{name}` must be >= 1; got {value}.")


def check_count(name: str, value: Any, *, lower: int) -> None:
  """Raises unless ``value`` is an int >= ``lower``; arrays pass unchecked.

  For counts that :func:`optax.inject_hyperparams` may pass as (traced)
  arrays: ``TypeError`` for a float, a string or None, ``ValueError`` below
  ``lower``.
  """
  if isinstance(value, (jax.Array, np.ndarray)):
    return
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"`{name}` must be a Python int >= {lower}; got {value!r}.")
  if value < lower:
    raise ValueError(f"`{name}` must be an int >= {lower}; got {value}.")


def check_callable(name: str, value: Any, *, allow_none: bool = False):
  """Raises ``TypeError`` unless ``value`` is callable."""
  if value is None and allow_none:
    return
  if not callable(value):
    raise TypeError(f"`{name}` must be callable; got {value!r}.")


def require_params(params: Any, method: str) -> None:
  """Raises ``ValueError`` when a transformation needing params got none."""
  if params is None:
    raise ValueError(
        f"{method} requires `params`: call `tx.update(updates, state, params)`"
        " (nnx.Optimizer and TrainState pass them automatically)."
    )


def require_extra_arg(value: Any, name: str, method: str) -> None:
  """Raises ``TypeError`` naming a missing required extra argument."""
  if value is None:
    raise TypeError(
        f"{method} requires the keyword argument `{name}=` in `update`; pass"
        f" it as `tx.update(updates, state, params, {name}=...)`."
    )


def inner_update_fn(inner: optax.GradientTransformation) -> Callable[..., Any]:
  """The inner transformation's update, accepting extra keyword arguments."""
  return optax.with_extra_args_support(inner).update


def _leaf_path(path) -> str:
  return jax.tree_util.keystr(path) or "<root>"


def check_float_leaves(params: Any, method: str, *, maskable: bool = True):
  """Raises ``TypeError`` naming the first leaf that is not real floating.

  Integer, bool and complex leaves (an int32 step counter, say) cannot be
  optimised: their updates would be rounded or their imaginary part dropped.
  Works on arrays and :class:`jax.ShapeDtypeStruct` leaves (``init``).
  ``maskable`` says whether the fix is ``optax.masked`` (line searches must
  be outermost, so for them it is keeping such leaves out of the params).
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    dtype = getattr(leaf, "dtype", None)
    dtype = jnp.result_type(leaf) if dtype is None else jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating):
      continue
    fix = (
        "exclude it with `optax.masked(tx, mask)` (mask True on float leaves)"
        if maskable else
        "keep it out of the params given to the optimizer (e.g."
        " `nnx.Optimizer(model, tx, wrt=nnx.Param)`)")
    raise TypeError(
        f"{method}: leaf {_leaf_path(path)} has dtype {dtype}; only real"
        f" floating-point leaves can be optimised; {fix}.")


def reject_masked_nodes(params: Any, method: str) -> None:
  """Raises ``ValueError`` when ``params`` has ``optax.MaskedNode`` holes.

  ``optax.masked`` and ``optax.partition`` hand their inner transformation
  such a tree; a line search would then evaluate ``value_fn`` on a partial
  model.
  """
  is_hole = lambda x: isinstance(x, optax.MaskedNode)
  if any(is_hole(x) for x in jax.tree.leaves(params, is_leaf=is_hole)):
    raise ValueError(
        f"{method} must be the outermost transformation: it got params with"
        " `optax.MaskedNode` holes, i.e. it runs inside `optax.masked` or"
        " `optax.partition`, where `value_fn` would not see the whole"
        " model. Apply it at the top level instead.")


def run_if(pred: jax.Array, fn: Callable[[Any], Any], operand: Any) -> Any:
  """``fn(operand)`` if ``pred`` else ``operand``, keeping buffers in place.

  A zero- or one-trip :func:`jax.lax.while_loop` rather than
  :func:`jax.lax.cond`: XLA aliases a loop's carried buffers with donated
  inputs, so a step that skips ``fn`` neither copies nor rewrites the
  params-sized state, while ``lax.cond`` copies every buffer that its false
  branch passes through (seen in the compiled HLO on XLA:CPU). The price: no
  reverse-mode differentiation through the caller.
  """

  def body(carry):
    _, value = carry
    return jnp.zeros((), jnp.bool_), fn(value)

  return jax.lax.while_loop(
      lambda carry: carry[0], body, (jnp.asarray(pred, jnp.bool_), operand)
  )[1]


def explicitly_sharded(x: Any) -> bool:
  """Whether ``x``'s type carries a sharding over some mesh axis (explicit
  sharding mode); False for unsharded values and in auto mode."""
  spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
  return spec is not None and any(axis is not None for axis in spec)
