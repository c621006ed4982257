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
"""optax_adaptive: adaptive learning-rate methods as optax transformations.

Public names are re-exported here, one per line; the implementation lives in
private modules (``optax_adaptive/_<method>.py``), which users should not
import directly. The Flax helpers are imported on first use, so that
``import optax_adaptive`` does not import flax.
"""

import importlib
import typing

__version__ = "0.1.0"

# CProp (arXiv 1912.11493).
from optax_adaptive._cprop import CPropAdamState
from optax_adaptive._cprop import CPropState
from optax_adaptive._cprop import cprop
from optax_adaptive._cprop import cprop_adam
from optax_adaptive._cprop import cprop_sgd

# AdaS (arXiv 2006.06587).
from optax_adaptive._adas import AdasState
from optax_adaptive._adas import adas
from optax_adaptive._adas import adas_end_epoch
from optax_adaptive._adas import adas_layer_names
from optax_adaptive._adas_early_stop import AdasEarlyStopState
from optax_adaptive._adas_early_stop import adas_early_stop
from optax_adaptive._adas_early_stop import adas_early_stop_init
from optax_adaptive._adas_layers import LayerGroup
from optax_adaptive._adas_layers import adas_layer_groups
from optax_adaptive._spectral import EVBMFResult
from optax_adaptive._spectral import KnowledgeGain
from optax_adaptive._spectral import evbmf
from optax_adaptive._spectral import knowledge_gain

# AutoDrop (arXiv 2111.15317, UAI 2024).
from optax_adaptive._autodrop import AutoDropDetector
from optax_adaptive._autodrop import AutoDropState
from optax_adaptive._autodrop import autodrop
from optax_adaptive._autodrop_v1 import AutoDropV1State
from optax_adaptive._autodrop_v1 import autodrop_v1

# PAL (arXiv 1903.11991) and LABPAL (arXiv 2108.13880).
from optax_adaptive._pal import PalCase
from optax_adaptive._pal import PalInfo
from optax_adaptive._pal import ScaleByPalState
from optax_adaptive._pal import pal
from optax_adaptive._pal import scale_by_pal
from optax_adaptive._labpal_measure import LabpalInfo
from optax_adaptive._labpal_measure import LabpalStatus
from optax_adaptive._labpal import ScaleByLabpalState
from optax_adaptive._labpal import labpal
from optax_adaptive._labpal import scale_by_labpal

# Diagnostics.
from optax_adaptive._diagnostics import diagnostics

# Flax integration, imported by ``__getattr__`` on first use.
_LAZY_FLAX = {
    "TrainState": "optax_adaptive._flax",
    "linen_value_fn": "optax_adaptive._flax_utils",
    "nnx_value_fn": "optax_adaptive._flax_utils",
}
if typing.TYPE_CHECKING:
  from optax_adaptive._flax import TrainState
  from optax_adaptive._flax_utils import linen_value_fn
  from optax_adaptive._flax_utils import nnx_value_fn

__all__ = (
    "AdasEarlyStopState",
    "AdasState",
    "AutoDropDetector",
    "AutoDropState",
    "AutoDropV1State",
    "CPropAdamState",
    "CPropState",
    "EVBMFResult",
    "KnowledgeGain",
    "LabpalInfo",
    "LabpalStatus",
    "LayerGroup",
    "PalCase",
    "PalInfo",
    "ScaleByLabpalState",
    "ScaleByPalState",
    "TrainState",
    "__version__",
    "adas",
    "adas_early_stop",
    "adas_early_stop_init",
    "adas_end_epoch",
    "adas_layer_groups",
    "adas_layer_names",
    "autodrop",
    "autodrop_v1",
    "cprop",
    "cprop_adam",
    "cprop_sgd",
    "diagnostics",
    "evbmf",
    "knowledge_gain",
    "labpal",
    "linen_value_fn",
    "nnx_value_fn",
    "pal",
    "scale_by_labpal",
    "scale_by_pal",
)


def __getattr__(name: str) -> typing.Any:
  if name in _LAZY_FLAX:
    value = getattr(importlib.import_module(_LAZY_FLAX[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_LAZY_FLAX))
