"""Search: the best chunks of a client's knowledge for a query (hybrid, vector or text).

Lambda: `handler` (function URL, payload 2.0, via mangum). functions-framework: `search` (HTTP).
Importing this file reads no setting and opens no connection; the first request does.
"""

from __future__ import annotations

from typing import Any

from shared.runtime.adapters import flask_response, from_flask, lambda_http_handler
from shared.search.api import SearchEndpoint

endpoint = SearchEndpoint()

handler = lambda_http_handler(endpoint.handle)


def search(request: Any) -> tuple[bytes, int, dict[str, str]]:
    """functions-framework HTTP target."""
    return flask_response(endpoint.handle(from_flask(request)))
