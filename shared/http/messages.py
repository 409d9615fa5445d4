"""HTTP requests and responses independent of the runtime.

Every entry point (mangum/ASGI on Lambda, functions-framework's Flask request, the CLI's
in-process calls) converts to `HttpRequest` and from `HttpResponse`, so a service answers HTTP
the same way on every runtime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    context: Any = None  # the Lambda context, when there is one (remaining time, request id)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class HttpResponse:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, content_type: str = "application/json") -> HttpResponse:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        return cls(status, body, {"content-type": content_type})

    def payload(self) -> Any:
        return json.loads(self.body)
