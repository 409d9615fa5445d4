"""`nexus explain ITEM_ID [--json]`: where an item is and why, in one sentence and the facts behind
it (`explain_knowledge_item` in the migrations)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from shared.cli.arguments import parse_uuid
from shared.config import Settings
from shared.local.database import open_store

__all__ = ["add_explain_command", "why"]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def why(facts: dict[str, Any], max_attempts: int) -> str:
    """One sentence: why the item is where it is, and what happens next."""
    status = facts["status"]
    attempts = int(facts.get("attempts") or 0)
    budget = facts.get("budget") or {}
    providers = facts.get("providers") or []
    if status == "done":
        chunks, indexed = int(facts.get("chunks") or 0), int(facts.get("chunks_in_vector_index") or 0)
        waiting = ""
        if indexed < chunks:
            waiting = f"; {chunks - indexed} wait for the vector index (searched exactly meanwhile)"
        took = _age(facts.get("ingest_to_done_seconds"))
        return (
            f"Done: {chunks} chunks stored, {indexed} in the vector index{waiting}; "
            f"searchable {took} after ingest.{_without_text(facts)}"
        )
    if status == "processing":
        owner, until = facts.get("lease_owner"), facts.get("lease_expires_at")
        if facts.get("lease_expired"):
            return (
                f"Its worker ({owner}) stopped before finishing: the lease ran out at {until}, and the "
                f"next sweep claims it again (attempt {attempts + 1} of {max_attempts})."
            )
        return (
            f"Being processed by {owner} (attempt {attempts} of {max_attempts}); "
            f"its lease runs until {until}."
        )
    if status == "failed" and attempts >= max_attempts:
        return (
            f"Failed for good after {attempts} attempts: {facts.get('last_error')} "
            "Fix the cause, then requeue it: its Requeue button in nexus dashboard, or "
            '"Requeue failed items" in docs/operations.md.'
        )
    if budget.get("over_budget"):
        return (
            f"Waiting for its client's monthly budget: {float(budget['spent_usd']):.4f} of "
            f"{float(budget['monthly_usd']):.4f} USD spent in {budget['month']} (nexus budget set raises it)."
        )
    if providers:
        p = providers[0]
        state = "has no quota left" if p.get("state") == "quota" else "is failing"
        return (
            f"Waiting: {p['provider']} {state} (since {p.get('opened_at')}), so the fleet is not claiming; "
            f"the next probe goes out at {p.get('probe_at')}. Last error: {p.get('last_error')}"
        )
    next_at = facts.get("next_attempt_at")
    if status == "failed":
        after = f" after {next_at}" if next_at else ""
        return (
            f"Failed {attempts} of {max_attempts} attempts (last: {facts.get('last_error')}); "
            f"a sweep retries it{after}."
        )
    if next_at and int(facts.get("transient_failures") or 0):
        return (
            f"Pending: given back {facts['transient_failures']} time(s) for provider failures (last: "
            f"{facts.get('last_transient_error')}); a sweep takes it after {next_at}, or at once when "
            "the provider recovers."
        )
    return _pending(facts)


def _pending(facts: dict[str, Any]) -> str:
    """A pending item's sentence: a long PDF part-way through extraction says how far it got."""
    kept = int(facts.get("document_pages_kept") or 0)
    if kept:
        return (
            f"Pending for {_age(facts.get('age_seconds'))}: {kept} of its PDF's pages are extracted and "
            "kept; the next claim goes on from there."
        )
    return f"Pending for {_age(facts.get('age_seconds'))}: the next trigger or sweep claims it."


def _without_text(facts: dict[str, Any]) -> str:
    """' 2 of its 40 pages have no text layer (3, 7).', or '' when every page has text."""
    missing = facts.get("pages_without_text") or []
    if not missing:
        return ""
    shown = ", ".join(str(page) for page in missing[:10]) + (", …" if len(missing) > 10 else "")
    return f" {len(missing)} of its {facts.get('pages')} pages have no text layer ({shown})."


def cmd_explain(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    try:
        facts = store.explain_item(args.item_id)
    finally:
        store.close()
    if facts is None:
        print(f"nexus: no knowledge item {args.item_id}.")
        return 1
    facts["why"] = why(facts, settings.max_attempts)
    if args.json:
        print(json.dumps(facts, indent=2, default=str))
        return 0
    print(facts["why"])
    print(f"  client {facts['client_id']}  source {facts['source']}")
    attempts = f"attempts {facts['attempts']} of {settings.max_attempts}"
    print(f"  status {facts['status']}, {attempts}, age {_age(facts.get('age_seconds'))}")
    if facts.get("last_error"):
        print(f"  last error: {facts['last_error']}")
    print(f"  chunks {facts.get('chunks')}, in the vector index {facts.get('chunks_in_vector_index')}")
    for line in facts.get("usage") or []:
        usd = "?" if line.get("usd") is None else f"{float(line['usd']):.6f}"
        print(f"  paid: {line['kind']} {line['model']} {line['tokens']} tokens, {usd} USD")
    return 0


def add_explain_command(commands: Any) -> None:
    explain = commands.add_parser(
        "explain", help="where an item is and why (status, lease, back-off, budget, index)"
    )
    explain.add_argument("item_id", type=parse_uuid, metavar="ITEM_ID")
    explain.add_argument("--json", action="store_true", help="the facts as JSON, with the sentence as `why`")
    explain.set_defaults(run=cmd_explain)
