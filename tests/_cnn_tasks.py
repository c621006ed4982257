"""A tiny CNN task and every method of the library, for the system tests.

Shared by ``test_multidevice.py``, ``test_multihost.py`` (and its worker),
``test_checkpoint.py`` (and its worker) and ``test_flax_integration.py``.
It must not import ``tests.conftest``: the workers run in fresh processes
that set their own device count before importing jax.

The model is a pure function of a params dict: two 3x3 convolutions
(HWIO kernels, so that AdaS has conv layers to factorise), global average
pooling and a dense classifier. Every dimension that FSDP shards is a
multiple of 8.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import optax_adaptive as oa

N_DEVICES = 8
BATCH = 32
IMAGE = (5, 5, 2)
CLASSES = 4
CHANNELS = 8
APPROX_BATCHES = 2  # LABPAL's M

# ------------------------------------------------------------------ model


def init_params(seed: int = 0) -> dict[str, dict[str, jax.Array]]:
  rng = np.random.default_rng(seed)

  def he(shape):
    fan_in = int(np.prod(shape[:-1]))
    return jnp.asarray(rng.normal(size=shape) * np.sqrt(2 / fan_in),
                       jnp.float32)

  return {
      "conv1": {"kernel": he((3, 3, IMAGE[-1], CHANNELS)),
                "bias": jnp.zeros((CHANNELS,), jnp.float32)},
      "conv2": {"kernel": he((3, 3, CHANNELS, CHANNELS)),
                "bias": jnp.zeros((CHANNELS,), jnp.float32)},
      "dense": {"kernel": he((CHANNELS, CLASSES)),
                "bias": jnp.zeros((CLASSES,), jnp.float32)},
  }


def _conv(x, layer):
  y = jax.lax.conv_general_dilated(
      x, layer["kernel"], window_strides=(1, 1), padding="SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + layer["bias"]


def apply(params, x):
  h = jax.nn.relu(_conv(x, params["conv1"]))
  h = jax.nn.relu(_conv(h, params["conv2"]))
  h = jnp.mean(h, axis=(1, 2))
  return h @ params["dense"]["kernel"] + params["dense"]["bias"]


def loss(params, x, y):
  logits = apply(params, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_data(seed: int = 1, steps: int = 8) -> dict[str, np.ndarray]:
  """``steps`` batches (leading axis) labelled by a random teacher CNN."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(steps, BATCH, *IMAGE)).astype(np.float32)
  teacher = init_params(seed + 100)
  logits = jax.vmap(apply, (None, 0))(teacher, jnp.asarray(x))
  y = np.asarray(jnp.argmax(logits, -1), np.int32)
  return {"x": x, "y": y}


def batch_at(data, i):
  return {"x": data["x"][i], "y": data["y"][i]}


def approx_at(data, i):
  """LABPAL's ``approx_batch``: the step's batch and the next one."""
  n = data["x"].shape[0]
  idx = np.array([(i + j) % n for j in range(APPROX_BATCHES)])
  return {"x": data["x"][idx], "y": data["y"][idx]}


# ---------------------------------------------------------------- methods


@dataclasses.dataclass(frozen=True)
class Method:
  """A method of the library configured for a few steps of the CNN.

  Attributes:
    name: test id.
    build: ``build(axis_name) -> tx``; ``axis_name`` is the mapped axis
      under pmap/shard_map (None under jit), used only by line searches.
    kind: ``"plain"`` (no extra args), ``"pal"`` or ``"labpal"``.
    factories: the public factories whose code ``build`` runs (``name``
      by default): ``pal`` chains ``scale_by_pal``, ``labpal`` returns
      ``scale_by_labpal``.
  """

  name: str
  build: Callable[[str | None], optax.GradientTransformationExtraArgs]
  kind: str = "plain"
  factories: tuple[str, ...] = ()

  def covers(self) -> tuple[str, ...]:
    return self.factories or (self.name,)

  def __repr__(self):
    return self.name


def _cprop(axis_name):
  del axis_name
  cprop = oa.cprop
  return cprop(optax.sgd(0.05, momentum=0.9), beta=0.9)


def _cprop_sgd(axis_name):
  del axis_name
  return oa.cprop_sgd(
      learning_rate=0.05, momentum=0.9, beta=0.9)


def _cprop_adam(axis_name):
  del axis_name
  return oa.cprop_adam(
      learning_rate=0.01, beta=0.9)


def _autodrop(axis_name):
  del axis_name  # data parallel: params are whole on every device
  autodrop = oa.autodrop
  return optax.chain(
      optax.sgd(0.05, momentum=0.9),
      autodrop(window_size=2, buffer_size=2, threshold_deg=45.0))


def _autodrop_v1(axis_name):
  del axis_name
  autodrop_v1 = oa.autodrop_v1
  return optax.chain(
      optax.sgd(0.05, momentum=0.9),
      autodrop_v1(steps_per_epoch=2, patience_epochs=1))


def _adas(axis_name):
  del axis_name
  return oa.adas(
      learning_rate=0.05, steps_per_epoch=2)


def _pal(axis_name):
  return oa.pal(axis_name=axis_name)


def _labpal(axis_name):
  # fd_step and measuring_step 50x and 10x the defaults: the finite
  # differences of float32 losses then lose ~1e-5 rather than ~1e-3 of their
  # digits, so runs whose reductions differ only in order stay comparable.
  return oa.labpal(
      mode="sgd", reuse_steps=3, approx_batches=APPROX_BATCHES,
      fd_step=1e-2, measuring_step=0.1, untrusted_updates=2, avg_window=3,
      axis_name=axis_name)


def _cprop_autodrop(axis_name):
  del axis_name
  cprop = oa.cprop
  autodrop = oa.autodrop
  return optax.chain(
      cprop(optax.sgd(0.05, momentum=0.9), beta=0.9),
      autodrop(window_size=2, buffer_size=2, threshold_deg=45.0))


METHODS = [
    Method("cprop", _cprop),
    Method("cprop_sgd", _cprop_sgd),
    Method("cprop_adam", _cprop_adam),
    Method("autodrop", _autodrop),
    Method("autodrop_v1", _autodrop_v1),
    Method("adas", _adas),
    Method("pal", _pal, kind="pal", factories=("pal", "scale_by_pal")),
    Method("labpal", _labpal, kind="labpal",
           factories=("labpal", "scale_by_labpal")),
    Method("cprop_autodrop", _cprop_autodrop),
]


def _autodrop_prodigy(axis_name):
  del axis_name  # data parallel; prodigy's sums are global under jit
  return optax.chain(
      optax.contrib.prodigy(),
      oa.autodrop(window_size=2, buffer_size=2, threshold_deg=45.0))


# The recipes of docs/choosing.md, through the same system tests.
RECIPES = [
    Method("autodrop_prodigy", _autodrop_prodigy),
]
# Layouts a recipe cannot run in, with the reason (a limit of its parts).
RECIPE_LIMITS = {
    "autodrop_prodigy": {
        "explicit_fsdp": "optax.contrib.prodigy's optax.tree.vdot fails on"
                         " params sharded over Explicit mesh axes"
                         " (ShardingTypeError); Auto axes work",
    },
}
METHODS_BY_NAME = {m.name: m for m in METHODS + RECIPES}


def tolerance(name: str) -> dict[str, float]:
  """rtol/atol between runs that differ only in float32 reduction order.

  About 1e-7 relative per step, grown by the few steps of training. LABPAL
  divides finite differences of losses by its sample distances (1e-2,
  1e-1), which amplifies the difference by about 100.
  """
  if name == "labpal":
    return dict(rtol=1e-3, atol=1e-4)
  return dict(rtol=1e-4, atol=1e-5)


def update_kwargs(method: Method, value, grads, loss_fn, batch, approx):
  """The extra ``update`` arguments ``method`` needs."""
  if method.kind == "plain":
    return {}
  kwargs = dict(value=value, grad=grads, value_fn=loss_fn, **batch)
  if method.kind == "labpal":
    kwargs["approx_batch"] = approx
  return kwargs


def make_step(method: Method, tx, *, axis_name=None, gather=None):
  """``step(params, state, batch, approx) -> (params, state, loss)``.

  Args:
    method: the method.
    tx: its transformation.
    axis_name: mapped axis over which loss and gradients are averaged
      (pmap/shard_map), or None.
    gather: applied to the params before the forward pass (FSDP all-gather).
  """
  gather = gather or (lambda p: p)

  def loss_fn(params, x, y):
    return loss(gather(params), x, y)

  def step(params, state, batch, approx):
    value, grads = jax.value_and_grad(loss_fn)(params, batch["x"],
                                               batch["y"])
    if axis_name is not None:
      value = jax.lax.pmean(value, axis_name)
      grads = jax.lax.pmean(grads, axis_name)
    kwargs = update_kwargs(method, value, grads, loss_fn, batch, approx)
    updates, state = tx.update(grads, state, params, **kwargs)
    return optax.apply_updates(params, updates), state, value

  return step


def run_single_device(method: Method, data, steps: int, params=None,
                      state=None, start: int = 0):
  """``steps`` jitted steps on the default device; returns the history."""
  tx = method.build(None)
  params = init_params() if params is None else params
  state = tx.init(params) if state is None else state
  step = jax.jit(make_step(method, tx))
  losses = []
  for i in range(start, start + steps):
    params, state, value = step(params, state, batch_at(data, i),
                                approx_at(data, i))
    losses.append(value)
  return params, state, jnp.stack(losses)


# ---------------------------------------------------------------- sharding


def fsdp_spec(shape, axis: str = "data", size: int = N_DEVICES) -> P:
  """Shards the last dimension divisible by ``size``; else replicates."""
  for dim in reversed(range(len(shape))):
    if shape[dim] % size == 0:
      spec = [None] * len(shape)
      spec[dim] = axis
      return P(*spec)
  return P()


def fsdp_shardings(params, mesh, axis: str = "data"):
  return jax.tree.map(
      lambda p: NamedSharding(mesh, fsdp_spec(p.shape, axis)), params)


def replicated(tree, mesh):
  return jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)


def gather_explicit(params):
  """All-gathers FSDP params before use (Explicit mesh axes)."""
  return jax.tree.map(lambda p: jax.sharding.reshard(p, P()), params)


def put(tree, shardings):
  """Places host values on ``shardings``, also across processes.

  Every process must pass the same global values (as multi-host training
  code does with a seeded data pipeline); each one fills its own shards.
  """
  def place(a, sharding):
    a = np.asarray(a)
    return jax.make_array_from_callback(a.shape, sharding, lambda i: a[i])
  return jax.tree.map(place, tree, shardings)


def put_spec(tree, mesh, spec):
  return put(tree, jax.tree.map(lambda _: NamedSharding(mesh, spec), tree))


def run_on_mesh(method: Method, data, steps: int, mesh, *, fsdp: bool):
  """``steps`` jitted steps over ``mesh`` (data parallel over its axis).

  Params are replicated, or sharded FSDP-style when ``fsdp``. Works in a
  single process and in every process of a multi-host job. Returns a dict
  with ``params``, ``state``, ``losses`` and, for the layout checks,
  ``param_shardings``, ``state_types0`` and ``state_shardings0``.
  """
  tx = method.build(None)
  explicit = mesh.axis_types[0] == AxisType.Explicit
  gather = gather_explicit if (fsdp and explicit) else None
  with jax.set_mesh(mesh):
    params = init_params()
    shardings = (fsdp_shardings(params, mesh) if fsdp
                 else replicated(params, mesh))
    params = put(params, shardings)
    state = tx.init(params)
    out = {
        "param_shardings": shardings,
        "state_types0": jax.tree.map(jax.typeof, state),
        "state_shardings0": jax.tree.map(lambda a: a.sharding, state),
    }
    step = jax.jit(make_step(method, tx, gather=gather))
    losses = []
    for i in range(steps):
      batch = put_spec(batch_at(data, i), mesh, P("data"))
      approx = put_spec(approx_at(data, i), mesh, P(None, "data"))
      params, state, value = step(params, state, batch, approx)
      losses.append(value)
    out.update(params=params, state=state, losses=jnp.stack(losses))
  return out
