"""`nexus dev` (the local emulator) and `nexus replay FILE` (a recorded event to the local handler).

The work is in `shared.local` (`stack` and `replay`); this module only declares the arguments.
"""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path
from typing import Any

from shared.config import Settings
from shared.local.options import DEFAULT_PORT, DEFAULT_REFRESH_INTERVAL_S, DEFAULT_SWEEP_INTERVAL_S
from shared.runtime.functions import FUNCTIONS

LAST_OFFSET = len(FUNCTIONS) - 1  # `nexus dev --port N` serves functions on N .. N + LAST_OFFSET
PAGE_OFFSET = len(FUNCTIONS)  # and the operator page on N + PAGE_OFFSET


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a UUID") from None


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of seconds")
    return seconds


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    from shared.local import DevOptions, run_dev

    return run_dev(settings, DevOptions(args.port, args.sweep_interval, args.refresh_interval))


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from shared.local import ReplayOptions, run_replay

    options = ReplayOptions(
        path=Path(args.file),
        item=args.item,
        client_id=args.client_id,
        port=args.port,
        function=args.function,
        keep_auth=args.keep_auth,
    )
    return run_replay(settings, options)


def add_dev_commands(commands: Any) -> None:
    """Register `nexus dev` and `nexus replay` on the CLI's subparsers."""
    dev = commands.add_parser(
        "dev",
        help=f"run the whole stack locally: functions on N..N+{LAST_OFFSET}, the operator page on "
        f"N+{PAGE_OFFSET}, webhook bridge, schedules",
        description="Serve ingest (port N), the process webhook (N+1), gcal_refresh (N+2) and search "
        "(N+3) through functions-framework on 127.0.0.1, the operator page (nexus dashboard) on "
        f"N+{PAGE_OFFSET}, with a LISTEN/NOTIFY database-webhook bridge and the sweep and token-refresh "
        "schedules. Ctrl-C stops everything.",
    )
    dev.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"first port (default {DEFAULT_PORT})")
    dev.add_argument(
        "--sweep-interval",
        type=_seconds,
        default=DEFAULT_SWEEP_INTERVAL_S,
        metavar="S",
        help=f"seconds between sweeps ({DEFAULT_SWEEP_INTERVAL_S:g})",
    )
    dev.add_argument(
        "--refresh-interval",
        type=_seconds,
        default=DEFAULT_REFRESH_INTERVAL_S,
        metavar="S",
        help="seconds between Google token refreshes, when Google is configured "
        f"({DEFAULT_REFRESH_INTERVAL_S:g})",
    )
    dev.set_defaults(run=cmd_dev)

    replay = commands.add_parser(
        "replay",
        help="send a recorded event (webhook, SQS, EventBridge, function URL, Pub/Sub) to its local handler",
        description="Replay a recorded event in-process (default) or against a running nexus dev "
        "(--port). Placeholders: REPLACE_WITH_ITEM_ID (--item), REPLACE_WITH_CLIENT_ID (--client-id, "
        "default the dev client), REPLACE_WITH_API_KEY and REPLACE_WITH_WEBHOOK_SECRET (the local "
        "credentials). Examples: examples/events/.",
    )
    replay.add_argument("file", metavar="FILE", help="the event, as JSON")
    replay.add_argument("--item", type=_uuid, help="knowledge item id for REPLACE_WITH_ITEM_ID")
    replay.add_argument("--client-id", type=_uuid, help="client id for REPLACE_WITH_CLIENT_ID")
    replay.add_argument(
        "--port",
        type=int,
        help="send over HTTP to a nexus dev started with this --port (default: in-process)",
    )
    replay.add_argument(
        "--function",
        choices=[function.name for function in FUNCTIONS],
        help="override the handler chosen by shape",
    )
    replay.add_argument(
        "--keep-auth", action="store_true", help="keep the recorded Authorization header (default: local one)"
    )
    replay.set_defaults(run=cmd_replay)
