"""The optimizer registry of the training-quality comparison.

Each entry is an :class:`OptimizerSpec`: a factory
``(steps_per_epoch, total_steps) -> optax.GradientTransformationExtraArgs``,
what its ``update`` needs besides the gradient, optional epoch-end and
evaluation hooks, and a function reading the learning rate / scale / gain
out of its state for the plots.

Families:

* ``baseline``: optax optimizers with a hand-set or grid-tuned learning rate.
* ``lr-free``: optax's learning-rate-free methods, at their defaults.
* ``library``: the methods of :mod:`optax_adaptive`, at their defaults. The
  only number set here is the base learning rate of the SGD or Adam they wrap:
  :data:`SGD_LR` (the tuned step schedule's initial rate) and
  :data:`ADAM_LR` (Adam's usual 1e-3).

Library entries are resolved lazily. A method whose module does not import
(yet) is reported by :func:`availability` with the reason, listed as
unavailable by ``benchmarks.harness.compare`` and skipped, never dropped
silently.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from optax import contrib

# ----------------------------------------------------------- tuned values
# Picked on the validation split of mnist1d (40 epochs, seeds 0 and 1) by
#   python -m benchmarks.compare --tune
# Grid: learning rate in TUNE_LRS, step drops (x0.1 at these fractions of the
# run) in TUNE_DROPS; the cosine schedule tunes the learning rate only.
TUNE_LRS = (0.01, 0.03, 0.1, 0.3)
TUNE_DROPS = ((0.5, 0.75), (0.75,))
SGD_LR = 0.1           # tuned: sgd-step initial learning rate
STEP_DROPS = (0.75,)   # tuned: x0.1 at these fractions of the epochs
COSINE_LR = 0.1        # tuned: sgd-cosine peak learning rate

MOMENTUM = 0.9
ADAM_LR = 1e-3         # Adam's customary default, deliberately untuned
# reduce_on_plateau on the epoch-mean training loss: PyTorch's factor 0.1,
# patience shortened from 10 to 5 epochs for 40-epoch runs.
PLATEAU_FACTOR = 0.1
PLATEAU_PATIENCE = 5
# AutoDrop's window k: the paper uses k = 64 on CIFAR (391 steps per epoch at
# batch 128); keep the same fraction of an epoch.
AUTODROP_WINDOW_FRACTION = 64 / 391

Factory = Callable[[int, int], optax.GradientTransformationExtraArgs]
State = Any


def _no_trace(state: State) -> dict[str, jax.Array]:
  del state
  return {}


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """How the comparison builds, feeds and monitors one optimizer.

  Attributes:
    name: the ``--optimizers`` name.
    family: ``"baseline"``, ``"lr-free"`` or ``"library"``.
    make: ``(steps_per_epoch, total_steps) -> GradientTransformationExtraArgs``.
    description: one line for the table and the docs.
    needs: extra arguments each ``update`` takes: ``"value"`` (mini-batch
      loss), ``"value_fn"`` (also ``grad`` and the batch as ``x``, ``y``;
      PAL/LABPAL), ``"approx_batch"`` (stacked extra batches; LABPAL).
    approx_batches: number of stacked batches in ``approx_batch``.
    epoch_end: ``(state, params) -> state`` called after every epoch.
    eval_params: ``(state, params) -> params`` to evaluate (schedule-free).
    trace: ``state -> {name: scalar}`` read after every step for the plots.
    requires: ``(module, attribute)`` pairs of :mod:`optax_adaptive` that
      must import for the entry to be available.
    quick: part of the default quick run (``python -m benchmarks.compare``
      without ``--optimizers``); ``--full`` and ``--optimizers all`` run
      every entry.
  """

  name: str
  family: str
  make: Factory
  description: str
  needs: frozenset[str] = frozenset()
  approx_batches: int = 0
  epoch_end: Callable[[State, Any], State] | None = None
  eval_params: Callable[[State, Any], Any] | None = None
  trace: Callable[[State], dict[str, jax.Array]] = _no_trace
  requires: tuple[tuple[str, str], ...] = ()
  quick: bool = True


# ------------------------------------------------------- state inspection


def _find(state: State, field: str) -> list[jax.Array]:
  """Values of every NamedTuple field (or dict key) called ``field``.

  Only attribute keys (NamedTuple fields) and the ``hyperparams`` dict of
  :func:`optax.inject_hyperparams` match, never the keys of params-shaped
  trees (a batch-norm ``scale`` parameter is not a monitored scale).
  """
  found = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    last = path[-1] if path else None
    if isinstance(last, jax.tree_util.GetAttrKey) and last.name == field:
      found.append(leaf)
    elif (isinstance(last, jax.tree_util.DictKey) and last.key == field
          and len(path) >= 2
          and isinstance(path[-2], jax.tree_util.GetAttrKey)
          and path[-2].name == "hyperparams"):
      found.append(leaf)
  return found


def _scalar(value: jax.Array) -> jax.Array:
  return jnp.mean(jnp.asarray(value, jnp.float32))


def _trace_fields(*fields: str, scale: float = 1.0):
  """A trace reading the first match of each field (mean over arrays)."""

  def trace(state):
    out = {}
    for field in fields:
      found = _find(state, field)
      if found:
        out[field] = _scalar(found[0]) * scale
    return out

  return trace


def _trace_library(state: State) -> dict[str, jax.Array]:
  """The monitored fields of every optax_adaptive state, as scalars.

  Uses :func:`optax_adaptive.diagnostics` (CProp's mean scale, AutoDrop's
  ``lr_scale`` and angular velocity, PAL/LABPAL's step, AdaS's per-layer
  rates and gains); a vector (e.g. AdaS's rate per layer group) is kept as
  its mean, min and max, booleans are dropped.
  """
  try:
    diagnostics = _library_symbol("_diagnostics", "diagnostics")
  except (ImportError, AttributeError):
    return {}
  out = {}
  for key, value in diagnostics(state).items():
    value = jnp.asarray(value)
    if value.dtype == jnp.bool_ or value.size == 0:
      continue
    value = value.astype(jnp.float32)
    if value.size > 1:
      out[f"{key}.mean"] = jnp.mean(value)
      out[f"{key}.min"] = jnp.min(value)
      out[f"{key}.max"] = jnp.max(value)
    else:
      out[key] = value.reshape(())
  # AdaS's per-layer rates (not among the diagnostics keys of every version).
  for field in ("layer_lr", "fc_lr"):
    for value in _find(state, field)[:1]:
      value = jnp.asarray(value, jnp.float32)
      if value.size > 1:
        out[f"adas/{field}.mean"] = jnp.mean(value)
        out[f"adas/{field}.min"] = jnp.min(value)
        out[f"adas/{field}.max"] = jnp.max(value)
      elif value.size == 1:
        out[f"adas/{field}"] = value.reshape(())
  return out


def _trace_plateau(base_lr: float):
  def trace(state):
    return {"learning_rate": base_lr * _scalar(_find(state, "scale")[0])}
  return trace


def _trace_dog(state: State) -> dict[str, jax.Array]:
  max_dist = _find(state, "max_dist")
  sum_sq = _find(state, "sum_sq_norm_grads")
  if not (max_dist and sum_sq):
    return {}
  return {"learning_rate": _scalar(max_dist[0])
                           / jnp.sqrt(_scalar(sum_sq[0]) + 1e-8)}


def _trace_estim_lr(state: State) -> dict[str, jax.Array]:
  return {"learning_rate": _scalar(_find(state, "estim_lr")[0])}


# ----------------------------------------------------- library resolution


def _library_symbol(module: str, name: str):
  """``optax_adaptive.<name>``, else ``optax_adaptive.<module>.<name>``."""
  try:
    package = importlib.import_module("optax_adaptive")
    if hasattr(package, name):
      return getattr(package, name)
  except ImportError:
    pass
  return getattr(importlib.import_module(f"optax_adaptive.{module}"), name)


def _lib(module: str, name: str):
  """A deferred reference to a library symbol (resolved at call time)."""

  def call(*args, **kwargs):
    return _library_symbol(module, name)(*args, **kwargs)

  return call


def availability(spec: OptimizerSpec) -> str | None:
  """``None`` if ``spec`` can run, else the reason it cannot (one line)."""
  for module, name in spec.requires:
    try:
      _library_symbol(module, name)
    except (ImportError, AttributeError) as e:
      return f"optax_adaptive.{module}.{name} unavailable: {e}"
  return None


# -------------------------------------------------------------- factories


def _sgd(learning_rate) -> optax.GradientTransformationExtraArgs:
  return optax.inject_hyperparams(optax.sgd)(
      learning_rate=learning_rate, momentum=MOMENTUM)


def step_schedule(lr: float, drops: Sequence[float], total_steps: int):
  """x0.1 at each fraction of ``total_steps`` in ``drops``."""
  boundaries = {max(1, round(f * total_steps)): 0.1 for f in drops}
  return optax.piecewise_constant_schedule(lr, boundaries)


def sgd_step(lr: float = SGD_LR, drops: Sequence[float] = STEP_DROPS
             ) -> Factory:
  return lambda spe, total: _sgd(step_schedule(lr, drops, total))


def sgd_cosine(lr: float = COSINE_LR) -> Factory:
  return lambda spe, total: _sgd(optax.cosine_decay_schedule(lr, total))


def _plateau(spe: int):
  return contrib.reduce_on_plateau(
      factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE,
      accumulation_size=spe)


def autodrop_window(steps_per_epoch: int) -> int:
  return max(1, round(AUTODROP_WINDOW_FRACTION * steps_per_epoch))


def _autodrop(spe: int):
  return _lib("_autodrop", "autodrop")(window_size=autodrop_window(spe))


_INJECTED_LR = _trace_fields("learning_rate")

_SPECS = [
    # ---------------------------------------------------------- baselines
    OptimizerSpec(
        "sgd", "baseline", lambda spe, total: _sgd(SGD_LR),
        f"SGD momentum {MOMENTUM}, constant lr {SGD_LR} (base of CProp, "
        "AutoDrop)",
        trace=_INJECTED_LR),
    OptimizerSpec(
        "sgd-step", "baseline", sgd_step(),
        f"SGD momentum {MOMENTUM}, lr {SGD_LR}, x0.1 at "
        f"{', '.join(f'{f:.0%}' for f in STEP_DROPS)} of the run (tuned)",
        trace=_INJECTED_LR),
    OptimizerSpec(
        "sgd-cosine", "baseline", sgd_cosine(),
        f"SGD momentum {MOMENTUM}, cosine decay from {COSINE_LR} (tuned)",
        trace=_INJECTED_LR),
    OptimizerSpec(
        "adam", "baseline",
        lambda spe, total: optax.inject_hyperparams(optax.adam)(
            learning_rate=ADAM_LR),
        f"Adam lr {ADAM_LR} (untuned)", trace=_INJECTED_LR),
    OptimizerSpec(
        "adamw", "baseline",
        lambda spe, total: optax.inject_hyperparams(optax.adamw)(
            learning_rate=ADAM_LR),
        f"AdamW lr {ADAM_LR}, weight decay 1e-4 (optax defaults)",
        trace=_INJECTED_LR),
    OptimizerSpec(
        "plateau-sgd", "baseline",
        lambda spe, total: optax.chain(
            optax.sgd(SGD_LR, momentum=MOMENTUM), _plateau(spe)),
        f"SGD momentum, lr {SGD_LR}, reduce_on_plateau(factor "
        f"{PLATEAU_FACTOR}, patience {PLATEAU_PATIENCE} epochs) on the "
        "train loss",
        needs=frozenset({"value"}), trace=_trace_plateau(SGD_LR)),
    OptimizerSpec(
        "plateau-adam", "baseline",
        lambda spe, total: optax.chain(optax.adam(ADAM_LR), _plateau(spe)),
        f"Adam lr {ADAM_LR}, reduce_on_plateau as above",
        needs=frozenset({"value"}), trace=_trace_plateau(ADAM_LR)),
    # --------------------------------------------------------- lr-free
    OptimizerSpec(
        "prodigy", "lr-free", lambda spe, total: contrib.prodigy(),
        "optax.contrib.prodigy (defaults)", trace=_trace_estim_lr),
    OptimizerSpec(
        "dadapt-adamw", "lr-free", lambda spe, total: contrib.dadapt_adamw(),
        "optax.contrib.dadapt_adamw (defaults)", trace=_trace_estim_lr),
    OptimizerSpec(
        "schedule-free-adamw", "lr-free",
        lambda spe, total: contrib.schedule_free_adamw(),
        "optax.contrib.schedule_free_adamw (defaults, lr 0.0025), evaluated "
        "at schedule_free_eval_params",
        eval_params=contrib.schedule_free_eval_params),
    OptimizerSpec(
        "dog", "lr-free", lambda spe, total: contrib.dog(),
        "optax.contrib.dog (defaults)", trace=_trace_dog),
    # --------------------------------------------------------- library
    OptimizerSpec(
        "cprop-sgd", "library",
        lambda spe, total: _lib("_cprop", "cprop_sgd")(
            SGD_LR, momentum=MOMENTUM),
        f"cprop_sgd(lr {SGD_LR}, momentum {MOMENTUM}), CProp defaults",
        trace=_trace_library, requires=(("_cprop", "cprop_sgd"),)),
    OptimizerSpec(
        "cprop-adam", "library",
        lambda spe, total: _lib("_cprop", "cprop_adam")(ADAM_LR),
        f"cprop_adam(lr {ADAM_LR}), CProp defaults",
        trace=_trace_library, requires=(("_cprop", "cprop_adam"),)),
    OptimizerSpec(
        "adas", "library",
        lambda spe, total: _lib("_adas", "adas")(steps_per_epoch=spe),
        "adas() at its defaults (lr 0.03, beta 0.8, momentum 0.9, weight "
        "decay 5e-4), an epoch end in the last update of every epoch",
        trace=_trace_library, requires=(("_adas", "adas"),)),
    OptimizerSpec(
        "autodrop-sgd", "library",
        lambda spe, total: optax.chain(
            optax.sgd(SGD_LR, momentum=MOMENTUM), _autodrop(spe)),
        f"SGD momentum, lr {SGD_LR}, then autodrop(window = "
        f"{AUTODROP_WINDOW_FRACTION:.3f} epoch), AutoDrop defaults",
        trace=_trace_library, requires=(("_autodrop", "autodrop"),)),
    OptimizerSpec(
        "autodrop-adam", "library",
        lambda spe, total: optax.chain(optax.adam(ADAM_LR), _autodrop(spe)),
        f"Adam lr {ADAM_LR}, then autodrop as above",
        trace=_trace_library, requires=(("_autodrop", "autodrop"),)),
    OptimizerSpec(
        "pal", "library", lambda spe, total: _lib("_pal", "pal")(),
        "pal() at its defaults",
        needs=frozenset({"value", "value_fn"}),
        trace=_trace_library, requires=(("_labpal", "pal"),)),
    OptimizerSpec(
        "labpal", "library", lambda spe, total: _lib("_labpal", "labpal")(),
        "labpal() at its defaults (NSGD, 10 approximation batches)",
        needs=frozenset({"value", "value_fn", "approx_batch"}),
        approx_batches=10,
        trace=_trace_library, requires=(("_labpal", "labpal"),)),
    OptimizerSpec(
        "labpal-ref", "library",
        lambda spe, total: _lib("_labpal", "labpal")(
            fit="reference", cap="reference"),
        "labpal(fit='reference', cap='reference'): the authors' code, whose "
        "cap grows by alpha each time it binds",
        needs=frozenset({"value", "value_fn", "approx_batch"}),
        approx_batches=10,
        trace=_trace_library, requires=(("_labpal", "labpal"),)),
    OptimizerSpec(
        "cprop-autodrop-sgd", "library",
        lambda spe, total: optax.chain(
            _lib("_cprop", "cprop_sgd")(SGD_LR, momentum=MOMENTUM),
            _autodrop(spe)),
        f"cprop_sgd(lr {SGD_LR}, momentum) then autodrop (combination)",
        trace=_trace_library,
        requires=(("_cprop", "cprop_sgd"), ("_autodrop", "autodrop"))),
]

# ---------------------------------------- on learning-rate-free optimizers
# Our methods composed with optax's learning-rate-free optimizers,
# at everyone's defaults, exactly as a user writes them. AutoDrop goes last
# in the chain and scales the final update; CProp wraps the inner optimizer.


def _trace_lr_free_combo(state: State) -> dict[str, jax.Array]:
  """The inner optimizer's estimate ``d`` (times its lr of 1), our scales.

  ``effective_lr`` is ``d`` times AutoDrop's ``lr_scale`` where there is one:
  the step size that reaches the params, up to Adam-style normalisation.
  """
  out = {**_trace_estim_lr(state), **_trace_library(state)}
  if "autodrop/lr_scale" in out:
    out["effective_lr"] = out["learning_rate"] * out["autodrop/lr_scale"]
  return out


def _combo(name: str, make: Factory, description: str,
           requires: tuple[tuple[str, str], ...], quick: bool = False
           ) -> OptimizerSpec:
  return OptimizerSpec(name, "library", make, description,
                       trace=_trace_lr_free_combo, requires=requires,
                       quick=quick)


_AUTODROP = (("_autodrop", "autodrop"),)
_CPROP = (("_cprop", "cprop"),)

_SPECS += [
    # The control: prodigy with the schedule its authors recommend (linear
    # decay from 1 to 0 over the run, no warm-up), which needs the run length.
    OptimizerSpec(
        "prodigy-linear", "lr-free",
        lambda spe, total: contrib.prodigy(
            learning_rate=optax.linear_schedule(1.0, 0.0, total)),
        "optax.contrib.prodigy, lr linear from 1 to 0 over the run",
        trace=_trace_lr_free_combo, quick=False),
    # The second control: AutoDrop's detector replaced by a clock that drops
    # at AutoDrop's fastest rate (x0.95 every 10 windows of k steps, its
    # default drop_factor and buffer_size), scaling the final update as
    # AutoDrop does.
    OptimizerSpec(
        "stairs-prodigy", "lr-free",
        lambda spe, total: optax.chain(
            contrib.prodigy(),
            optax.scale_by_schedule(optax.exponential_decay(
                1.0, 10 * autodrop_window(spe), 0.95, staircase=True))),
        "chain(prodigy(), update x0.95 every 10 AutoDrop windows): "
        "AutoDrop's fastest drop rate as a fixed clock",
        trace=_trace_lr_free_combo, quick=False),
    # The recipe of docs/choosing.md: in the quick run.
    _combo("autodrop-prodigy",
           lambda spe, total: optax.chain(contrib.prodigy(), _autodrop(spe)),
           "chain(prodigy(), autodrop(window = "
           f"{AUTODROP_WINDOW_FRACTION:.3f} epoch)), both at defaults",
           _AUTODROP, quick=True),
    _combo("autodrop-dadapt-adamw",
           lambda spe, total: optax.chain(contrib.dadapt_adamw(),
                                          _autodrop(spe)),
           "chain(dadapt_adamw(), autodrop as above), both at defaults",
           _AUTODROP),
    _combo("cprop-prodigy",
           lambda spe, total: _lib("_cprop", "cprop")(contrib.prodigy()),
           "cprop(prodigy()), both at defaults", _CPROP),
    _combo("cprop-dadapt-adamw",
           lambda spe, total: _lib("_cprop", "cprop")(contrib.dadapt_adamw()),
           "cprop(dadapt_adamw()), both at defaults", _CPROP),
    _combo("cprop-autodrop-prodigy",
           lambda spe, total: optax.chain(
               _lib("_cprop", "cprop")(contrib.prodigy()), _autodrop(spe)),
           "chain(cprop(prodigy()), autodrop as above), all at defaults",
           _CPROP + _AUTODROP),
]

REGISTRY: dict[str, OptimizerSpec] = {s.name: s for s in _SPECS}
QUICK: tuple[str, ...] = tuple(s.name for s in _SPECS if s.quick)


def get(name: str) -> OptimizerSpec:
  try:
    return REGISTRY[name]
  except KeyError:
    raise ValueError(f"unknown optimizer {name!r}; choose from "
                     f"{', '.join(REGISTRY)}") from None
