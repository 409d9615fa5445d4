"""`nexus dashboard [--port N] [--host H]`: the operator page (`shared.local.dashboard`) until Ctrl-C.

Bound to loopback by default; on any other address it needs NEXUS_DASHBOARD_TOKEN and refuses to
start without it. `nexus dev` serves the same page beside its functions.
"""

from __future__ import annotations

import argparse
from typing import Any

from shared.config import Settings
from shared.local.options import DEFAULT_DASHBOARD_HOST, DEFAULT_DASHBOARD_PORT

__all__ = ["add_dashboard_command"]


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port (0 to 65535; 0: any free one)")
    return port


def cmd_dashboard(args: argparse.Namespace, settings: Settings) -> int:
    from shared.local.dashboard import run_dashboard

    return run_dashboard(settings, args.host, args.port)


def add_dashboard_command(commands: Any) -> None:
    dashboard = commands.add_parser(
        "dashboard",
        help="the operator page: items per status, throughput, failures to requeue, back-off, usage",
        description="Serve the operator page at / (items per status, oldest pending, throughput per "
        "hour, failed items with their errors and requeue buttons, vector-index backlog, provider "
        "back-off, usage per client, Google token state) and /api/status (nexus status --json). "
        "Beyond loopback it requires NEXUS_DASHBOARD_TOKEN. Ctrl-C stops it.",
    )
    dashboard.add_argument(
        "--port", type=_port, default=DEFAULT_DASHBOARD_PORT, help=f"default {DEFAULT_DASHBOARD_PORT}"
    )
    dashboard.add_argument(
        "--host",
        default=DEFAULT_DASHBOARD_HOST,
        help=f"address to listen on (default {DEFAULT_DASHBOARD_HOST}; "
        "any other needs NEXUS_DASHBOARD_TOKEN)",
    )
    dashboard.set_defaults(run=cmd_dashboard)
