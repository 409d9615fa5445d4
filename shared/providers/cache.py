"""Providers built from settings, once per process: warm invocations reuse their HTTP connections.

Every cache made here is known to `close_all`, which closes what they built (tests call it when
their session ends, so pooled sockets are not reported as unclosed at the interpreter's exit).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["ProviderCache", "close_all"]

T = TypeVar("T")

_caches: list[ProviderCache[object]] = []


class ProviderCache(Generic[T]):
    """One built value per key (the settings it depends on), built at most once, thread-safe."""

    def __init__(self) -> None:
        self._built: dict[Hashable, T] = {}
        self._lock = threading.Lock()
        _caches.append(self)  # type: ignore[arg-type]

    def get(self, key: Hashable, build: Callable[[], T]) -> T:
        """The value built for `key`, building it now if this is the first call for it."""
        with self._lock:
            if key not in self._built:
                self._built[key] = build()
            return self._built[key]

    def close(self) -> None:
        """Close every value built here that can be closed, and forget them all."""
        with self._lock:
            built, self._built = list(self._built.values()), {}
        for value in built:
            close = getattr(value, "close", None)
            if callable(close):
                close()


def close_all() -> None:
    """Close what every provider cache of the process has built."""
    for cache in _caches:
        cache.close()
