"""The packaging checks' marker: `pytest -m "not packaging"` skips the slow `osls package` run."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "packaging: runs `osls package`, cfn-lint and the zip checks (needs node/npm; a few minutes)",
    )
