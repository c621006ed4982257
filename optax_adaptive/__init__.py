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
import directly.
"""

__version__ = "0.1.0"

# CProp (arXiv 1912.11493).
from optax_adaptive._cprop import CPropAdamState
from optax_adaptive._cprop import CPropState
from optax_adaptive._cprop import cprop
from optax_adaptive._cprop import cprop_adam
from optax_adaptive._cprop import cprop_sgd

__all__ = (
    "CPropAdamState",
    "CPropState",
    "__version__",
    "cprop",
    "cprop_adam",
    "cprop_sgd",
)
