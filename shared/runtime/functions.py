"""The deployed functions: one list that `nexus dev`, `nexus replay` and the packaging checks read.

Each function is a door in `functions/<name>/main.py` with a Lambda `handler` and one or more
functions-framework targets. `serverless.yml` and `infra/gcp/deploy.sh` cannot import Python;
tests/packaging checks that they deploy exactly these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

__all__ = ["FUNCTIONS", "Function", "function_named"]


@dataclass(frozen=True)
class Function:
    """A function's name (its folder under `functions/`), its dependency extra, its targets and
    the path its HTTP target is called on."""

    name: str
    extra: str
    http_targets: tuple[str, ...]
    event_targets: tuple[str, ...] = ()
    http_path: str = "/"  # where callers POST (its API route; a function URL answers at / too)

    @property
    def source(self) -> PurePosixPath:
        """`functions/<name>/main.py`, relative to the repository root."""
        return PurePosixPath("functions", self.name, "main.py")

    @property
    def dev_target(self) -> str:
        """The HTTP target `nexus dev` serves for this function (the first one)."""
        return self.http_targets[0]


# The order is `nexus dev`'s port order (function i on port N + i): add new functions at the end.
FUNCTIONS: tuple[Function, ...] = (
    Function("ingest", "ingest", ("ingest",), http_path="/api/knowledge/ingest"),
    Function("process", "process", ("webhook", "sweep"), ("pubsub",)),
    Function("gcal_refresh", "gcal", ("refresh",)),
    Function("search", "search", ("search",), http_path="/api/knowledge/search"),
)


def function_named(name: str) -> Function:
    """The function called `name`; raises KeyError naming the known ones."""
    for function in FUNCTIONS:
        if function.name == name:
            return function
    raise KeyError(f"No function named {name!r}; known: {', '.join(f.name for f in FUNCTIONS)}.")
