"""Crash safety: a processing subprocess killed with SIGKILL at random points never leaves an item
half done. After the lease runs out, one sweep brings every item to `done` with an exact chunk set.

Each trial uses fresh items in the test's own database. Each worker is a separate process forked
by a zygote subprocess that has already imported everything (`crash_zygote` in
tests/support/process_helpers.py), so a kill lands inside the sweep rather than in the
interpreter's start-up, and two dozen trials fit in seconds. Claims are small, so one run commits
several batches and a kill can fall before, between or inside any of them.
"""

from __future__ import annotations

import os
import random
import select
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from shared.process.pipeline import Processor
from shared.providers.embeddings import LocalEmbedder
from shared.providers.summaries import LocalSummarizer
from shared.store.database import ConnectionHolder
from shared.store.postgres import PostgresStore
from tests.support.process_helpers import (
    assert_exact_chunk_set,
    document,
    insert_items,
    item_states,
)

ROOT = Path(__file__).resolve().parents[2]
ZYGOTE = "from tests.support.process_helpers import crash_zygote; crash_zygote()"
TRIALS = 30
ITEMS_PER_TRIAL = 6
BATCH_TOKENS = 1000  # claims of ~4,000 characters: one or two items per committed batch
SEED = 20261125


class Zygote:
    """A subprocess that has imported everything once and forks a fresh worker process per run
    (see `crash_zygote`); the test kills those workers by pid."""

    def __init__(self, dsn: str) -> None:
        env = {**os.environ, "POWERTOOLS_LOG_LEVEL": "ERROR"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE, dsn, str(BATCH_TOKENS)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
        )
        self._buffer = b""
        assert self._expect("ready", 60.0) == "ready", "the worker zygote failed to start"

    def _line(self, timeout_s: float) -> str | None:
        """The next line the zygote or a worker printed, or None after `timeout_s`."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.process.stdout], [], [], remaining)[0]:
                return None
            chunk = os.read(self.process.stdout.fileno(), 65536)
            assert chunk, "the worker zygote exited"
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def _expect(self, prefix: str, timeout_s: float) -> str | None:
        """The next line starting with `prefix` (worker errors fail the test), or None on timeout."""
        deadline = time.monotonic() + timeout_s
        while (line := self._line(max(0.0, deadline - time.monotonic()))) is not None:
            assert not line.startswith("error "), line
            if line.startswith(prefix):
                return line
        return None

    def start(self, name: str, *flags: str) -> int:
        """Fork a worker that connects as `name` and sweeps at once; returns its pid."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"run {name} {' '.join(flags)}\n".encode())
        started = self._expect(f"started {name} ", 30.0)
        assert started is not None, f"worker {name} did not start"
        return int(started.split()[2])

    def kill_after(self, name: str, pid: int, delay_s: float) -> bool:
        """SIGKILL the worker `delay_s` after it started unless it finished first; True if killed."""
        if self._expect(f"finished {name} ", delay_s) is not None:
            return False
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # it finished at that very moment
            return False
        return True

    def wait_finished(self, name: str, timeout_s: float = 30.0) -> bool:
        return self._expect(f"finished {name} ", timeout_s) is not None

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def zygote(db_url: str) -> Iterator[Zygote]:
    started = Zygote(db_url)
    yield started
    started.close()


@pytest.fixture
def recovery(db_url: str) -> Iterator[Processor]:
    """The next invocation, in this process: a sweep with the same local providers."""
    store = PostgresStore(ConnectionHolder(db_url))
    yield Processor(store, LocalEmbedder(), LocalSummarizer(), batch_tokens=BATCH_TOKENS)
    store.close()


def new_client(db: psycopg.Connection[Any]) -> uuid.UUID:
    client_id = uuid.uuid4()
    db.execute("insert into clients (id) values (%s)", (client_id,))
    return client_id


def wait_until_disconnected(
    db: psycopg.Connection[Any], application_name: str, timeout_s: float = 10.0
) -> None:
    """Wait for Postgres to notice the dead worker and end its session (rolling back any open
    transaction and releasing its row locks), as it does when a client's socket closes."""
    deadline = time.monotonic() + timeout_s
    query = "select count(*) as n from pg_stat_activity where application_name = %s"
    while db.execute(query, (application_name,)).fetchone() != {"n": 0}:
        assert time.monotonic() < deadline, f"the session of {application_name} outlived its process"
        time.sleep(0.002)


def let_leases_expire(db: psycopg.Connection[Any]) -> None:
    """Time passes: every lease held by the dead worker is now over."""
    db.execute(
        "update knowledge_items set lease_expires_at = now() - interval '1 second' "
        "where status = 'processing'"
    )


def assert_embedding_matches(
    db: psycopg.Connection[Any], item_id: uuid.UUID, embedder: LocalEmbedder
) -> None:
    row = db.execute(
        "select content, embedding::text as vector from knowledge_chunks where knowledge_item_id = %s "
        "order by random() limit 1",
        (item_id,),
    ).fetchone()
    assert row is not None
    stored = [float(x) for x in row["vector"].strip("[]").split(",")]
    assert stored == pytest.approx(list(embedder.embed([row["content"]])[0]), abs=1e-6)


def trial_items(db: psycopg.Connection[Any], rng: random.Random, trial: int) -> list[uuid.UUID]:
    tag = f"{uuid.uuid4().hex[:8]}-{trial}"
    contents = [
        document(rng, rng.randint(1, 4), rng.randint(50, 140), f"{tag}-{n}") for n in range(ITEMS_PER_TRIAL)
    ]
    return insert_items(db, new_client(db), contents)


def test_sigkill_at_random_points_then_one_sweep_leaves_every_item_exactly_done(
    db: psycopg.Connection[Any], recovery: Processor, zygote: Zygote
) -> None:
    rng = random.Random(SEED)
    embedder = LocalEmbedder()
    # Calibrate: the median of a few unkilled runs over a trial's worth of items.
    runs: list[float] = []
    for n in range(3):
        trial_items(db, rng, -1 - n)
        started = time.monotonic()
        zygote.start(f"calibration-{n}")
        assert zygote.wait_finished(f"calibration-{n}")
        runs.append(time.monotonic() - started)
    run_s = statistics.median(runs)

    killed = 0
    kill_points: Counter[str] = Counter()
    for trial in range(TRIALS):
        ids = trial_items(db, rng, trial)
        name = f"crash-{trial}-{uuid.uuid4().hex[:8]}"
        pid = zygote.start(name)
        killed += zygote.kill_after(name, pid, rng.uniform(0.0, run_s))
        wait_until_disconnected(db, name)
        at_kill = Counter(s["status"] for s in item_states(db, ids).values())
        kill_points[_kill_point(at_kill["done"], len(ids))] += 1

        let_leases_expire(db)
        report = recovery.sweep(lambda: 60.0)

        assert report.failed == report.lost == 0
        assert report.done == len(ids) - at_kill["done"]  # what the dead worker finished is not redone
        states = item_states(db, ids)
        for item_id in ids:
            assert_exact_chunk_set(db, item_id)
            assert states[item_id]["attempts"] in (1, 2)
        assert_embedding_matches(db, rng.choice(ids), embedder)
        rows = db.execute(
            "select count(*) as n from knowledge_chunks where knowledge_item_id = any(%s)", (ids,)
        ).fetchone()
        assert rows == {"n": sum(s["chunk_count"] for s in states.values())}

    # The kills really landed inside the work, at varied points.
    assert killed >= TRIALS // 3, (killed, runs)
    assert kill_points["some done"] >= 1 and kill_points["none done"] >= 1, kill_points
    # Folding is optimistic and exactly-once: no client counts an item twice.
    doubled = db.execute(
        "select s.client_id from client_summaries s join knowledge_items k using (client_id) "
        "group by s.client_id, s.item_count "
        "having s.item_count <> count(*) filter (where k.summary_folded)"
    ).fetchall()
    assert doubled == []


def _kill_point(done: int, total: int) -> str:
    return "none done" if done == 0 else "all done" if done == total else "some done"


def test_a_crash_between_storing_and_folding_is_repaired_by_the_next_sweep(
    db: psycopg.Connection[Any], recovery: Processor, zygote: Zygote
) -> None:
    client_id = new_client(db)
    rng = random.Random(SEED + 1)
    ids = insert_items(db, client_id, [document(rng, 1, 60, f"fold-{n}") for n in range(3)])
    zygote.start("folder", "die-while-folding")
    wait_until_disconnected(db, "folder")  # it kills itself when it comes to fold
    for item_id in ids:
        assert_exact_chunk_set(db, item_id)  # stored before the crash

    let_leases_expire(db)
    recovery.sweep(lambda: 60.0)

    folded = db.execute(
        "select count(*) filter (where summary_folded) as n from knowledge_items where client_id = %s",
        (client_id,),
    ).fetchone()
    summary = db.execute(
        "select item_count from client_summaries where client_id = %s", (client_id,)
    ).fetchone()
    assert folded == {"n": 3}
    assert summary == {"item_count": 3}
