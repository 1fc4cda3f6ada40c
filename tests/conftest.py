"""Test configuration: simulate 8 CPU devices before JAX is imported anywhere."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import sys

import pytest


@pytest.fixture(autouse=True)
def _fresh_gin_config():
  """Each test starts and ends with an empty gin config: bindings a test parsed (VOCAB_SIZE, DataChecks, ...) must
  not reach the next test in the same worker."""
  if "gin" in sys.modules:
    sys.modules["gin"].clear_config()
  yield
  if "gin" in sys.modules:
    sys.modules["gin"].clear_config()
