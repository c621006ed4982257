"""Test configuration: 8 virtual CPU devices before jax is imported, and the
tests that the default tier leaves to the slow tier (``slow_tier.txt``)."""

import os
import pathlib

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
  """Enables float64 for one test and restores the previous setting."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", previous)


def pytest_report_header(config):
  del config
  platform = jax.devices()[0].platform
  return f"jax {jax.__version__}, devices: {jax.device_count()} x {platform}"


_SLOW_TIER = pathlib.Path(__file__).with_name("slow_tier.txt")


def _slow_tier_ids() -> frozenset[str]:
  lines = (line.strip() for line in _SLOW_TIER.read_text().splitlines())
  return frozenset(line for line in lines if line and not line.startswith("#"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
  """Marks ``slow`` the tests listed in ``slow_tier.txt``.

  Runs before ``-m`` and ``-k`` deselect, so ``-m slow`` selects them and the
  default ``-m 'not slow'`` leaves them out. When the whole suite is
  collected, a listed id that no longer exists is an error, so that a renamed
  test cannot fall back into the default tier unnoticed.
  """
  slow_ids = _slow_tier_ids()
  collected = set()
  for item in items:
    collected.add(item.nodeid)
    if item.nodeid in slow_ids:
      item.add_marker(pytest.mark.slow)
  if config.args_source == pytest.Config.ArgsSource.TESTPATHS:
    stale = sorted(slow_ids - collected)
    if stale:
      raise pytest.UsageError(
          f"{_SLOW_TIER.name} lists tests that do not exist: {stale}"
      )
