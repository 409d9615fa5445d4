"""`nexus dev` (the local emulator) and `nexus replay FILE` (a recorded event to the local handler)."""

from __future__ import annotations

from typing import Any


def add_dev_commands(commands: Any) -> None:
    """Register `nexus dev` and `nexus replay` on the CLI's subparsers."""
    dev = commands.add_parser("dev", help="run the whole stack locally (not yet available)")
    dev.set_defaults(run=lambda args, settings: dev.print_help() or 2)
