"""The two primitives every store backend provides (see `shared.store.base`): the rows of a
set-returning SQL function and the value of a scalar one. The store's calls are written once over
them (`SqlFunctionStore`, `GenerationCalls`)."""

from __future__ import annotations

from typing import Any

__all__ = ["FunctionCalls"]


class FunctionCalls:
    def _rows(
        self, function: str, arguments: dict[str, Any], *, idempotent: bool = False, vectors: bool = False
    ) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _value(self, function: str, arguments: dict[str, Any], *, idempotent: bool = False) -> Any:
        raise NotImplementedError
