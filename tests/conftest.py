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

settings.register_profile("ci", max_examples=15, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=400, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(params=backend.available())
def on_backend(request):
    """Run the test once per available backend ("numpy", and "c" when minitx_c is built)."""
    with backend.using(request.param):
        yield request.param
