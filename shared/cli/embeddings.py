"""`nexus embeddings …`: move a database from one embedding model or size to another, and back.

    nexus embeddings status [--json]                    every generation and how far it is filled
    nexus embeddings plan --model M --dimensions D [--json]   what a switch would cost; no API call
    nexus embeddings start --model M --dimensions D     add a generation; sweeps fill it
    nexus embeddings cutover                            make the filled generation the active one
    nexus embeddings rollback                           make the previous one active again
    nexus embeddings drop [--generation ID]             remove a retired (or unfinished) generation

A generation is one (model, dimensions) pair with vectors of its own (see the migration
`…_embedding_generations.sql`); search and the query embedder use the active one.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.config import Settings

MAX_DIMENSIONS = 4000  # pgvector's HNSW limit for halfvec, the type the indexes use


def add_embeddings_commands(commands: Any) -> None:
    """Register `nexus embeddings` and its subcommands on the CLI's subparsers."""
    embeddings = commands.add_parser("embeddings", help="embedding generations: change model or dimensions")
    sub = embeddings.add_subparsers(dest="embeddings_command", required=True, metavar="COMMAND")

    status = sub.add_parser("status", help="every generation, its state and how far it is filled")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=cmd_status)

    plan = sub.add_parser("plan", help="what a generation would cost to fill (calls no API)")
    _model_arguments(plan)
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(run=cmd_plan)

    start = sub.add_parser("start", help="add a generation that sweeps fill after live work")
    _model_arguments(start)
    start.set_defaults(run=cmd_start)

    sub.add_parser("cutover", help="make the filled generation active").set_defaults(run=cmd_cutover)
    sub.add_parser("rollback", help="make the retired generation active again").set_defaults(run=cmd_rollback)

    drop = sub.add_parser("drop", help="remove a generation that is not active, and its vectors")
    drop.add_argument("--generation", type=int, metavar="ID", help="which one (default: the retired one)")
    drop.set_defaults(run=cmd_drop)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="embedding model, e.g. text-embedding-3-small")
    parser.add_argument("--dimensions", required=True, type=_dimensions, help=f"1 to {MAX_DIMENSIONS}")


def _dimensions(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--dimensions must be a whole number, not {value!r}") from None
    if not 1 <= number <= MAX_DIMENSIONS:
        raise argparse.ArgumentTypeError(f"--dimensions must be between 1 and {MAX_DIMENSIONS}, not {number}")
    return number


def _store(settings: Settings) -> Any:
    from shared.local.database import open_store

    return open_store(settings)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    generations = _store(settings).generations_status()
    if args.json:
        print(json.dumps(generations, default=str, indent=2))
        return 0
    if not generations:
        print("no embedding generation yet: the first processing run starts one from the settings")
        return 0
    for g in generations:
        waiting = f", {g['chunks_awaiting_index']} awaiting the index" if g["chunks_awaiting_index"] else ""
        print(
            f"{g['id']:>3}  {g['state']:<8}  {g['model']} at {g['dimensions']} dimensions  "
            f"({g['storage']})  {g['chunks_embedded']}/{g['chunks_total']} chunks{waiting}"
        )
    return 0


def plan_figures(plan: dict[str, Any], model: str, dimensions: int) -> dict[str, Any]:
    """The database's plan with what follows from it: requests (as the sweeps' fills pack them)
    and estimated USD (None for a model without a known price)."""
    from shared.process.generations import fill_requests
    from shared.providers.prices import embedding_price_per_million

    inputs, tokens = int(plan.get("inputs_to_embed", 0)), int(plan.get("tokens_to_embed", 0))
    requests = fill_requests(inputs, tokens)
    price = embedding_price_per_million(model)
    return {
        "model": model,
        "dimensions": dimensions,
        **plan,
        "requests": requests,
        "usd_per_million_tokens": price,
        "estimated_usd": None if price is None else round(tokens / 1_000_000 * price, 6),
    }


def cmd_plan(args: argparse.Namespace, settings: Settings) -> int:
    figures = plan_figures(
        _store(settings).plan_generation(args.model, args.dimensions), args.model, args.dimensions
    )
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    cost = "no price known" if figures["estimated_usd"] is None else f"about ${figures['estimated_usd']:.4f}"
    print(
        f"{args.model} at {args.dimensions} dimensions: {figures['chunks_total']} chunks, "
        f"{figures['texts_total']} distinct texts; {figures['inputs_to_embed']} to embed "
        f"({figures['tokens_to_embed']} tokens, {figures['requests']} requests, {cost}); "
        f"{figures['tokens_reused']} tokens reused from vectors already stored"
    )
    return 0


def cmd_start(args: argparse.Namespace, settings: Settings) -> int:
    from shared.providers.embeddings import embedder_for, embedder_from_settings

    embedder_for(embedder_from_settings(settings), args.model, args.dimensions)  # the provider can make them
    generation = _store(settings).start_generation(args.model, args.dimensions)
    print(
        f"generation {generation.id} ({generation.label}) is building: sweeps and nexus process --all "
        "fill it after live work; nexus embeddings status shows how far, cutover switches when it is ready"
    )
    return 0


def cmd_cutover(args: argparse.Namespace, settings: Settings) -> int:
    answer = _store(settings).cutover_generation()
    if "missing" in answer:
        building = answer["building"]
        print(
            f"not switched: {answer['missing']} chunks have no {building['model']} vector yet; "
            "the sweeps fill them (nexus process --all does it now), then run cutover again"
        )
        return 1
    active, retired = answer["active"], answer["retired"]
    print(
        f"active: generation {active['id']} ({active['model']} at {active['dimensions']} dimensions); "
        f"generation {retired['id']} is retired and kept for rollback until dropped. Set "
        f"NEXUS_EMBEDDING_MODEL={active['model']} NEXUS_EMBEDDING_DIMENSIONS={active['dimensions']} "
        "where the functions run."
    )
    return 0


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    answer = _store(settings).rollback_generation()
    active = answer["active"]
    print(
        f"active again: generation {active['id']} ({active['model']} at {active['dimensions']} dimensions); "
        f"generation {answer['ready']['id']} is kept as ready. Set NEXUS_EMBEDDING_MODEL={active['model']} "
        f"NEXUS_EMBEDDING_DIMENSIONS={active['dimensions']} where the functions run."
    )
    return 0


def cmd_drop(args: argparse.Namespace, settings: Settings) -> int:
    from shared.errors import NexusError

    store = _store(settings)
    generation_id = args.generation
    if generation_id is None:
        retired = [g for g in store.generations_status() if g["state"] == "retired"]
        if not retired:
            raise NexusError(
                "No generation is retired; name one with --generation ID (nexus embeddings status)."
            )
        generation_id = retired[0]["id"]
    dropped = store.drop_generation(generation_id)
    print(f"dropped generation {dropped.id} ({dropped.label}) and its vectors")
    return 0
