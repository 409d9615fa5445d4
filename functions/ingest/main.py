"""Ingest: store a knowledge item (or a batch) and queue it for processing.

Lambda: `handler` (function URL, payload 2.0, via mangum). functions-framework: `ingest` (HTTP).
Importing this file reads no setting and opens no connection; the first request does.
"""

from __future__ import annotations

from typing import Any

from shared.ingest.api import IngestEndpoint
from shared.runtime.adapters import flask_response, from_flask, lambda_http_handler

endpoint = IngestEndpoint()

handler = lambda_http_handler(endpoint.handle)


def ingest(request: Any) -> tuple[bytes, int, dict[str, str]]:
    """functions-framework HTTP target."""
    return flask_response(endpoint.handle(from_flask(request)))
