"""The `nexus` command: console script `nexus = shared.cli.main:main`, also `python -m shared.cli`.

Commands only parse arguments and print; the work is in the services below (`shared.local`,
`shared.ingest`, `shared.process`, `shared.search`, `shared.gcal`). No deployed function loads
this package (import-linter checks it; the Lambda zips leave it out)."""

from typing import TYPE_CHECKING

from shared.lazy import lazy_exports

_HOMES = {
    "build_parser": "main",
    "CommandError": "main",
}
__all__ = [
    "CommandError",
    "build_parser",
]
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)

if TYPE_CHECKING:
    from shared.cli.main import CommandError, build_parser
