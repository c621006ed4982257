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
"""Invalid hyperparameters, missing extra arguments and misuse.

Every parameter of every public factory is listed in exactly one of
``NUMERIC``, ``CHOICES`` or ``OTHER`` (the last with the reason it needs no
range check); ``test_every_parameter_has_a_row`` fails when a factory gains a
parameter without a row, and a parameter with a numeric default must be in
``NUMERIC``. Each ``NUMERIC`` row is then checked three ways: a bad concrete
value raises ``ValueError`` naming the parameter and its allowed range, a
string raises ``TypeError`` naming it, and the bad value as a traced array
(as under ``optax.inject_hyperparams``) is not validated.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import optax
import pytest

import optax_adaptive as oa
from tests._registry import NOT_TRANSFORMATIONS
from tests._registry import REQUIRED as BASE


def _kernel():
  return jnp.ones((2, 2, 2, 2))


@dataclasses.dataclass(frozen=True)
class Row:
  """A numeric hyperparameter: a bad value and the range the error shows.

  ``kind`` is "real" (NaN is a ValueError) or "count" (an int: NaN and
  floats are TypeErrors). ``static``: the value sets a shape, so it cannot
  be traced (pass it in ``static_args`` of inject_hyperparams).
  """

  bad: Any
  allowed: str
  kind: str = "real"
  static: bool = False


_UNIT = "[0.0, 1.0)"
_NONNEG = "[0.0, inf)"
_POS = "(0.0, inf)"

NUMERIC: dict[tuple[str, str], Row] = {
    ("cprop", "beta"): Row(1.5, _UNIT),
    ("cprop", "c"): Row(-1.0, _NONNEG),
    ("cprop", "eps"): Row(-1e-8, _NONNEG),
    ("cprop_sgd", "learning_rate"): Row(-0.1, _NONNEG),
    ("cprop_sgd", "momentum"): Row(-0.5, _NONNEG),
    ("cprop_sgd", "weight_decay"): Row(-1e-4, _NONNEG),
    ("cprop_sgd", "beta"): Row(1.0, _UNIT),
    ("cprop_sgd", "c"): Row(-3.0, _NONNEG),
    ("cprop_sgd", "eps"): Row(-1.0, _NONNEG),
    ("cprop_adam", "learning_rate"): Row(-1e-3, _NONNEG),
    ("cprop_adam", "b1"): Row(1.0, _UNIT),
    ("cprop_adam", "b2"): Row(-0.1, _UNIT),
    ("cprop_adam", "eps"): Row(-1e-8, _NONNEG),
    ("cprop_adam", "weight_decay"): Row(-0.1, _NONNEG),
    ("cprop_adam", "beta"): Row(2.0, _UNIT),
    ("cprop_adam", "c"): Row(-1.0, _NONNEG),
    ("cprop_adam", "cprop_eps"): Row(-1e-5, _NONNEG),
    ("adas", "learning_rate"): Row(-0.03, _NONNEG),
    ("adas", "beta"): Row(1.0, _UNIT),
    ("adas", "zeta"): Row(-1.0, _NONNEG),
    ("adas", "min_lr"): Row(-1e-20, _NONNEG),
    ("adas", "momentum"): Row(1.5, "[0.0, 1.0]"),
    ("adas", "weight_decay"): Row(-5e-4, _NONNEG),
    ("adas", "steps_per_epoch"): Row(0, ">= 1", "count"),
    ("adas", "p"): Row(3, "1 or 2", static=True),  # kept in the static config
    ("autodrop", "window_size"): Row(0, ">= 1", "count"),
    ("autodrop", "drop_factor"): Row(0.0, "(0.0, 1.0]"),
    ("autodrop", "buffer_size"): Row(0, ">= 1", "count", static=True),
    ("autodrop", "threshold_deg"): Row(-0.1, _NONNEG),
    ("autodrop", "min_scale"): Row(1.5, "[0.0, 1.0]"),
    ("autodrop", "eps"): Row(-1e-8, _NONNEG),
    ("autodrop_v1", "steps_per_epoch"): Row(1, ">= 2", "count"),
    ("autodrop_v1", "drop_factor"): Row(1.5, "(0.0, 1.0]"),
    ("autodrop_v1", "theta0"): Row(-0.01, _NONNEG),
    ("autodrop_v1", "theta_max"): Row(-1.0, _NONNEG),
    ("autodrop_v1", "patience_epochs"): Row(0, ">= 1", "count"),
    ("autodrop_v1", "min_scale"): Row(-0.1, "[0.0, 1.0]"),
    ("autodrop_v1", "eps"): Row(-1e-8, _NONNEG),
    ("pal", "measuring_step"): Row(0.0, _POS),
    ("pal", "update_step_adaptation"): Row(-1.0, _POS),
    ("pal", "max_step"): Row(-1.0, _NONNEG),
    ("pal", "momentum"): Row(1.0, _UNIT),
    ("pal", "eps"): Row(0.0, _POS),
    ("scale_by_pal", "measuring_step"): Row(-1.0, _POS),
    ("scale_by_pal", "update_step_adaptation"): Row(0.0, _POS),
    ("scale_by_pal", "max_step"): Row(-3.16, _NONNEG),
    ("scale_by_pal", "eps"): Row(-1e-10, _POS),
    ("knowledge_gain", "p"): Row(3, "1 or 2"),
}
for _name in ("labpal", "scale_by_labpal"):
  NUMERIC.update({
      (_name, "reuse_steps"): Row(0, ">= 1", "count"),
      (_name, "approx_batches"): Row(0, ">= 1", "count"),
      (_name, "measuring_step"): Row(0.0, _POS),
      (_name, "fd_step"): Row(-1e-4, _POS),
      (_name, "update_step_adaptation"): Row(0.0, _POS),
      (_name, "max_step"): Row(0.0, _POS),
      (_name, "untrusted_updates"): Row(-1, ">= 0", "count"),
      (_name, "avg_window"): Row(0, ">= 1", "count", static=True),
      (_name, "eps"): Row(0.0, _POS),
      (_name, "momentum"): Row(1.0, _UNIT),
  })

# String choices: a bad value is a ValueError listing the choices.
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("cprop", "cdf"): ("normal", "bft", "bfo", "logistic"),
    ("cprop_sgd", "cdf"): ("normal", "bft", "bfo", "logistic"),
    ("cprop_adam", "cdf"): ("normal", "bft", "bfo", "logistic"),
    ("adas", "solver"): ("brent_ref", "golden_log"),
    ("adas", "spectrum"): ("gram", "svd"),
    ("autodrop", "kernel"): ("range", "time"),
    ("autodrop", "center"): ("middle", "newest"),
    ("labpal", "mode"): ("nsgd", "sgd"),
    ("labpal", "fit"): ("reference", "exact"),
    ("scale_by_labpal", "mode"): ("nsgd", "sgd"),
    ("scale_by_labpal", "fit"): ("reference", "exact"),
    ("labpal", "cap"): ("fixed", "reference"),
    ("scale_by_labpal", "cap"): ("fixed", "reference"),
    ("knowledge_gain", "solver"): ("brent_ref", "golden_log"),
    ("knowledge_gain", "spectrum"): ("gram", "svd"),
}

_FLAG = "a bool flag: any value is read as true or false"
_AXIS = "a mapped axis name, checked by jax where it is used"
_RENAMED = ("the deprecated name of measuring_step, checked as that:"
            " test_labpal.py::test_measuring_step_is_the_name_*")
OTHER: dict[tuple[str, str], str] = {
    ("cprop", "inner"): "a transformation: test_cprop_inner_type",
    ("cprop_sgd", "nesterov"): _FLAG,
    ("cprop", "track_mean_scale"): _FLAG,
    ("cprop_sgd", "track_mean_scale"): _FLAG,
    ("cprop_adam", "track_mean_scale"): _FLAG,
    ("cprop", "axis_name"): _AXIS,
    ("cprop_sgd", "axis_name"): _AXIS,
    ("cprop_adam", "axis_name"): _AXIS,
    ("adas", "layer_groups"): "a callable or None: test_callable_arguments",
    ("adas", "transpose_tall"): _FLAG,
    ("adas", "hold_lr_while_zero_gain"): _FLAG,
    ("autodrop", "two_sided"): _FLAG,
    ("autodrop", "reset_c_after_drop"): _FLAG,
    ("autodrop", "average_window"): _FLAG,
    ("autodrop", "state_dtype"): "a dtype: test_state_dtype",
    ("autodrop", "axis_name"): _AXIS,
    ("autodrop_v1", "average_on_drop"): _FLAG,
    ("autodrop_v1", "auto_theta"): _FLAG,
    ("autodrop_v1", "state_dtype"): "a dtype: test_state_dtype",
    ("autodrop_v1", "axis_name"): _AXIS,
    ("pal", "exact_directional_derivative"): _FLAG,
    ("pal", "axis_name"): "str or None: test_axis_name",
    ("scale_by_pal", "exact_directional_derivative"): _FLAG,
    ("scale_by_pal", "axis_name"): "str or None: test_axis_name",
    ("labpal", "norm_bounds"): "a pair: test_norm_bounds",
    ("labpal", "axis_name"): "str or None: test_axis_name",
    ("scale_by_labpal", "norm_bounds"): "a pair: test_norm_bounds",
    ("scale_by_labpal", "axis_name"): "str or None: test_axis_name",
    ("labpal", "measure_step"): _RENAMED,
    ("scale_by_labpal", "measure_step"): _RENAMED,
    ("knowledge_gain", "kernel"): "the input array: test_knowledge_gain_kernel",
    ("knowledge_gain", "transpose_tall"): _FLAG,
}


def _call(name: str, **overrides):
  return getattr(oa, name)(**{**BASE[name], **overrides})


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


# ----------------------------------------------------------- completeness


def test_every_parameter_has_a_row():
  """Adding a hyperparameter without a validation row fails here."""
  tables = (set(NUMERIC), set(CHOICES), set(OTHER))
  assert not (tables[0] & tables[1] or tables[0] & tables[2]
              or tables[1] & tables[2]), "a parameter is in two tables"
  listed = set().union(*tables)
  seen = set()
  for name in BASE:
    for param in inspect.signature(getattr(oa, name)).parameters.values():
      key = (name, param.name)
      seen.add(key)
      assert key in listed, f"no validation row for {key}"
      if _is_number(param.default):
        assert key in NUMERIC, f"{key} has a numeric default: add a Row"
      if isinstance(param.default, str):
        assert key in CHOICES, f"{key} is a string choice: add it"
  assert listed == seen, f"rows for unknown parameters: {listed - seen}"


def test_every_public_factory_is_covered():
  """Every public transformation factory (and knowledge_gain) has a row."""
  factories = {name for name in oa.__all__ if name[0].islower()}
  factories -= NOT_TRANSFORMATIONS
  assert factories | {"knowledge_gain"} == set(BASE)


def test_defaults_are_valid():
  for name in BASE:
    _call(name)


# ------------------------------------------------------- numeric: values


_NUMERIC_IDS = [f"{n}-{p}" for n, p in NUMERIC]


@pytest.mark.parametrize(("key", "row"), NUMERIC.items(), ids=_NUMERIC_IDS)
def test_bad_value_names_parameter_and_range(key, row):
  name, param = key
  with pytest.raises(ValueError) as error:
    _call(name, **{param: row.bad})
  message = str(error.value)
  assert f"`{param}`" in message
  assert row.allowed in message, message
  assert str(row.bad) in message or repr(float(row.bad)) in message


@pytest.mark.parametrize(("key", "row"), NUMERIC.items(), ids=_NUMERIC_IDS)
def test_nan_is_rejected(key, row):
  name, param = key
  error = ValueError if row.kind == "real" else TypeError
  with pytest.raises(error, match=f"`{param}`"):
    _call(name, **{param: math.nan})


@pytest.mark.parametrize(("key", "row"), NUMERIC.items(), ids=_NUMERIC_IDS)
@pytest.mark.parametrize("wrong", ["0.5", [0.5]], ids=["str", "list"])
def test_wrong_type_names_parameter(key, row, wrong):
  name, param = key
  with pytest.raises(TypeError, match=f"`{param}`"):
    _call(name, **{param: wrong})


_COUNTS = {k: r for k, r in NUMERIC.items() if r.kind == "count"}


@pytest.mark.parametrize(("key", "row"), _COUNTS.items(),
                         ids=[f"{n}-{p}" for n, p in _COUNTS])
def test_counts_reject_floats(key, row):
  name, param = key
  with pytest.raises(TypeError, match=f"`{param}` must be a Python int"):
    _call(name, **{param: 2.5})


_TRACEABLE = {k: r for k, r in NUMERIC.items() if not r.static}


@pytest.mark.parametrize(("key", "row"), _TRACEABLE.items(),
                         ids=[f"{n}-{p}" for n, p in _TRACEABLE])
def test_traced_values_are_not_validated(key, row):
  """Under inject_hyperparams (or any trace) a bad value passes the factory."""
  name, param = key
  params = {"conv": {"kernel": _kernel()}}

  @jax.jit
  def build(value):
    result = _call(name, **{param: value})
    if isinstance(result, optax.GradientTransformation):
      return result.init(params)
    return result

  jax.eval_shape(build, jnp.asarray(row.bad))


def test_inject_hyperparams_still_validates_nothing_at_construction():
  """Injected numbers arrive as arrays; only the outer call sees Python."""
  tx = optax.inject_hyperparams(oa.cprop_sgd)(learning_rate=0.1, beta=0.9)
  state = tx.init({"w": jnp.ones(2)})
  assert float(state.hyperparams["beta"]) == pytest.approx(0.9)


# ------------------------------------------------------ choices and others


@pytest.mark.parametrize(("key", "choices"), CHOICES.items(),
                         ids=[f"{n}-{p}" for n, p in CHOICES])
def test_bad_choice_lists_the_choices(key, choices):
  name, param = key
  with pytest.raises(ValueError, match=f"`{param}` must be one of") as error:
    _call(name, **{param: "nonsense"})
  for choice in choices:
    assert repr(choice) in str(error.value)


def test_cprop_inner_type():
  for bad in (optax.sgd, 0.1, None):
    with pytest.raises(TypeError, match="`inner` must be an optax"):
      oa.cprop(bad)
  oa.cprop(optax.MultiSteps(optax.sgd(0.1), 2))  # duck-typed init/update


def test_callable_arguments():
  with pytest.raises(TypeError, match="`layer_groups` must be callable"):
    oa.adas(layer_groups="conv")
  with pytest.raises(TypeError, match="`learning_rate` must be a number"):
    oa.adas(learning_rate=optax.constant_schedule(0.1))


def test_state_dtype():
  for name in ("autodrop", "autodrop_v1"):
    with pytest.raises(ValueError, match="`state_dtype` must be a floating"):
      _call(name, state_dtype=jnp.int32)
    with pytest.raises(TypeError, match="`state_dtype`"):
      _call(name, state_dtype="no-such-dtype")


def test_axis_name():
  for name in ("pal", "scale_by_pal", "labpal", "scale_by_labpal"):
    with pytest.raises(TypeError, match="`axis_name` must be None or a str"):
      _call(name, axis_name=0)


def test_norm_bounds():
  for name in ("labpal", "scale_by_labpal"):
    with pytest.raises(TypeError, match="`norm_bounds` must be a tuple"):
      _call(name, norm_bounds=[1e-3, 100.0])
    with pytest.raises(ValueError, match=re.escape("0 <= low < high")):
      _call(name, norm_bounds=(100.0, 1e-3))
    with pytest.raises(TypeError, match="`norm_bounds` must be a real"):
      _call(name, norm_bounds=(1e-3, "100"))


def test_labpal_fd_step_below_measuring_step():
  with pytest.raises(ValueError, match=r"`fd_step`.*`measuring_step`"):
    oa.labpal(fd_step=0.1, measuring_step=0.01)


def test_knowledge_gain_kernel():
  with pytest.raises(ValueError, match="`kernel` must have at least 2"):
    oa.knowledge_gain(jnp.ones(3))
  gain = oa.knowledge_gain([[1.0, 0.0], [0.0, 1.0]])  # array-like accepted
  assert jnp.isfinite(gain.gain)


# ------------------------------------------- missing required extra arguments


def _loss(params, x):
  return jnp.sum(jnp.square(params["w"] - x))


_PARAMS = {"w": jnp.array([1.0, -2.0])}
_X = jnp.array([0.5, 0.5])


def _pal_kwargs():
  value, grad = jax.value_and_grad(_loss)(_PARAMS, _X)
  return dict(value=value, grad=grad, value_fn=_loss, x=_X)


def _labpal_kwargs():
  grad = jax.grad(_loss)(_PARAMS, _X)
  return dict(grad=grad, value_fn=_loss,
              approx_batch={"x": jnp.stack([_X] * 10)})


_EXTRA = {
    "pal": (_pal_kwargs, ("value", "grad", "value_fn")),
    "scale_by_pal": (_pal_kwargs, ("value", "grad", "value_fn")),
    "labpal": (_labpal_kwargs, ("grad", "value_fn", "approx_batch")),
    "scale_by_labpal": (_labpal_kwargs, ("grad", "value_fn", "approx_batch")),
}


@pytest.mark.parametrize(("name", "missing"), [
    (name, arg) for name, (_, args) in _EXTRA.items() for arg in args])
def test_missing_extra_argument_is_named(name, missing):
  make, _ = _EXTRA[name]
  tx = _call(name)
  kwargs = make()
  del kwargs[missing]
  with pytest.raises(TypeError, match=f"keyword argument `{missing}=`"):
    tx.update(kwargs.get("grad", _PARAMS), tx.init(_PARAMS), _PARAMS,
              **kwargs)


def test_pal_without_grad_is_fine_when_not_needed():
  tx = oa.pal(exact_directional_derivative=False)
  kwargs = _pal_kwargs()
  grad = kwargs.pop("grad")
  updates, _ = tx.update(grad, tx.init(_PARAMS), _PARAMS, **kwargs)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("name", list(_EXTRA))
def test_value_fn_must_be_callable(name):
  make, _ = _EXTRA[name]
  tx = _call(name)
  kwargs = {**make(), "value_fn": "loss"}
  with pytest.raises(TypeError, match="`value_fn` must be callable"):
    tx.update(kwargs["grad"], tx.init(_PARAMS), _PARAMS, **kwargs)


def test_labpal_approx_batch_errors():
  tx = oa.labpal()
  state = tx.init(_PARAMS)
  kwargs = _labpal_kwargs()
  with pytest.raises(TypeError, match="`approx_batch` must be a mapping"):
    tx.update(kwargs["grad"], state, _PARAMS,
              **{**kwargs, "approx_batch": [_X]})
  with pytest.raises(TypeError, match="not arguments of `value_fn`"):
    tx.update(kwargs["grad"], state, _PARAMS,
              **{**kwargs, "approx_batch": {"y": jnp.stack([_X] * 10)}})
  with pytest.raises(ValueError, match="not a multiple of `approx_batches`"):
    tx.update(kwargs["grad"], state, _PARAMS,
              **{**kwargs, "approx_batch": {"x": jnp.stack([_X] * 3)}})


_NEEDS_PARAMS = {
    "adas (weight decay)": lambda: oa.adas(),
    "adas (steps_per_epoch)": lambda: oa.adas(weight_decay=0.0,
                                              steps_per_epoch=2),
    "autodrop": lambda: oa.autodrop(window_size=4),
    "autodrop_v1": lambda: oa.autodrop_v1(steps_per_epoch=4),
    "cprop_adam (weight decay)": lambda: oa.cprop_adam(weight_decay=0.1),
    "autodrop in a chain": lambda: optax.chain(
        optax.sgd(0.1), oa.autodrop(window_size=4)),
}


@pytest.mark.parametrize("make", _NEEDS_PARAMS.values(), ids=_NEEDS_PARAMS)
def test_missing_params_is_named(make):
  tx = make()
  with pytest.raises(ValueError, match="requires `params`"):
    tx.update(_PARAMS, tx.init(_PARAMS))


@pytest.mark.parametrize("name", list(_EXTRA))
def test_line_search_without_params(name):
  make, _ = _EXTRA[name]
  tx = _call(name)
  kwargs = make()
  with pytest.raises(ValueError, match="requires `params`"):
    tx.update(kwargs["grad"], tx.init(_PARAMS), None, **kwargs)


def test_params_not_needed_without_decay_or_epochs():
  # (cprop_sgd always chains optax.add_decayed_weights, which needs params.)
  for tx in (oa.adas(weight_decay=0.0), oa.cprop_adam(),
             oa.cprop(optax.sgd(0.1))):
    updates, _ = tx.update(_PARAMS, tx.init(_PARAMS))
    assert jax.tree.structure(updates) == jax.tree.structure(_PARAMS)


# ------------------------------------------------------ wrong way round


@pytest.mark.parametrize("name", list(_EXTRA))
@pytest.mark.parametrize("wrapper", ["masked", "partition"])
def test_line_search_inside_masked_or_partition(name, wrapper):
  make, _ = _EXTRA[name]
  params = {"w": _PARAMS["w"], "b": jnp.ones(2)}
  if wrapper == "masked":
    tx = optax.masked(_call(name), {"w": True, "b": False})
  else:
    tx = optax.partition({"line": _call(name), "rest": optax.sgd(0.1)},
                         {"w": "line", "b": "rest"})
  value_fn = lambda p, x: _loss(p, x) + jnp.sum(p["b"] ** 2)
  value, grad = jax.value_and_grad(value_fn)(params, _X)
  kwargs = {**make(), "value": value, "grad": grad, "value_fn": value_fn}
  if "approx_batch" in kwargs:
    kwargs.pop("value")
  else:
    kwargs["x"] = _X
  with pytest.raises(ValueError, match="must be the outermost"):
    tx.update(grad, tx.init(params), params, **kwargs)


def test_adas_end_epoch_misuse():
  params = {"conv": {"kernel": _kernel()}}
  tx = oa.adas()
  state = tx.init(params)
  with pytest.raises(ValueError, match="holds no AdasState"):
    oa.adas_end_epoch(optax.sgd(0.1).init(params), params)
  with pytest.raises(ValueError, match="requires `params`"):
    oa.adas_end_epoch(state, None)
  other = {"a": {"kernel": _kernel()}, "b": {"kernel": _kernel()}}
  with pytest.raises(ValueError, match="2 conv layers; the state was built"):
    oa.adas_end_epoch(state, other)
  with pytest.raises(ValueError, match="holds no AdasState"):
    oa.adas_end_epoch(params, state)  # arguments swapped


def test_adas_early_stop_arguments():
  with pytest.raises(ValueError, match="`patience` must be an int >= 1"):
    oa.adas_early_stop(1.0, patience=0)
  with pytest.raises(TypeError, match="`patience`"):
    oa.adas_early_stop(1.0, patience=2.5)
  with pytest.raises(TypeError, match="`threshold` must be a real number"):
    oa.adas_early_stop(1.0, threshold="0.1")
  _, stop = oa.adas_early_stop(1.0, patience=1, threshold=-1.0)
  assert not bool(stop)


def test_autodrop_v1_theta0_at_most_theta_max():
  with pytest.raises(ValueError, match="`theta0` must be <= `theta_max`"):
    oa.autodrop_v1(steps_per_epoch=10, theta0=0.5, theta_max=0.1)
  oa.autodrop_v1(steps_per_epoch=10, theta0=0.1, theta_max=0.1)

