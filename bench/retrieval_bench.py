"""Retrieval quality on relevance judgements no one here wrote: the PostgreSQL manual's own index.

Each top-level entry of `bookindex.html` (Debian's `postgresql-doc-15`) names a term and the pages
it points to; those pages are the term's relevant documents. The manual's other pages are
ingested (`nexus ingest`, HTML to text) and processed with the local embedder (offline, lexical
hashed features: no semantic model is available here) into a fresh embedded database; then each
sampled term is searched as text, vector and hybrid (k = 10 chunks), and the pages of the hits are
compared with the index's:

- recall@10: the share of a term's relevant pages (at most 10) among the pages of its 10 hits;
- MRR: 1 / the rank of the first hit on a relevant page (0 when none is).

    .venv/bin/python bench/retrieval_bench.py [--terms 400] [--docs DIR] [--keep]
"""

from __future__ import annotations

import argparse
import html
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv" / "bin" / "python")
MANUAL = Path("/usr/share/doc/postgresql-doc-15/html")
sys.path.insert(0, str(ROOT))

_ENTRY = re.compile(r'<dt id="ientry-[^"]*">(.*?)</dt>', re.S)
_LINK = re.compile(r'<a class="indexterm" href="([^"#]+)')
_TAG = re.compile(r"<[^>]+>")


def index_terms(manual: Path) -> dict[str, set[str]]:
    """Top-level index terms → the pages (file names) they point to."""
    text = (manual / "bookindex.html").read_text(encoding="utf-8")
    terms: dict[str, set[str]] = {}
    for match in _ENTRY.finditer(text):
        body = match.group(1)
        term = html.unescape(_TAG.sub("", body.split("<a ", 1)[0])).strip().rstrip(",").strip()
        pages = set(_LINK.findall(body))
        if term and pages and len(term) > 2:
            terms.setdefault(term, set()).update(pages)
    return terms


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--terms", type=int, default=400, help="index terms sampled (default 400)")
    parser.add_argument("--docs", type=Path, default=MANUAL)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--keep", action="store_true", help="keep the database (prints NEXUS_HOME)")
    parser.add_argument("--home", type=Path, help="a NEXUS_HOME kept by --keep: search it, ingest nothing")
    parser.add_argument("--modes", default="text,vector,hybrid")
    args = parser.parse_args()

    work = args.home.parent if args.home else Path(tempfile.mkdtemp(prefix="nexus-retrieval-"))
    corpus = work / "manual"
    corpus.mkdir(exist_ok=True)
    for page in args.docs.glob("*.htm*"):
        if page.name != "bookindex.html":  # the judgements, not a document
            shutil.copy(page, corpus / page.name)
    client_file = work / "client"
    env = {
        **os.environ,
        "NEXUS_HOME": str(work / ".nexus"),
        "NEXUS_EMBEDDING_PROVIDER": "local",
        "NEXUS_SUMMARY_PROVIDER": "local",
    }
    env.pop("DATABASE_URL", None)
    nexus = [PY, "-m", "shared.cli"]
    started = time.monotonic()
    if args.home:  # search what --keep kept
        client = client_file.read_text().strip()
    else:
        client = str(uuid.uuid4())
        client_file.write_text(client)
        subprocess.run(
            [*nexus, "ingest", str(corpus), "--client-id", client, "--create-client"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        subprocess.run([*nexus, "process", "--all"], cwd=ROOT, env=env, check=True, capture_output=True)
    print(
        f"corpus: {len(list(corpus.iterdir()))} pages, ingested and processed in "
        f"{time.monotonic() - started:.0f} s",
        flush=True,
    )

    os.environ.update(
        {k: env[k] for k in ("NEXUS_HOME", "NEXUS_EMBEDDING_PROVIDER", "NEXUS_SUMMARY_PROVIDER")}
    )
    os.environ.pop("DATABASE_URL", None)
    from shared.config import get_settings
    from shared.local.database import open_store
    from shared.search.service import search

    settings = get_settings()
    store = open_store(settings)
    present = {p.name for p in corpus.iterdir()}
    judged = {t: pages & present for t, pages in index_terms(args.docs).items() if pages & present}
    terms = random.Random(args.seed).sample(sorted(judged), min(args.terms, len(judged)))
    results: dict[str, dict[str, list[float]]] = {}
    for mode in args.modes.split(","):
        recalls, ranks, seconds = [], [], []
        for term in terms:
            relevant = judged[term]
            t0 = time.perf_counter()
            hits = search(store, settings, term, 10, uuid.UUID(client), mode=mode)  # type: ignore[arg-type]
            seconds.append(time.perf_counter() - t0)
            pages = [Path(h.source).name for h in hits]
            found = set(pages) & relevant
            recalls.append(len(found) / min(len(relevant), 10))
            first = next((i for i, page in enumerate(pages, 1) if page in relevant), None)
            ranks.append(1 / first if first else 0.0)
        results[mode] = {"recall": recalls, "mrr": ranks, "seconds": seconds}
        print(
            f"{mode:>6}: recall@10 {statistics.mean(recalls):.3f}, MRR {statistics.mean(ranks):.3f}, "
            f"p50 {statistics.median(seconds) * 1000:.1f} ms per query ({len(terms)} terms)",
            flush=True,
        )
    store.close()
    if args.keep or args.home:
        print(f"NEXUS_HOME={work / '.nexus'}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
