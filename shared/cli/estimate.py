"""`nexus estimate PATH… [--json]`: what ingesting and processing these files would cost, after
reuse, with no API call.

Embeddings are counted exactly: the files are read and chunked as `nexus ingest` and processing
would (the same HTML-to-text, chunker and settings), and every distinct chunk text that has no
stored vector for a generation being written (the active one and any being built) is counted with
its exact cl100k tokens. Summaries are an estimate: with the OpenAI summariser, each first-round
call whose answer is not kept already (the summary cache) is counted with its exact prompt, each
answer at ANSWER_TOKENS; long items' reduce calls and the client-summary folds are estimated the
same way. The local providers cost nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.config import Settings

ANSWER_TOKENS = 160  # a summary of at most SUMMARY_WORDS (120) words, in tokens
MESSAGE_OVERHEAD_TOKENS = 8  # chat framing per call (roles, separators)
LOOKUP_SLICE = 1000  # chunk hashes looked up at a time (the vectors found are not kept)


def add_estimate_command(commands: Any) -> None:
    estimate = commands.add_parser(
        "estimate", help="tokens and USD to process files, after reuse (no API call)"
    )
    estimate.add_argument("paths", nargs="+", metavar="PATH")
    estimate.add_argument("--json", action="store_true")
    estimate.set_defaults(run=cmd_estimate)


def estimate_files(store: Any, settings: Settings, paths: list[Path]) -> dict[str, Any]:
    """The figures `nexus estimate` prints (see the module docstring)."""
    from shared.ingest.documents import FileRejected
    from shared.ingest.files import find_documents, read_document
    from shared.store.generations import generations_from_facts
    from shared.text.context import chunk_document
    from shared.text.documents import DocumentError
    from shared.text.extract import document_of
    from shared.text.hashing import sha256_hex
    from shared.text.tokenizer import count_tokens

    documents = []  # (source, what the summariser is given, its token counts) per file
    tokens_by_hash: dict[str, int] = {}
    chunks_total = 0
    for path in find_documents(paths):
        try:  # the text and sections processing would chunk (a file's extracted text)
            document = document_of(read_document(path))
        except (FileRejected, DocumentError) as exc:
            print(f"skipped {path}: {exc}", file=sys.stderr)
            continue
        text = document.text
        if not text.strip():
            continue
        chunks = chunk_document(
            document, settings.chunk_tokens, settings.chunk_overlap, headings=settings.chunk_headings
        )
        chunks_total += len(chunks)
        for chunk in chunks:
            tokens_by_hash.setdefault(sha256_hex(chunk.text), chunk.token_count)
        # as processing summarises: the chunks when they do not overlap, else the whole text
        if settings.chunk_overlap == 0:
            documents.append((path.as_posix(), [c.text for c in chunks], [c.token_count for c in chunks]))
        else:
            documents.append((path.as_posix(), [text], [count_tokens(text)]))

    generations = [
        (g.model, g.dimensions, g.state)
        for g in generations_from_facts(store.schema_facts())
        if g.state != "retired"
    ] or [(settings.embedding_model, settings.embedding_dimensions, "active")]
    embeddings = [
        _embedding_figures(store, model, dimensions, state, tokens_by_hash)
        for model, dimensions, state in generations
    ]
    summaries = _summary_figures(store, settings, documents)
    usd = [e["usd"] for e in embeddings] + [summaries["usd"]]
    return {
        "files": len(documents),
        "chunks": chunks_total,
        "distinct_texts": len(tokens_by_hash),
        "embeddings": embeddings,
        "summaries": summaries,
        "usd": None if any(u is None for u in usd) else round(sum(u for u in usd if u is not None), 6),
    }


def _embedding_figures(
    store: Any, model: str, dimensions: int, state: str, tokens_by_hash: dict[str, int]
) -> dict[str, Any]:
    from shared.providers.prices import embedding_price_per_million

    hashes = list(tokens_by_hash)
    stored = 0
    tokens_reused = 0
    for start in range(0, len(hashes), LOOKUP_SLICE):
        found = store.find_embeddings(hashes[start : start + LOOKUP_SLICE], model, dimensions)
        stored += len(found)
        tokens_reused += sum(tokens_by_hash[h] for h in found)
    tokens = sum(tokens_by_hash.values()) - tokens_reused
    price = embedding_price_per_million(model)
    return {
        "model": model,
        "dimensions": dimensions,
        "generation_state": state,
        "inputs_to_embed": len(hashes) - stored,
        "tokens_to_embed": tokens,
        "tokens_reused": tokens_reused,
        "usd": None if price is None else round(tokens / 1e6 * price, 6),
    }


def _summary_figures(store: Any, settings: Settings, documents: list[Any]) -> dict[str, Any]:
    from shared.process.budgets import is_local
    from shared.providers.prices import chat_prices_per_million
    from shared.providers.summaries import MAP_INPUT_TOKENS, summarizer_from_settings
    from shared.text.tokenizer import count_tokens

    summarizer: Any = summarizer_from_settings(settings)
    model = getattr(summarizer, "model", "local")
    figures: dict[str, Any] = {
        "model": model,
        "calls": 0,
        "calls_reused": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
    }
    if is_local(summarizer):
        return {**figures, "usd": 0.0}
    folds = math.ceil(len(documents) / max(getattr(summarizer, "fold_batch", 50), 1)) if documents else 0
    for source, texts, counts in documents:
        calls = summarizer.first_calls(texts, source, counts)
        keys = [key for key, _, _ in calls]
        known = store.find_summaries(keys)
        instruction = count_tokens(calls[0][1])
        for key, _, text in calls:
            if key in known:
                figures["calls_reused"] += 1
                continue
            figures["calls"] += 1
            figures["prompt_tokens"] += instruction + count_tokens(text) + MESSAGE_OVERHEAD_TOKENS
            figures["completion_tokens"] += ANSWER_TOKENS
        partials = len(keys)
        while partials > 1:  # the reduce rounds: summaries of summaries
            calls = math.ceil(partials * ANSWER_TOKENS / MAP_INPUT_TOKENS)
            figures["calls"] += calls
            figures["prompt_tokens"] += partials * ANSWER_TOKENS + calls * (
                instruction + MESSAGE_OVERHEAD_TOKENS
            )
            figures["completion_tokens"] += calls * ANSWER_TOKENS
            partials = calls
    figures["calls"] += folds  # the client summary, folded 50 item summaries at a time
    figures["prompt_tokens"] += folds * (2 * ANSWER_TOKENS) + len(documents) * ANSWER_TOKENS
    figures["completion_tokens"] += folds * ANSWER_TOKENS
    prices = chat_prices_per_million(model)
    figures["usd"] = (
        None
        if prices is None
        else round(
            figures["prompt_tokens"] / 1e6 * prices[0] + figures["completion_tokens"] / 1e6 * prices[1], 6
        )
    )
    return figures


def cmd_estimate(args: argparse.Namespace, settings: Settings) -> int:
    from shared.local.database import open_store

    figures = estimate_files(open_store(settings), settings, [Path(p) for p in args.paths])
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(
        f"{figures['files']} files, {figures['chunks']} chunks ({figures['distinct_texts']} distinct texts)"
    )
    for e in figures["embeddings"]:
        cost = "no price known" if e["usd"] is None else f"${e['usd']:.4f}"
        print(
            f"embeddings, {e['model']} at {e['dimensions']} ({e['generation_state']}): "
            f"{e['inputs_to_embed']} inputs, {e['tokens_to_embed']} tokens to embed, "
            f"{e['tokens_reused']} reused; {cost}"
        )
    s = figures["summaries"]
    cost = "no price known" if s["usd"] is None else f"${s['usd']:.4f}"
    print(
        f"summaries, {s['model']}: about {s['calls']} calls ({s['calls_reused']} kept already), "
        f"{s['prompt_tokens']} prompt and {s['completion_tokens']} completion tokens; {cost} (an estimate)"
    )
    total = "unknown (a model without a price)" if figures["usd"] is None else f"${figures['usd']:.4f}"
    print(f"total: {total}")
    return 0
