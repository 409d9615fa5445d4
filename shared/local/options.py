"""The options of `nexus dev` and `nexus dashboard`, and their defaults.

A module of its own, importing nothing but the standard library (and the list of functions), so
`shared.cli.dev` can show these defaults in `nexus --help` without loading the emulator.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.runtime.functions import FUNCTIONS

__all__ = [
    "DEFAULT_DASHBOARD_HOST",
    "DEFAULT_DASHBOARD_PORT",
    "DEFAULT_PORT",
    "DEFAULT_REFRESH_INTERVAL_S",
    "DEFAULT_SWEEP_INTERVAL_S",
    "DevOptions",
]

DEFAULT_PORT = 8080
# `nexus dashboard` listens where `nexus dev` serves the operator page by default (N + 4).
DEFAULT_DASHBOARD_PORT = DEFAULT_PORT + len(FUNCTIONS)
DEFAULT_DASHBOARD_HOST = "127.0.0.1"
DEFAULT_SWEEP_INTERVAL_S = 60.0
DEFAULT_REFRESH_INTERVAL_S = 600.0  # as deployed


@dataclass
class DevOptions:
    """The first port (each function gets the next), and the schedules' periods in seconds."""

    port: int = DEFAULT_PORT
    sweep_interval_s: float = DEFAULT_SWEEP_INTERVAL_S
    refresh_interval_s: float = DEFAULT_REFRESH_INTERVAL_S
