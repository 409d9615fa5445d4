"""`nexus usage` (what the APIs reported each client's work cost, per model, from the ledger) and
`nexus budget` (monthly budgets per client: a client at its budget has its items wait)."""

from __future__ import annotations

import argparse
import json
from decimal import Decimal
from typing import Any

from shared.cli.arguments import parse_day, parse_uuid
from shared.config import Settings
from shared.local.database import open_store


def usage_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The report's rows as JSON values: ids as strings, counts as ints, USD as a float (None
    when no price was known for any of its tokens)."""
    shaped = []
    for row in rows:
        usd = row.get("usd")
        unpriced = int(row.get("unpriced_tokens") or 0)
        tokens = int(row.get("tokens") or 0)
        shaped.append(
            {
                "client_id": None if row.get("client_id") is None else str(row["client_id"]),
                "model": row["model"],
                "kind": row["kind"],
                "requests": int(row.get("requests") or 0),
                "tokens": tokens,
                "prompt_tokens": int(row.get("prompt_tokens") or 0),
                "completion_tokens": int(row.get("completion_tokens") or 0),
                "usd": None if usd is None or (unpriced and unpriced == tokens) else float(Decimal(str(usd))),
                "unpriced_tokens": unpriced,
            }
        )
    return shaped


def cmd_usage(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    try:
        rows = usage_rows(store.usage_report(args.since, args.client_id))
    finally:
        store.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no usage recorded" + (f" since {args.since}" if args.since else ""))
        return 0
    print(f"{'client':36}  {'kind':9}  {'model':24}  {'requests':>8}  {'tokens':>12}  {'usd':>10}")
    for row in rows:
        usd = "?" if row["usd"] is None else f"{row['usd']:.4f}"
        client = row["client_id"] or "(none)"
        counts = f"{row['requests']:>8}  {row['tokens']:>12}"
        print(f"{client:36}  {row['kind']:9}  {row['model']:24}  {counts}  {usd:>10}")
    total = sum(row["usd"] or 0.0 for row in rows)
    unpriced = sum(row["unpriced_tokens"] for row in rows)
    print(f"total: {total:.4f} USD" + (f" ({unpriced} tokens of models with no price)" if unpriced else ""))
    return 0


def _parse_usd(value: str) -> float:
    try:
        usd = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of USD") from None
    if not usd >= 0 or usd == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of USD, 0 or more")
    return usd


def budget_line(budget: dict[str, Any]) -> str:
    """One budget as `nexus budget show` and `nexus status` print it."""
    spent, monthly = float(budget["spent_usd"]), float(budget["monthly_usd"])
    line = f"{budget['client_id']}  {spent:.4f} of {monthly:.4f} USD spent in {budget['month']}"
    if budget.get("over_budget"):
        line += f": over budget, {budget['waiting_items']} item(s) waiting"
    return line


def cmd_budget(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    try:
        if args.action == "set":
            print(budget_line(store.set_client_budget(args.client_id, args.monthly_usd)))
        elif args.action == "clear":
            had = store.clear_client_budget(args.client_id)
            print(f"budget of {args.client_id} cleared" if had else f"{args.client_id} had no budget")
        else:
            budgets = store.client_budgets()
            if args.json:
                print(json.dumps(budgets, indent=2, default=str))
            for budget in [] if args.json else budgets:
                print(budget_line(budget))
            if not budgets and not args.json:
                print("no budgets set")
    finally:
        store.close()
    return 0


def add_usage_commands(commands: Any) -> None:
    usage = commands.add_parser(
        "usage", help="tokens, requests and USD per client and model, from the ledger"
    )
    usage.add_argument("--client-id", type=parse_uuid, help="one client only")
    usage.add_argument("--since", type=parse_day, help="from this UTC day on (YYYY-MM-DD)")
    usage.add_argument("--json", action="store_true", help="print a JSON array of rows")
    usage.set_defaults(run=cmd_usage)

    budget = commands.add_parser("budget", help="monthly USD budgets per client")
    actions = budget.add_subparsers(dest="action", required=True, metavar="ACTION")
    set_ = actions.add_parser("set", help="set a client's monthly budget")
    set_.add_argument("--client-id", required=True, type=parse_uuid)
    set_.add_argument("--monthly-usd", required=True, type=_parse_usd, metavar="USD")
    show = actions.add_parser("show", help="each budget, this month's spend, items waiting")
    show.add_argument("--json", action="store_true")
    clear = actions.add_parser("clear", help="remove a client's budget")
    clear.add_argument("--client-id", required=True, type=parse_uuid)
    budget.set_defaults(run=cmd_budget)
