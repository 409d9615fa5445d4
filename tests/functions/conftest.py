"""The ingest function as the tests of this folder load it (modules needing other wiring, such as
a queue or a JWKS server, define their own `ingest`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import load_function
from tests.functions.test_ingest import close_function


@pytest.fixture
def ingest(function_env: pytest.MonkeyPatch) -> Iterator[Any]:
    """functions/ingest/main.py, imported afresh against the session database."""
    module = load_function("ingest")
    yield module
    close_function(module)
