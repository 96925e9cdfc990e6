"""Shared pytest setup: hypothesis profiles and the backend fixture.

Profiles (select with HYPOTHESIS_PROFILE, default "dev"):
  ci        few examples, no deadline: the whole suite stays well under 10 minutes on 2 cores.
  dev       the default for local runs.
  thorough  many examples, for a long local run before a release.
"""
import os

import pytest
from hypothesis import HealthCheck, settings

from minitx import backend

# on_backend is function-scoped but only selects a backend, which every example may share
_SUPPRESS = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile("ci", max_examples=15, deadline=None, derandomize=True,
                          suppress_health_check=_SUPPRESS)
settings.register_profile("dev", max_examples=40, deadline=None,
                          suppress_health_check=_SUPPRESS)
settings.register_profile("thorough", max_examples=400, deadline=None,
                          suppress_health_check=_SUPPRESS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(params=backend.available())
def on_backend(request):
    """Run the test once per available backend ("numpy", and "c" when minitx_c is built)."""
    with backend.using(request.param):
        yield request.param
