"""Property-based tests (hypothesis) of every public transformation.

Each example draws a variant (a nested dict/list/tuple tree with scalar,
size-1 and small leaves of mixed dtypes: float16, bfloat16 and float32, or
with float64 leaves under ``jax.enable_x64``, plus the method's static
settings), float hyperparameters and a random gradient stream, and runs
``_STEPS`` steps in one jitted ``lax.scan``. The stream mixes exact zeros,
each dtype's smallest normal numbers, large values (whose squares still fit
the statistics dtype) and log-uniform magnitudes between, with random signs,
and sometimes a whole step of zeros. Properties: for finite input the updates
and the state stay finite and the updates keep each leaf's dtype; each
method's adaptive quantity stays in its documented range.

Compiling dominates the cost, so the float hyperparameters enter the jitted
run as traced (weakly typed) arrays, as under ``optax.inject_hyperparams``,
and each method has two variants: at most two compilations per test, however
many examples. Hypothesis runs derandomized and without an example database,
so CI is deterministic.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import strategies as st

import optax_adaptive as oa
from tests import _registry as R

_STEPS = 16

_SETTINGS = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow,
                           hypothesis.HealthCheck.data_too_large],
)

# ------------------------------------------------------------------ trees


@dataclasses.dataclass(frozen=True)
class _Leaf:
  """A leaf of a tree structure (a pytree leaf, not a tuple node)."""

  shape: tuple[int, ...]
  dtype: str


def _l(shape, dtype):
  return _Leaf(tuple(shape), dtype)


# Scalars, size-1 axes and a 3-D leaf; every nesting kind; mixed dtypes.
TREE_32 = {
    "a": _l((), "float16"),
    "b": [_l((1,), "bfloat16"), (_l((2, 1), "float32"), _l((1, 2, 3),
                                                           "float16"))],
    "c": (_l((3,), "float32"),),
}
TREE_64 = [
    _l((), "float64"),
    {"k": (_l((2, 1), "bfloat16"), _l((1,), "float64")),
     "z": _l((3,), "float16")},
    (_l((1, 2, 3), "float32"),),
]
# AdaS needs a conv layer (kernel ndim >= 3) and a dense head to move its
# per-layer and fc rates; the rest of the tree keeps the initial rate.
ADAS_TREE_32 = {
    "conv1": {"kernel": _l((2, 2, 1, 3), "float32"),
              "bias": _l((3,), "bfloat16")},
    "bn1": {"scale": _l((3,), "float32"), "bias": _l((3,), "float32")},
    "head": {"kernel": _l((3, 2), "bfloat16"), "bias": _l((2,), "float16")},
    "extra": [_l((), "float16"), (_l((1,), "float32"),)],
}
ADAS_TREE_64 = {
    "conv1": {"kernel": _l((3, 1, 2), "float64"),
              "bias": _l((2,), "float64")},
    "conv2": {"kernel": _l((1, 1, 2, 2), "float16")},
    "head": {"kernel": _l((2, 1), "float32")},
    "extra": (_l((), "float64"), [_l((1, 1), "bfloat16")]),
}

# log10 of the largest drawn magnitude per dtype: squares (second moments)
# and a few steps of accumulated updates stay finite in the statistics
# dtype, and float16 updates of rate-1 methods stay below its max (65504).
_LOG10_MAX = {"float16": 1.2, "bfloat16": 15.0, "float32": 15.0,
              "float64": 100.0}


def _log10_tiny(dtype: str) -> float:
  return math.log10(float(jnp.finfo(jnp.dtype(dtype)).tiny)) + 0.01


def _work_dtype(dtype):
  return np.float64 if jnp.dtype(dtype) == jnp.float64 else np.float32


@st.composite
def _streams(draw):
  """A random gradient stream, as fractions of each dtype's range."""
  a, b = sorted(draw(st.floats(0.0, 1.0)) for _ in range(2))
  return dict(
      seed=draw(st.integers(0, 2**31 - 1)),
      lo=a, hi=b,
      p_zero=draw(st.sampled_from([0.0, 0.1, 0.5])),
      p_edge=draw(st.sampled_from([0.0, 0.2])),
      p_zero_step=draw(st.sampled_from([0.0, 0.2])),
  )


def _gradient_stream(tree, stream):
  """``_STEPS`` finite gradients shaped like ``tree``, stacked.

  Drawn with NumPy, outside the compiled run (random-bit generation would
  dominate its compile time).
  """
  rng = np.random.default_rng(stream["seed"])
  zero_step = rng.uniform(size=(_STEPS,)) < stream["p_zero_step"]

  def leaf(spec):
    shape = (_STEPS, *spec.shape)
    low, high = _log10_tiny(spec.dtype), _LOG10_MAX[spec.dtype]
    lo = low + stream["lo"] * (high - low)
    hi = low + stream["hi"] * (high - low)
    pick = rng.uniform(size=shape)
    exponent = rng.uniform(lo, hi, size=shape)
    edge = stream["p_edge"]
    exponent = np.where(pick < edge / 2, lo,
                        np.where(pick < edge, hi, exponent))
    magnitude = np.where(pick >= 1 - stream["p_zero"], 0.0,
                         np.power(10.0, exponent))
    sign = rng.choice(np.array([-1.0, 1.0]), size=shape)
    zero = zero_step.reshape((-1,) + (1,) * len(spec.shape))
    g = np.where(zero, 0.0, sign * magnitude).astype(_work_dtype(spec.dtype))
    return jnp.asarray(g, spec.dtype)

  return jax.tree.map(leaf, tree)


def _initial_params(tree, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda spec: jnp.asarray(
          rng.normal(size=spec.shape).astype(_work_dtype(spec.dtype)),
          spec.dtype),
      tree)


# ----------------------------------------------------------------- runner


def _f32_or_wider(x):
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def loss(params, scale=1.0):
  """A smooth loss that is finite for every finite ``params``."""
  return scale * sum(jnp.sum(jnp.log1p(jnp.square(_f32_or_wider(x))))
                     for x in jax.tree.leaves(params))


@dataclasses.dataclass(frozen=True)
class Variant:
  """A tree, whether it needs float64, and the method's static settings."""

  tree: Any
  x64: bool
  static: tuple[tuple[str, Any], ...] = ()

  def __repr__(self):
    return f"Variant(x64={self.x64}, static={dict(self.static)})"


@dataclasses.dataclass(frozen=True)
class Method:
  """How to build and drive one public transformation with traced hypers.

  Attributes:
    name: test id.
    build: ``(hyper, static) -> transformation``.
    extra: ``(params, grad) -> extra update kwargs``.
    loss_gradient: add the true gradient of :func:`loss` to the stream (line
      searches then see descent directions as well as noise).
    reference: ``(hyper, static) -> transformation`` run alongside on the
      same gradients and params (stats-dtype inputs if ``cast_reference``).
    factories: the public factories that ``build`` uses across the
      variants (``name`` by default).
  """

  name: str
  build: Callable[[dict[str, jax.Array], dict[str, Any]], Any]
  extra: Callable[[Any, Any], dict[str, Any]] = lambda params, grad: {}
  loss_gradient: bool = False
  reference: Callable[..., Any] | None = None
  cast_reference: bool = False
  factories: tuple[str, ...] = ()

  def covers(self) -> tuple[str, ...]:
    return self.factories or (self.name,)


def _to_stats(tree):
  return jax.tree.map(lambda x: x.astype(_work_dtype(x.dtype)), tree)


@functools.partial(jax.jit, static_argnames=("method", "static"))
def _run(method, static, hyper, params, grads):
  """Steps along ``grads``; per-step (params, grad, updates, state, ref)."""
  static = dict(static)
  tx = method.build(hyper, static)
  ref = method.reference(hyper, static) if method.reference else None
  prep = _to_stats if method.cast_reference else (lambda t: t)

  def step(carry, grad):
    params, state, ref_state = carry
    if method.loss_gradient:
      grad = jax.tree.map(lambda g, d: (g + d).astype(g.dtype), grad,
                          jax.grad(loss)(params))
    updates, state = tx.update(grad, state, params,
                               **method.extra(params, grad))
    ref_updates = None
    if ref is not None:
      ref_updates, ref_state = ref.update(prep(grad), ref_state, prep(params))
    new_params = optax.apply_updates(params, updates)
    return ((new_params, state, ref_state),
            (params, grad, updates, state, ref_updates))

  ref_state = ref.init(prep(params)) if ref is not None else None
  carry = (params, tx.init(params), ref_state)
  return jax.lax.scan(step, carry, grads)[1]


def _as_arrays(hyper):
  """Traced, weakly typed hyperparameters: one compile for all their values.

  Weak types, as Python numbers have: a strongly typed float32 ``momentum``
  would promote ``optax.trace``'s bfloat16 buffer.
  """
  return {k: jnp.asarray(float(v)) for k, v in hyper.items()}


def _finite(tree) -> np.ndarray:
  """Per step (leading axis): are all floating leaves of ``tree`` finite."""
  ok = np.ones(_STEPS, bool)
  for leaf in jax.tree.leaves(tree):
    leaf = np.asarray(leaf)
    if leaf.dtype.kind == "f" or leaf.dtype.name == "bfloat16":
      flat = leaf.astype(np.float64).reshape(_STEPS, -1)
      ok &= np.all(np.isfinite(flat), axis=1)
  return ok


@dataclasses.dataclass
class History:
  params: Any
  grads: Any
  updates: Any
  state: Any
  reference: Any
  valid: np.ndarray  # steps whose input (params, gradient) is finite


def run_and_check(method, variant, hyper, stream) -> History:
  """Runs a stream and checks the common properties.

  Steps are checked while their input is finite: a float16 run may
  overflow its *params* after large updates, which is the dtype's limit,
  not the method's fault.
  """
  with jax.enable_x64(variant.x64):
    params = _initial_params(variant.tree, stream["seed"] % 1000)
    grads = _gradient_stream(variant.tree, stream)
    out = _run(method, variant.static, _as_arrays(hyper), params, grads)
    out = jax.tree.map(np.asarray, out)
  history = History(*out, valid=None)
  valid = _finite(history.params) & _finite(history.grads)
  history.valid = np.cumprod(valid).astype(bool)
  assert history.valid[0], "the drawn input itself is not finite"
  bad = history.valid & ~_finite(history.updates)
  assert not bad.any(), f"non-finite updates at steps {np.flatnonzero(bad)}"
  bad = history.valid & ~_finite(history.state)
  assert not bad.any(), f"non-finite state at steps {np.flatnonzero(bad)}"
  for u, p in zip(jax.tree.leaves(history.updates),
                  jax.tree.leaves(params)):
    assert u.dtype == p.dtype, f"updates {u.dtype} for params {p.dtype}"
  return history


def _field(history, name):
  """A state field over the valid steps, as float64."""
  return np.asarray(optax.tree.get(history.state, name),
                    np.float64)[history.valid]


def _eps(dtype) -> float:
  return float(jnp.finfo(jnp.dtype(dtype)).eps)


def _f32(x) -> float:
  return float(np.float32(x))


def _in_dtype_of(value, history, name) -> float:
  """``value`` rounded to the dtype of state field ``name``."""
  dtype = np.asarray(optax.tree.get(history.state, name)).dtype
  return float(np.asarray(value, dtype))


def _variants(*variants):
  return st.sampled_from(variants)


# ------------------------------------------------------------------ CProp


def _cprop_hyper(draw):
  return dict(
      lr=draw(st.sampled_from([1e-3, 0.1])),
      momentum=draw(st.sampled_from([0.0, 0.9])),
      beta=draw(st.sampled_from([0.0, 0.5, 0.9, 0.999, 0.99999])),
      c=draw(st.sampled_from([0.0, 0.3, 1.0, 3.0])),
      eps=draw(st.sampled_from([0.0, 1e-8, 1e-3])),
      weight_decay=draw(st.sampled_from([0.0, 1e-4])),
      b1=draw(st.sampled_from([0.0, 0.9])),
      b2=draw(st.sampled_from([0.9, 0.999])),
      adam_eps=draw(st.sampled_from([1e-8, 1e-3])),
  )


def _cprop_build(hyper, static):
  inner = optax.sgd(hyper["lr"], momentum=hyper["momentum"])
  return oa.cprop(inner, beta=hyper["beta"], c=hyper["c"], eps=hyper["eps"],
                  cdf=static["cdf"])


def _cprop_inner(hyper, static):
  del static
  return optax.sgd(hyper["lr"], momentum=hyper["momentum"])


def _cprop_sgd_build(hyper, static):
  return oa.cprop_sgd(hyper["lr"], momentum=hyper["momentum"],
                      nesterov=static["nesterov"],
                      weight_decay=hyper["weight_decay"], beta=hyper["beta"],
                      c=hyper["c"], eps=hyper["eps"], cdf=static["cdf"])


def _cprop_sgd_inner(hyper, static):
  """What cprop_sgd scales (its documented equivalent)."""
  return optax.chain(
      optax.add_decayed_weights(hyper["weight_decay"]),
      optax.sgd(hyper["lr"], momentum=hyper["momentum"],
                nesterov=static["nesterov"]))


def _cprop_adam_b2(hyper, static):
  return hyper["beta"] if static["share"] else hyper["b2"]


def _cprop_adam_build(hyper, static):
  return oa.cprop_adam(hyper["lr"], b1=hyper["b1"],
                       b2=_cprop_adam_b2(hyper, static),
                       eps=hyper["adam_eps"],
                       weight_decay=hyper["weight_decay"], beta=hyper["beta"],
                       c=hyper["c"], cprop_eps=hyper["eps"],
                       cdf=static["cdf"])


def _cprop_adam_reference(hyper, static):
  """Unscaled Adam with the same L2 term (run on stats-dtype inputs)."""
  return optax.chain(
      optax.add_decayed_weights(hyper["weight_decay"]),
      optax.adam(hyper["lr"], b1=hyper["b1"], b2=_cprop_adam_b2(hyper, static),
                 eps=hyper["adam_eps"]))


CPROP = Method("cprop", _cprop_build, reference=_cprop_inner)
CPROP_SGD = Method("cprop_sgd", _cprop_sgd_build, reference=_cprop_sgd_inner)
CPROP_ADAM = Method("cprop_adam", _cprop_adam_build,
                    reference=_cprop_adam_reference, cast_reference=True)


def _assert_ratio_in_range(history, cap, rtol):
  """0 <= update / unscaled update <= cap where the latter is normal."""
  for u, r in zip(jax.tree.leaves(history.updates),
                  jax.tree.leaves(history.reference)):
    tiny = float(jnp.finfo(u.dtype).tiny)
    tol = 4 * _eps(u.dtype) + rtol
    u = np.asarray(u, np.float64)[history.valid]
    r = np.asarray(r, np.float64)[history.valid]
    readable = np.abs(r) >= tiny
    ratio = u[readable] / r[readable]
    assert np.all(ratio >= -tol), ratio.min()
    assert np.all(ratio <= cap * (1 + tol) + tol), (ratio.max(), cap)


def _check_cprop(history, hyper, rtol=0.0):
  cap = min(1.0, _f32(hyper["c"]))
  mean_scale = _field(history, "mean_scale")
  assert np.all(mean_scale >= 0), mean_scale.min()
  assert np.all(mean_scale <= cap * (1 + 1e-6)), (mean_scale.max(), cap)
  _assert_ratio_in_range(history, cap, rtol)


@hypothesis.settings(max_examples=20, **_SETTINGS)
@hypothesis.given(
    variant=_variants(Variant(TREE_32, False, (("cdf", "bft"),)),
                      Variant(TREE_64, True, (("cdf", "normal"),))),
    data=st.data())
def test_cprop_scale_in_range(variant, data):
  hyper = _cprop_hyper(data.draw)
  history = run_and_check(CPROP, variant, hyper, data.draw(_streams()))
  _check_cprop(history, hyper)


@hypothesis.settings(max_examples=20, **_SETTINGS)
@hypothesis.given(
    variant=_variants(
        Variant(TREE_32, False, (("cdf", "logistic"), ("nesterov", False))),
        Variant(TREE_64, True, (("cdf", "bfo"), ("nesterov", True)))),
    data=st.data())
def test_cprop_sgd_scale_in_range(variant, data):
  hyper = _cprop_hyper(data.draw)
  history = run_and_check(CPROP_SGD, variant, hyper, data.draw(_streams()))
  _check_cprop(history, hyper)


@hypothesis.settings(max_examples=20, **_SETTINGS)
@hypothesis.given(
    variant=_variants(
        Variant(TREE_32, False, (("cdf", "bft"), ("share", True))),
        Variant(TREE_64, True, (("cdf", "normal"), ("share", False)))),
    data=st.data())
def test_cprop_adam_scale_in_range(variant, data):
  hyper = _cprop_hyper(data.draw)
  history = run_and_check(CPROP_ADAM, variant, hyper, data.draw(_streams()))
  # The fused Adam rounds the bias corrections in another order than
  # optax.adam; 1 - b2^t for b2 = 0.99999 loses ~3 digits in float32.
  _check_cprop(history, hyper, rtol=1e-2)


# --------------------------------------------------------------- AutoDrop


def _autodrop_build(hyper, static):
  drop = oa.autodrop(
      window_size=static["window_size"], buffer_size=static["buffer_size"],
      drop_factor=hyper["drop_factor"], threshold_deg=hyper["threshold"],
      min_scale=hyper["min_scale"], two_sided=static["two_sided"],
      kernel=static["kernel"], center=static["center"],
      reset_c_after_drop=static["reset"],
      average_window=static["average_window"], eps=hyper["eps"])
  return optax.chain(optax.sgd(hyper["lr"], momentum=hyper["momentum"]),
                     drop)


def _autodrop_v1_build(hyper, static):
  drop = oa.autodrop_v1(
      steps_per_epoch=static["steps_per_epoch"],
      patience_epochs=static["patience_epochs"],
      drop_factor=hyper["drop_factor"], theta0=hyper["threshold"],
      theta_max=hyper["theta_max"], min_scale=hyper["min_scale"],
      average_on_drop=static["average_on_drop"],
      auto_theta=static["auto_theta"], eps=hyper["eps"])
  return optax.chain(optax.sgd(hyper["lr"], momentum=hyper["momentum"]),
                     drop)


def _autodrop_hyper(draw):
  return dict(
      lr=draw(st.sampled_from([1e-3, 0.1])),
      momentum=draw(st.sampled_from([0.0, 0.9])),
      drop_factor=draw(st.sampled_from([1e-3, 0.2, 0.5, 0.95, 1.0])),
      # 180 degrees: every test of the detector drops.
      threshold=draw(st.sampled_from([0.0, 0.1, 30.0, 180.0])),
      theta_max=draw(st.sampled_from([0.0, 1.0, 100.0])),
      min_scale=draw(st.sampled_from([0.0, 0.01, 0.3, 1.0])),
      eps=draw(st.sampled_from([0.0, 1e-8])),
  )


AUTODROP = Method("autodrop", _autodrop_build)
AUTODROP_V1 = Method("autodrop_v1", _autodrop_v1_build)
_AUTODROP_VARIANTS = (
    Variant(TREE_32, False, (
        ("window_size", 1), ("buffer_size", 1), ("two_sided", False),
        ("kernel", "range"), ("center", "middle"), ("reset", False),
        ("average_window", True))),
    Variant(TREE_64, True, (
        ("window_size", 2), ("buffer_size", 2), ("two_sided", True),
        ("kernel", "time"), ("center", "newest"), ("reset", True),
        ("average_window", False))),
)
_AUTODROP_V1_VARIANTS = (
    Variant(TREE_32, False, (
        ("steps_per_epoch", 2), ("patience_epochs", 1),
        ("average_on_drop", True), ("auto_theta", True))),
    Variant(TREE_64, True, (
        ("steps_per_epoch", 3), ("patience_epochs", 2),
        ("average_on_drop", False), ("auto_theta", False))),
)


def _check_lr_scale(history, hyper):
  """λ starts at 1, never rises, never falls below min_scale."""
  lr_scale = _field(history, "lr_scale")
  floor = _in_dtype_of(hyper["min_scale"], history, "lr_scale")
  assert np.all(lr_scale <= 1.0), lr_scale.max()
  assert np.all(lr_scale >= floor), (lr_scale.min(), floor)
  assert np.all(np.diff(lr_scale) <= 0), lr_scale
  n_drops = _field(history, "n_drops")
  assert np.all(np.diff(n_drops) >= 0) and n_drops[0] >= 0
  return lr_scale, n_drops


@hypothesis.settings(max_examples=20, **_SETTINGS)
@hypothesis.given(variant=_variants(*_AUTODROP_VARIANTS), data=st.data())
def test_autodrop_scale_monotone_and_floored(variant, data):
  hyper = _autodrop_hyper(data.draw)
  history = run_and_check(AUTODROP, variant, hyper, data.draw(_streams()))
  _check_lr_scale(history, hyper)
  omega = _field(history, "last_omega")
  assert np.all((omega >= 0) & (omega <= 180)), omega


@hypothesis.settings(max_examples=20, **_SETTINGS)
@hypothesis.given(variant=_variants(*_AUTODROP_V1_VARIANTS), data=st.data())
def test_autodrop_v1_scale_monotone_and_floored(variant, data):
  hyper = _autodrop_hyper(data.draw)
  history = run_and_check(AUTODROP_V1, variant, hyper, data.draw(_streams()))
  _check_lr_scale(history, hyper)
  # theta <- min(theta / rho, theta_max) at drops only: it stays between
  # theta0 and theta_max (theta0 > theta_max is allowed and then falls).
  theta = _field(history, "theta")
  theta0, theta_max = _f32(hyper["threshold"]), _f32(hyper["theta_max"])
  n_drops = _field(history, "n_drops")
  changed = np.diff(theta) != 0
  assert np.all(np.diff(n_drops)[changed] > 0), (theta, n_drops)
  assert np.all(theta <= max(theta0, theta_max) * (1 + 1e-6)), theta
  assert np.all(theta >= min(theta0, theta_max) * (1 - 1e-6)), theta


def test_autodrop_properties_see_drops():
  """The settings above do drop: the monotonicity checks are not vacuous."""
  hyper = dict(lr=0.1, momentum=0.9, drop_factor=0.5, threshold=180.0,
               theta_max=100.0, min_scale=0.1, eps=1e-8)
  stream = dict(seed=3, lo=0.3, hi=0.6, p_zero=0.0, p_edge=0.0,
                p_zero_step=0.0)
  for method, variant in ((AUTODROP, _AUTODROP_VARIANTS[0]),
                          (AUTODROP_V1, _AUTODROP_V1_VARIANTS[0])):
    history = run_and_check(method, variant, hyper, stream)
    lr_scale, n_drops = _check_lr_scale(history, hyper)
    assert n_drops[-1] >= 2, (method.name, n_drops)
    assert lr_scale[-1] == np.float32(0.1), (method.name, lr_scale)


# ------------------------------------------------------------------- AdaS


def _adas_build(hyper, static):
  return oa.adas(
      learning_rate=hyper["lr"], beta=hyper["beta"], zeta=hyper["zeta"],
      min_lr=hyper["min_lr"], momentum=hyper["momentum"],
      weight_decay=hyper["weight_decay"],
      steps_per_epoch=static["steps_per_epoch"], p=static["p"],
      solver=static["solver"], spectrum=static["spectrum"],
      transpose_tall=static["transpose_tall"])


ADAS = Method("adas", _adas_build)
_ADAS_VARIANTS = (
    Variant(ADAS_TREE_32, False, (
        ("steps_per_epoch", 2), ("p", 1), ("solver", "brent_ref"),
        ("spectrum", "gram"), ("transpose_tall", False))),
    Variant(ADAS_TREE_64, True, (
        ("steps_per_epoch", 3), ("p", 2), ("solver", "golden_log"),
        ("spectrum", "svd"), ("transpose_tall", True))),
)


@hypothesis.settings(max_examples=12, **_SETTINGS)
@hypothesis.given(variant=_variants(*_ADAS_VARIANTS), data=st.data())
def test_adas_rates_finite_and_floored(variant, data):
  draw = data.draw
  hyper = dict(
      lr=draw(st.sampled_from([1e-3, 0.03, 0.1])),
      beta=draw(st.sampled_from([0.0, 0.5, 0.8, 0.99])),
      zeta=draw(st.sampled_from([0.0, 1.0, 10.0])),
      min_lr=draw(st.sampled_from([0.0, 1e-20, 1e-4, 5e-2])),
      momentum=draw(st.sampled_from([0.0, 0.9])),
      weight_decay=draw(st.sampled_from([0.0, 5e-4])),
  )
  history = run_and_check(ADAS, variant, hyper, data.draw(_streams()))
  epoch = _field(history, "epoch")
  steps_per_epoch = dict(variant.static)["steps_per_epoch"]
  expected = (np.arange(1, _STEPS + 1) // steps_per_epoch)[history.valid]
  np.testing.assert_array_equal(epoch, expected)
  rates = np.concatenate([_field(history, "layer_lr"),
                          _field(history, "fc_lr")[:, None]], axis=1)
  floor = _in_dtype_of(hyper["min_lr"], history, "min_lr")
  after = epoch >= 1  # before the first epoch end every rate is eta_0
  assert np.all(rates[after] >= floor), (rates[after].min(), floor)
  np.testing.assert_allclose(rates[~after], hyper["lr"], rtol=1e-6)


# ------------------------------------------------------------- PAL/LABPAL


def _line_search_extra(params, grad):
  return dict(value=loss(params, 0.5), grad=grad,
              value_fn=loss, scale=jnp.asarray(0.5, jnp.float32))


def _pal_build(hyper, static):
  kwargs = dict(measuring_step=hyper["mu"], update_step_adaptation=hyper[
      "alpha"], max_step=hyper["max_step"],
                exact_directional_derivative=static["exact"],
                eps=hyper["eps"])
  if static["core"]:
    return optax.chain(optax.scale(-1.0), oa.scale_by_pal(**kwargs))
  return oa.pal(momentum=hyper["momentum"], **kwargs)


PAL = Method("pal", _pal_build, extra=_line_search_extra, loss_gradient=True,
             factories=("pal", "scale_by_pal"))
_PAL_VARIANTS = (
    Variant(TREE_32, False, (("core", False), ("exact", True))),
    Variant(TREE_64, True, (("core", True), ("exact", False))),
)


def _global_norms(tree, valid):
  squares = [np.sum(np.square(np.asarray(x, np.float64)).reshape(
      _STEPS, -1), axis=1) for x in jax.tree.leaves(tree)]
  return np.sqrt(np.sum(squares, axis=0))[valid]


def _low_precision_rtol(history):
  """Relative rounding of a norm of updates cast to the params' dtypes."""
  return max(_eps(x.dtype) for x in jax.tree.leaves(history.updates)) * 4


@hypothesis.settings(max_examples=20, **_SETTINGS)
@hypothesis.given(variant=_variants(*_PAL_VARIANTS), data=st.data())
def test_pal_step_finite_and_capped(variant, data):
  draw = data.draw
  hyper = dict(
      mu=draw(st.sampled_from([1e-3, 0.1, 1.0, 10.0])),
      alpha=draw(st.sampled_from([0.5, 1 / 0.6, 3.0])),
      max_step=draw(st.sampled_from([0.0, 0.01, 3.16, 100.0])),
      momentum=draw(st.sampled_from([0.0, 0.4, 0.9])),
      eps=draw(st.sampled_from([1e-10, 1e-3])),
  )
  history = run_and_check(PAL, variant, hyper, data.draw(_streams()))
  cap = _in_dtype_of(hyper["max_step"], history, "pal_step_length")
  step = _field(history, "pal_step_length")
  assert np.all((step >= 0) & (step <= cap)), (step, cap)
  assert np.all(_field(history, "pal_learning_rate") >= 0)
  norms = _global_norms(history.updates, history.valid)
  assert np.all(norms <= cap * (1 + _low_precision_rtol(history)) + 1e-30), (
      norms, cap)


def _labpal_build(hyper, static):
  factory = oa.scale_by_labpal if static["core"] else oa.labpal
  return factory(
      mode=static["mode"], fit=static["fit"], momentum=static["momentum"],
      approx_batches=2, avg_window=static["avg_window"],
      reuse_steps=hyper["reuse_steps"],
      untrusted_updates=hyper["untrusted"], measuring_step=hyper["mu"],
      fd_step=hyper["h"], update_step_adaptation=hyper["alpha"],
      max_step=hyper["max_step"], eps=hyper["eps"],
      norm_bounds=(hyper["low"], hyper["high"]))


def _labpal_extra(params, grad):
  return dict(grad=grad, value_fn=loss,
              approx_batch={"scale": jnp.array([0.5, 2.0], jnp.float32)})


LABPAL = Method("labpal", _labpal_build, extra=_labpal_extra,
                loss_gradient=True, factories=("labpal", "scale_by_labpal"))
_LABPAL_VARIANTS = (
    Variant(TREE_32, False, (("mode", "nsgd"), ("fit", "reference"),
                             ("momentum", 0.0), ("avg_window", 2),
                             ("core", False))),
    Variant(TREE_64, True, (("mode", "sgd"), ("fit", "exact"),
                            ("momentum", 0.5), ("avg_window", 3),
                            ("core", True))),
)


@hypothesis.settings(max_examples=15, **_SETTINGS)
@hypothesis.given(variant=_variants(*_LABPAL_VARIANTS), data=st.data())
def test_labpal_step_finite_and_capped(variant, data):
  draw = data.draw
  mu = draw(st.sampled_from([1e-2, 0.1, 1.0]))
  hyper = dict(
      reuse_steps=draw(st.sampled_from([1, 2, 5])),
      untrusted=draw(st.sampled_from([0, 3, 100])),
      mu=mu,
      h=mu * draw(st.sampled_from([1e-3, 0.1, 0.9])),
      alpha=draw(st.sampled_from([0.5, 1.8])),
      max_step=draw(st.sampled_from([0.01, 1.0, 100.0])),
      eps=draw(st.sampled_from([1e-6, 1e-2])),
      low=draw(st.sampled_from([0.0, 1e-3])),
      high=draw(st.sampled_from([1.0, 100.0, 1e30])),
  )
  history = run_and_check(LABPAL, variant, hyper, data.draw(_streams()))
  # s_raw = max(alpha * min(s, max_step), eps) (docs/labpal.md, measuring step).
  cap = max(_f32(hyper["alpha"]) * _f32(hyper["max_step"]),
            _f32(hyper["eps"])) * (1 + 1e-5)
  for name in ("labpal_step_length", "hist_step", "raw_step"):
    value = _field(history, name)
    assert np.all((value >= 0) & (value <= cap)), (name, value.max(), cap)
  lr = _field(history, "labpal_learning_rate")
  lr_cap = max(cap / max(_f32(hyper["low"]), _f32(hyper["eps"])),
               _f32(hyper["eps"]))
  assert np.all((lr >= 0) & (lr <= lr_cap)), (lr.max(), lr_cap)
  have = _field(history, "have_estimate").astype(bool)
  floor = _f32(hyper["eps"]) * (1 - 1e-6)
  assert np.all(_field(history, "labpal_step_length")[have] >= floor)
  assert np.all(lr[have] >= floor)
  if dict(variant.static)["mode"] == "nsgd":  # every step moves <= s-bar
    norms = _global_norms(history.updates, history.valid)
    assert np.all(norms <= cap * (1 + _low_precision_rtol(history))), (
        norms.max(), cap)


def test_autodrop_angle_of_float64_displacements_beyond_float32():
  """Regression: |s|² was kept in float32, so float64 displacements longer
  than 1.8e19 overflowed it and every angle came out as 90 degrees."""
  turn = np.radians(30.0)
  heading = turn * np.arange(6)
  path = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], 1), 0)
  for tx in (oa.autodrop(window_size=1, average_window=False),
             oa.autodrop_v1(steps_per_epoch=2)):
    with jax.enable_x64(True):
      state = tx.init(jnp.zeros(2, jnp.float64))
      assert optax.tree.get(state, "prev_sq_norm").dtype == jnp.float64
      update = jax.jit(tx.update)
      for point in path:
        params = jnp.asarray(1e25 * point, jnp.float64)
        calls = 1 if isinstance(state, oa.AutoDropState) else 2
        for _ in range(calls):  # v1 measures at an epoch's 2nd step
          _, state = update(jnp.zeros(2, jnp.float64), state, params)
      np.testing.assert_allclose(float(state.last_omega), 30.0, rtol=1e-5)


def test_every_public_transformation_has_properties():
  methods = (CPROP, CPROP_SGD, CPROP_ADAM, AUTODROP, AUTODROP_V1, ADAS, PAL,
             LABPAL)
  missing = R.missing_factories(f for m in methods for f in m.covers())
  assert not missing, f"no property test runs {missing}"
