"""`nexus gcal …`: the Google Calendar token commands.

    nexus gcal init [--no-browser] [--account NAME] [--scope URL]… [--port N]
    nexus gcal import FILE [--account NAME]     a Google `authorized_user` JSON file
    nexus gcal refresh [--force] [--account NAME]   every stored account unless --account
    nexus gcal status [--json]                  expiry, status, scopes, key; never a token
    nexus gcal rotate-key                       re-encrypt with the first NEXUS_TOKEN_ENCRYPTION_KEY
    nexus gcal new-key                          print a new key for NEXUS_TOKEN_ENCRYPTION_KEY

`refresh` and `status` exit 1 when a token needs attention. Importing this module is light:
google-auth and the database driver load only in the command that needs them.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.gcal.store import GoogleTokenStore
    from shared.gcal.tokens import TokenState


def add_gcal_commands(commands: Any) -> None:
    """Register `nexus gcal` and its subcommands on the CLI's subparsers."""
    gcal = commands.add_parser("gcal", help="Google Calendar OAuth token upkeep")
    sub = gcal.add_subparsers(dest="gcal_command", required=True, metavar="COMMAND")

    init = sub.add_parser("init", help="sign in with Google and store the token")
    init.add_argument("--no-browser", action="store_true", help="print the sign-in address, do not open it")
    init.add_argument("--scope", action="append", metavar="URL", help="OAuth scope (default: Calendar)")
    init.add_argument(
        "--port", type=int, default=0, help="loopback port for Google's redirect (default: any)"
    )
    _account_option(init)
    init.set_defaults(run=cmd_init)

    load = sub.add_parser("import", help="store a Google authorized_user JSON file")
    load.add_argument("file", type=Path, metavar="FILE")
    _account_option(load)
    load.set_defaults(run=cmd_import)

    refresh = sub.add_parser("refresh", help="refresh tokens close to expiry")
    refresh.add_argument("--force", action="store_true", help="refresh even when the token is fresh")
    refresh.add_argument("--account", metavar="NAME", help="only this account (default: every stored one)")
    refresh.set_defaults(run=cmd_refresh)

    status = sub.add_parser("status", help="show each token's expiry, status and scopes")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=cmd_status)

    sub.add_parser("rotate-key", help="re-encrypt the tokens with the first key").set_defaults(
        run=cmd_rotate_key
    )
    sub.add_parser("new-key", help="print a new encryption key").set_defaults(run=cmd_new_key)


def _account_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--account", default="default", metavar="NAME", help="account name (default: default)"
    )


def cmd_init(args: argparse.Namespace, settings: Settings) -> int:
    from shared.gcal.signin import run_initial_oauth_flow
    from shared.gcal.tokens import CALENDAR_SCOPES

    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # the sign-in address must show before we wait
    with _token_store(settings) as store:
        state = run_initial_oauth_flow(
            args.account,
            open_browser=not args.no_browser,
            scopes=tuple(args.scope or CALENDAR_SCOPES),
            port=args.port,
            settings=settings,
            store=store,
        )
    print(f"stored the Google token for account {state.account!r}; scopes: {', '.join(state.scopes) or '-'}")
    return 0


def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from shared.gcal.tokens import import_authorized_user

    with _token_store(settings) as store:
        state = import_authorized_user(args.file, args.account, settings=settings, store=store)
    when = f"valid until {_when(state.expiry)}" if state.expiry else "no access token yet"
    print(f"imported the Google token for account {state.account!r} ({when})")
    print("check it with 'nexus gcal refresh'")
    return 0


def cmd_refresh(args: argparse.Namespace, settings: Settings) -> int:
    from shared.gcal.refresh import refresh_account, refresh_all_accounts

    with _token_store(settings) as store:
        if args.account:
            outcomes = [refresh_account(args.account, force=args.force, settings=settings, store=store)]
        else:
            outcomes = refresh_all_accounts(force=args.force, settings=settings, store=store)
    for outcome in outcomes:
        print(f"{outcome.account}: {outcome.status}: {outcome.message}")
    return 0 if all(outcome.ok for outcome in outcomes) else 1


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from shared.gcal.tokens import token_states

    with _token_store(settings) as store:
        states = token_states(settings=settings, store=store)
    if args.json:
        print(json.dumps([state.as_dict() for state in states], indent=2))
    else:
        print("\n\n".join(_describe(state) for state in states))
    healthy = all(state.status == "ok" and state.key in ("current", "older") for state in states)
    return 0 if healthy else 1


def cmd_rotate_key(args: argparse.Namespace, settings: Settings) -> int:
    from shared.gcal.tokens import rotate_encryption_key

    with _token_store(settings) as store:
        count = rotate_encryption_key(settings=settings, store=store)
    print(f"re-encrypted {count} token(s) with the first key of NEXUS_TOKEN_ENCRYPTION_KEY")
    print("once every deployed function has the new key first, older keys can be removed from it")
    return 0


def cmd_new_key(args: argparse.Namespace, settings: Settings) -> int:
    from shared.gcal.crypto import generate_key

    print(generate_key())
    return 0


def _describe(state: TokenState) -> str:
    key_notes = {
        "current": "current (first key)",
        "older": "an older key; run 'nexus gcal rotate-key'",
        "unreadable": "no key in NEXUS_TOKEN_ENCRYPTION_KEY opens it",
    }
    lines = [
        ("status", state.status + (" (refreshing now)" if state.is_refreshing else "")),
        ("expiry", _when(state.expiry) if state.expiry else "-"),
        ("scopes", " ".join(state.scopes) or "-"),
        ("refreshed at", _when(state.refreshed_at) if state.refreshed_at else "-"),
        ("last error", state.last_error or "-"),
        ("client id", state.client_id or "-"),
        ("key", key_notes.get(state.key, state.key)),
    ]
    return state.account + "".join(f"\n  {name:<13}{value}" for name, value in lines)


def _when(moment: datetime | None) -> str:
    """An ISO time with how far it is from now, e.g. `2026-11-25T09:30:00Z (in 52 min)`."""
    if moment is None:
        return "-"
    minutes = round((moment - datetime.now(UTC)).total_seconds() / 60)
    distance = f"in {minutes} min" if minutes >= 0 else f"{-minutes} min ago"
    return f"{moment.astimezone(UTC).isoformat(timespec='seconds').replace('+00:00', 'Z')} ({distance})"


@contextmanager
def _token_store(settings: Settings) -> Iterator[GoogleTokenStore]:
    """The token store for a command: DATABASE_URL, Supabase, or the embedded Postgres under
    `.nexus/` (started and migrated on first use, like every other `nexus` command)."""
    from shared.gcal.store import default_token_store
    from shared.local.database import database_url
    from shared.store.backends import uses_supabase_api
    from shared.store.migrations import migrate

    if not uses_supabase_api(settings):
        url = database_url(settings)
        if not settings.database_url:
            migrate(url)
        settings = settings.model_copy(update={"database_url": url})
    store = default_token_store(settings)
    try:
        yield store
    finally:
        store.close()
