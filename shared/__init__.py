"""Nexus Workers' shared package: the services behind the three functions and the `nexus` command.

Import the submodule you need (`shared.ingest`, `shared.store`, …); this package itself
imports nothing so that each function's cold start pays only for what it uses.
"""

__all__: list[str] = []
