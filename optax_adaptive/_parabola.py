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
"""What PAL and LABPAL share: ``value_fn``'s data, steps on a line, fits.

* ``value_fn`` data routing, as in optax's line searches: keyword arguments of
  ``update`` reach ``value_fn`` by name;
* moves along a direction in the dtypes of the params, and the scalars of a
  fit (dtype, rounding error of the losses, ``pmean``);
* LABPAL's probes of the line over M mini-batches and its three-point
  parabola (Mutschler, Laube & Zell 2021, arXiv:2108.13880), with the
  authors' ``np.gradient`` variant.

The maths and its cases are on the docs page "PAL and LABPAL"
(docs/labpal.md).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_adaptive import _common

# ------------------------------------------------------ value_fn's data


def _data_params(value_fn: Callable[..., Any]) -> list[inspect.Parameter]:
  """``value_fn``'s parameters after the first (params) that take data by name.

  Mirrors optax's ``_extract_fns_kwargs``: only explicitly named parameters
  receive data; ``*args``/``**kwargs`` catch-alls receive nothing.
  """
  kinds = (
      inspect.Parameter.POSITIONAL_OR_KEYWORD,
      inspect.Parameter.KEYWORD_ONLY,
  )
  params = list(inspect.signature(value_fn).parameters.values())
  return [p for p in params[1:] if p.kind in kinds]


def value_fn_arg_names(value_fn: Callable[..., Any]) -> frozenset[str]:
  """Keyword names ``value_fn`` accepts after its first (params) argument."""
  return frozenset(p.name for p in _data_params(value_fn))


def value_fn_kwargs(
    value_fn: Callable[..., Any],
    extra_args: Mapping[str, Any],
    method: str,
    batched: frozenset[str] = frozenset(),
) -> dict[str, Any]:
  """The data arguments of ``value_fn`` among ``update``'s extra arguments.

  As optax's line searches do, a keyword that ``value_fn`` does not take
  (a misspelt data argument) is an error rather than silently dropped. A
  required data argument of ``value_fn`` that is neither given nor in
  ``batched`` (LABPAL's ``approx_batch`` keys) is named too, instead of
  surfacing as a positional-argument error inside ``value_fn``.

  Raises:
    TypeError: naming the unconsumed or missing keywords and ``value_fn``'s
      signature.
  """
  data = _data_params(value_fn)
  names = {p.name for p in data}
  where = f"`value_fn{inspect.signature(value_fn)}`"
  unused = sorted(set(extra_args) - names)
  if unused:
    raise TypeError(
        f"{method}.update got keyword arguments {unused} that {where} does"
        " not take. Extra keyword arguments of `update` are data for"
        " `value_fn`, routed to it by name (as in optax's line searches):"
        " rename them to match its parameters or drop them."
    )
  missing = [
      p.name for p in data
      if p.default is inspect.Parameter.empty
      and p.name not in extra_args and p.name not in batched
  ]
  if missing:
    example = ", ".join(f"{name}=..." for name in missing)
    per_batch = (
        " (or, stacked per mini-batch, as keys of `approx_batch`)"
        if method == "scale_by_labpal" else "")
    raise TypeError(
        f"{method}: {where} needs {missing}, which were not given. Data"
        " arguments are passed to `update` by name, e.g."
        f" `tx.update(updates, state, params, ..., {example})`{per_batch}."
    )
  return {k: v for k, v in extra_args.items() if k in names}


def leading_size(tree: Any) -> int | None:
  """The common leading axis M of ``tree``'s leaves (None without leaves)."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return None
  sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(
        "scale_by_labpal: every leaf of `approx_batch` needs the same leading"
        f" axis M (one entry per mini-batch); got leading sizes {sizes}."
    )
  return sizes.pop()


def check_approx_batch(
    approx_batch: Any, value_fn: Callable[..., Any], approx_batches: Any
) -> None:
  """LABPAL's ``approx_batch``: ``value_fn`` arguments stacked M times."""
  if not isinstance(approx_batch, Mapping):
    raise TypeError(
        "scale_by_labpal: `approx_batch` must be a mapping from `value_fn`"
        " argument names to arrays stacked along a leading axis of M"
        f" mini-batches; got {type(approx_batch).__name__}."
    )
  unknown = set(approx_batch) - value_fn_arg_names(value_fn)
  if unknown:
    raise TypeError(
        f"scale_by_labpal: `approx_batch` keys {sorted(unknown)} are not"
        " arguments of `value_fn`."
    )
  size = leading_size(approx_batch)
  if (
      size is not None
      and isinstance(approx_batches, int)
      and size % approx_batches
  ):
    raise ValueError(
        f"scale_by_labpal: `approx_batch` holds M={size} mini-batches, which"
        f" is not a multiple of `approx_batches`={approx_batches} (M = "
        "approx_batches * k for k accumulated training batches)."
    )


# ------------------------------------------------------- steps on a line


def scalar_dtype(params: optax.Params) -> jnp.dtype:
  """Dtype of scalar state: float64 for float64 params, else float32."""
  return _common.widest_float_dtype(params)


def tree_cast_stats(tree: optax.Params) -> optax.Params:
  """Casts every leaf to its statistics dtype (float32 for bf16/f16)."""
  return jax.tree.map(lambda x: x.astype(_common.stats_dtype(x.dtype)), tree)


def scaled_like(
    direction: optax.Params, distance: jax.Array, like: optax.Params
) -> optax.Params:
  """``distance * direction`` with the dtypes of ``like`` (the params)."""
  return jax.tree.map(
      lambda d, ref: (distance.astype(d.dtype) * d).astype(ref.dtype),
      direction,
      like,
  )


def zero_unless(moved: jax.Array, updates: optax.Updates) -> optax.Updates:
  """``updates`` where ``moved``, else exact zeros (even for NaN entries)."""
  return jax.tree.map(
      lambda u: jnp.where(moved, u, jnp.zeros_like(u)), updates)


def loss_scalar(loss: Any, dtype: jnp.dtype) -> jax.Array:
  return jnp.asarray(loss).astype(dtype).reshape(())


def rounding_eps(*losses: Any) -> float:
  """Machine epsilon of the widest floating dtype among ``losses``."""
  dtypes = [jnp.result_type(x) for x in losses]
  dtypes = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
  return max((float(jnp.finfo(d).eps) for d in dtypes), default=0.0)


def maybe_pmean(x: jax.Array, axis_name: str | None) -> jax.Array:
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def check_axis_name(axis_name: Any) -> None:
  if axis_name is not None and not isinstance(axis_name, str):
    raise TypeError(
        f"`axis_name` must be None or a string; got {axis_name!r}."
    )


# ---------------------------------------- LABPAL's probes and parabola fit


def fit_dtype() -> jnp.dtype:
  """float64 when ``jax_enable_x64`` is on, else float32: the fit divides
  loss differences by ``fd_step``, so it runs at the widest precision."""
  return jnp.dtype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)


def _probe_point(
    params: optax.Params, unit: optax.Params, distance: jax.Array
) -> optax.Params:
  """``params + distance * unit`` in the dtype of ``unit`` (statistics dtype).

  bfloat16/float16 params are probed in float32. LABPAL's points lie
  ``fd_step`` = 1.77e-4 apart; rounded to bfloat16 (8 significant bits) a
  probe leaves the line by up to 2^-9 of each coordinate, as much as the
  move itself for coordinates above ~0.05, so the fitted curvature is
  rounding noise and fits fail (retried forever at the first measurement).
  ``value_fn`` receives the float32 points: the loss as a function of
  continuous params, equal to the bfloat16 model's at t = 0 when the model
  computes in float32 (or promotes to it).
  """
  return jax.tree.map(
      lambda p, u: p.astype(u.dtype) + distance.astype(u.dtype) * u,
      params, unit)


def line_losses(
    params: optax.Params,
    unit: optax.Params,
    points: tuple[Any, ...],
    value_fn: Callable[..., Any],
    fn_kwargs: dict[str, Any],
    approx_batch: Mapping[str, Any],
    dtype: jnp.dtype,
) -> tuple[jax.Array, jax.Array]:
  """Losses [M, len(points)] at ``params - t unit`` on each mini-batch of
  ``approx_batch`` (one after another, :func:`jax.lax.map`), and the
  rounding epsilon of the losses' dtype. See ``_probe_point``."""
  loss_eps = []

  def per_batch(batch):
    kwargs = {**fn_kwargs, **batch}
    losses = [
        value_fn(_probe_point(params, unit, -jnp.asarray(t, dtype)),
                 **kwargs)
        for t in points
    ]
    loss_eps.append(rounding_eps(*losses))
    return jnp.stack([loss_scalar(x, dtype) for x in losses])

  if leading_size(approx_batch) is None:
    losses = per_batch(dict(approx_batch))[None]
  else:
    losses = jax.lax.map(per_batch, dict(approx_batch))
  return losses, jnp.asarray(loss_eps[0], dtype)


def nanmean_rows(values: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean over the valid rows (NaN when there is none)."""
  count = jnp.sum(valid).astype(values.dtype)
  total = jnp.sum(jnp.where(valid, values, 0.0))
  return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


class Fit(NamedTuple):
  curvature: jax.Array
  slope: jax.Array
  step: jax.Array  # distance to the fitted (or reference) minimum
  ok: jax.Array


def parabola_through(
    diff_h: jax.Array, diff_mu: jax.Array, h: jax.Array, mu: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """(A, B) of p(t) = A t² + B t + L0 through (0,0), (h,Δh), (μ,Δμ)."""
  first = diff_h / h
  curv = ((diff_mu - diff_h) / (mu - h) - first) / mu
  return curv, first - curv * h


def fit_parabola(
    diff_h: jax.Array,
    diff_mu: jax.Array,
    h: jax.Array,
    mu: jax.Array,
    fit: str,
    noise: jax.Array,
) -> Fit:
  """The reference fit (``fit="reference"``) or the exact one (``"exact"``).

  The authors' code differentiates the three samples with ``np.gradient``
  twice, which gives ``(a, b) = (A/2, B + A h)`` and the step ``2 s* - h``
  (docs/labpal.md, "LABPAL"). ``noise`` bounds the rounding error of
  ``A μ²``; a smaller curvature counts as zero (a linear loss fails the fit)
  instead of letting the sign of rounding noise decide.
  """
  curv, slope = parabola_through(diff_h, diff_mu, h, mu)
  significant = curv * mu**2 > noise
  if fit == "reference":
    curv, slope = curv / 2, diff_h / h
  ok = significant & (curv > 0) & (slope < 0)
  safe_curv = jnp.where(ok, curv, jnp.ones_like(curv))
  return Fit(curv, slope, -slope / (2 * safe_curv), ok)


def fit_mean_losses(
    losses: jax.Array,
    loss_eps: jax.Array,
    fd_step: Any,
    measuring_step: Any,
    fit: str,
) -> tuple[Fit, jax.Array]:
  """The parabola through losses [M, 3] at t = 0, h, μ, and which batches
  were finite: per-batch differences, then their mean over the finite
  batches (the reference's ``nanmean``)."""
  fdt = losses.dtype
  valid = jnp.all(jnp.isfinite(losses), axis=1)
  diff_h = nanmean_rows(losses[:, 1] - losses[:, 0], valid)
  diff_mu = nanmean_rows(losses[:, 2] - losses[:, 0], valid)
  h = jnp.asarray(fd_step, fdt)
  mu = jnp.asarray(measuring_step, fdt)
  # Rounding error of A μ²: D1 enters it multiplied by μ/h.
  scale = jnp.max(jnp.where(valid[:, None], jnp.abs(losses), 0.0))
  noise = loss_eps * scale * (mu / h + 2)
  return fit_parabola(diff_h, diff_mu, h, mu, fit, noise), valid
