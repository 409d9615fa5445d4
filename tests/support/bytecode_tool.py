"""infra/serverless/bytecode.py loaded as a module (it lives outside any package: it is a script
the Serverless plugin runs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

PATH = Path(__file__).resolve().parents[2] / "infra" / "serverless" / "bytecode.py"


def bytecode_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nexus_bytecode", PATH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
