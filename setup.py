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
"""Builds the optional XLA:CPU kernels of CProp (everything else is pyproject).

The kernels are a shared library of XLA FFI handlers, loaded with ctypes
(not a Python extension module). Building them needs a C++17 compiler and
the XLA FFI headers that jaxlib ships; if the build fails, the install goes
on without them and CProp uses XLA's own loops on the CPU (same results,
slower update; see docs/cprop.md).
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildFfiLibrary(build_ext):
  """Adds jaxlib's FFI headers, which exist only once build deps are in."""

  def build_extensions(self):
    try:
      import jaxlib  # a build requirement, not a dependency of the module
    except ImportError:
      self.warn("jaxlib not importable: building without the CPU kernels")
      self.extensions = []
      return
    include = os.path.join(os.path.dirname(jaxlib.__file__), "include")
    for extension in self.extensions:
      extension.include_dirs.append(include)
    super().build_extensions()

  def get_export_symbols(self, ext):
    return []  # an FFI handler library, not a module with PyInit_<name>


CPU_KERNELS = Extension(
    "optax_adaptive._cprop_cpu_kernels",
    sources=["optax_adaptive/csrc/cprop_cpu.cc"],
    language="c++",
    extra_compile_args=["-O3", "-std=c++17", "-fno-math-errno",
                        "-fno-trapping-math"],
    optional=True,
)

setup(ext_modules=[CPU_KERNELS], cmdclass={"build_ext": BuildFfiLibrary})
