"""Shared test setup: an offline environment for every test and every subprocess it starts."""

from __future__ import annotations

import pytest

OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


@pytest.fixture(scope="session", autouse=True)
def _offline_env():
    """No test phones home: Gradio analytics off, Hugging Face Hub offline (inherited by subprocesses)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in OFFLINE_ENV.items():
            mp.setenv(key, value)
        yield
