"""Public names of a package loaded on first use, so importing the package costs nothing.

A package's `__init__` lists what it offers in `__all__` and where each name lives; the module
holding a name is imported only when someone reads it (PEP 562). Functions' cold starts then pay
only for the modules they call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, homes: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, whose public names live in the given modules
    (`{"chunk_text": "chunking"}`: relative to the package). Each name is imported once, then kept
    in the package's namespace."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home}"), name)
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(homes)

    return __getattr__, __dir__
