"""Shared test settings: bounded hypothesis runs so CI stays well under its time budget."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# MSGTRANS_HYPOTHESIS=thorough digs deeper when hunting a bug by hand.
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=2000)
settings.load_profile(os.environ.get("MSGTRANS_HYPOTHESIS", "default"))
