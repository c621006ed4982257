"""The benchmark tasks: a data set, a model, a batch size and targets.

Every task is offline (see :mod:`benchmarks.harness.data`) and has fixed
train/validation/test splits; only the initialisation and the data order
depend on the run's seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from flax import nnx

from benchmarks.harness import data, models


@dataclasses.dataclass(frozen=True)
class Task:
  """One benchmark problem.

  Attributes:
    name: the ``--task`` name.
    load: returns the :class:`benchmarks.harness.data.Dataset` (cached).
    make_model: ``rngs -> nnx.Module``.
    batch_size: mini-batch size; the last incomplete batch of an epoch is
      dropped.
    epochs: epochs of the published (``--full``) table.
    default_epochs: epochs of the default (quick) invocation.
    target_loss: training-loss target for "steps to target loss".
    target_acc: test-accuracy target for "steps to target accuracy".
    description: one line for the docs.
  """

  name: str
  load: Callable[[], data.Dataset]
  make_model: Callable[[nnx.Rngs], nnx.Module]
  batch_size: int
  epochs: int
  default_epochs: int
  target_loss: float
  target_acc: float
  description: str


TASKS: dict[str, Task] = {
    "mnist1d": Task(
        name="mnist1d",
        load=lambda: data.mnist1d(num_samples=5000),
        make_model=lambda rngs: models.CNN1D(channels=64, rngs=rngs),
        batch_size=100,
        epochs=40,
        default_epochs=20,
        target_loss=0.1,
        target_acc=0.95,
        description=(
            "mnist1d (5000 samples: 3600 train / 400 val / 1000 test), "
            "CNN1D (3 conv, 64 channels), batch 100"
        ),
    ),
    "digits": Task(
        name="digits",
        load=lambda: data.digits(),
        make_model=lambda rngs: models.CNN2D(channels=32, rngs=rngs),
        batch_size=64,
        epochs=40,
        default_epochs=20,
        target_loss=0.05,
        target_acc=0.97,
        description=(
            "scikit-learn 8x8 digits (1294 train / 144 val / 359 test), "
            "CNN2D (2 conv, 32 channels), batch 64"
        ),
    ),
    "mnist1d-large": Task(
        name="mnist1d-large",
        load=lambda: data.mnist1d(num_samples=20000),
        make_model=lambda rngs: models.CNN1DBN(channels=32, depth=6,
                                               rngs=rngs),
        batch_size=128,
        epochs=40,
        default_epochs=10,
        target_loss=0.05,
        target_acc=0.98,
        description=(
            "mnist1d (20000 samples: 14400 train / 1600 val / 4000 test), "
            "CNN1DBN (6 conv + batch norm, 32 channels), batch 128"
        ),
    ),
}


def get_task(name: str) -> Task:
  try:
    return TASKS[name]
  except KeyError:
    raise ValueError(
        f"unknown task {name!r}; choose from {sorted(TASKS)}") from None
