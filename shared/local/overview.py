"""What the operator page (`nexus dashboard`) shows, gathered from the store in one place.

`nexus status --json` and the page's `/api/status` print the store's `status()` through
`status_json`, so the two cannot drift apart. The page adds what `status` leaves out: items done
per hour, the failed items (to requeue them), each client's items, spend this month and budget,
and the readable state of each Google token (never a token: `shared.gcal.TokenState` holds none).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from shared.errors import NexusError

__all__ = ["ClientOverview", "GoogleTokens", "Overview", "gather_overview", "status_json"]

THROUGHPUT_HOURS = 24
MAX_FAILED_SHOWN = 50
MAX_CLIENTS_SHOWN = 50


def status_json(status: dict[str, Any]) -> str:
    """The store's status as `nexus status --json` prints it."""
    return json.dumps(status, default=str, indent=2)


@dataclass
class ClientOverview:
    """A client's items per status, its usage this month (UTC, all models together) and its budget
    when it has one."""

    client_id: str | None  # None: spend of no client (a search across all of them)
    name: str = ""
    items: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    tokens: int = 0
    usd: float | None = None  # None: nothing priced (no spend, or only models without a price)
    budget: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ClientOverview:
        """One `client_overview` row."""
        tokens, unpriced = int(row.get("tokens") or 0), int(row.get("unpriced_tokens") or 0)
        priced = row.get("usd") is not None and tokens > unpriced
        return cls(
            client_id=None if row.get("client_id") is None else str(row["client_id"]),
            name=str(row.get("name") or ""),
            items={name: int(row.get(name) or 0) for name in ("pending", "processing", "done", "failed")},
            requests=int(row.get("requests") or 0),
            tokens=tokens,
            usd=float(Decimal(str(row["usd"]))) if priced else None,
        )


@dataclass
class GoogleTokens:
    """Each stored Google token's readable state (`TokenState.as_dict()`), or why there is none."""

    accounts: list[dict[str, Any]] = field(default_factory=list)
    note: str | None = None


@dataclass
class Overview:
    """Everything the page shows, read at `generated_at`."""

    status: dict[str, Any]
    throughput: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    clients: list[ClientOverview]
    google: GoogleTokens
    month: str
    max_attempts: int
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def counts(self) -> dict[str, int]:
        counts = self.status.get("counts") or {}
        return {name: int(counts.get(name, 0)) for name in ("pending", "processing", "done", "failed")}

    @property
    def busiest_hour(self) -> int:
        """The most items done in one hour of `throughput` (at least 1, to scale the bars)."""
        return max([1, *(int(hour.get("done") or 0) for hour in self.throughput)])

    @property
    def done_in_window(self) -> int:
        return sum(int(hour.get("done") or 0) for hour in self.throughput)


def gather_overview(store: Any, settings: Any, token_store: Any = None) -> Overview:
    """Read everything the page shows. Raises what the store raises (DatabaseUnavailable when the
    database cannot be reached); the Google part never raises: its trouble becomes its note."""
    now = datetime.now(UTC)
    status = store.status()
    month_start = now.date().replace(day=1).isoformat()
    return Overview(
        status=status,
        throughput=store.throughput(THROUGHPUT_HOURS),
        failed=store.failed_items(MAX_FAILED_SHOWN),
        clients=client_rows(
            store.client_overview(month_start, MAX_CLIENTS_SHOWN), status.get("budgets") or []
        ),
        google=google_tokens(settings, token_store),
        month=now.strftime("%Y-%m"),
        max_attempts=int(settings.max_attempts),
        generated_at=now,
    )


def client_rows(rows: list[dict[str, Any]], budgets: list[dict[str, Any]]) -> list[ClientOverview]:
    """`client_overview` rows, in their order, each with its client's budget (`client_budgets`)."""
    by_client = {str(budget["client_id"]): budget for budget in budgets}
    clients = [ClientOverview.from_row(row) for row in rows]
    for client in clients:
        client.budget = by_client.get(str(client.client_id))
    return clients


def google_tokens(settings: Any, token_store: Any = None) -> GoogleTokens:
    """The readable state of every stored Google token; a sentence instead when there is none or
    it cannot be read (nothing here holds a token or a key)."""
    from shared.gcal import TokenMissing, token_states

    try:
        states = token_states(settings=settings, store=token_store, require_key=False)
    except TokenMissing:
        return GoogleTokens(note="No Google token is stored (nexus gcal init stores one).")
    except NexusError as exc:
        return GoogleTokens(note=str(exc))
    accounts = [state.as_dict() for state in states]
    note = None
    if not settings.token_encryption_key:
        note = "NEXUS_TOKEN_ENCRYPTION_KEY is not set here, so which key opens each token is unchecked."
    return GoogleTokens(accounts=accounts, note=note)
