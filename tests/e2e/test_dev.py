"""`nexus dev`: the emulator as a user runs it, and its database-webhook bridge up close.

- The whole stack in a subprocess with its own NEXUS_HOME (so its own embedded Postgres): a POST to
  ingest, over real HTTP with the printed dev API key, ends in processed chunks through the
  LISTEN/NOTIFY bridge alone; the operator page, on the port after the functions', counts it;
  SIGTERM then stops it with exit 0, no child left, no postgres left.
- The bridge in-process on an isolated database: it delivers Supabase's exact webhook body (also
  for rows too big for NOTIFY), retries an unavailable webhook, ignores non-content updates.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest
from psycopg.rows import dict_row

from shared.cli.main import main
from shared.config import Settings, reset_settings
from shared.local import DeliveryRetries, DevError, WebhookBridge, dev_credentials, require_free_ports
from shared.runtime.functions import FUNCTIONS
from tests.conftest import ROOT
from tests.support.process_helpers import isolated_database

START_TIMEOUT_S = 60.0
PROCESS_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0


# -- the whole stack, as a subprocess --------------------------------------------------------------


def _free_port_block(count: int = len(FUNCTIONS) + 1) -> int:
    """A base port with `count` consecutive free ports after it (the functions', then the
    operator page's)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + count >= 65536:
            continue
        try:
            require_free_ports(range(base, base + count))
        except DevError:
            continue
        return base
    raise RuntimeError("no block of free ports")


class DevProcess:
    """`nexus dev` in a subprocess, its output collected line by line by a thread."""

    def __init__(self, home: Path, port: int) -> None:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("NEXUS_", "SUPABASE_", "GOOGLE_", "OPENAI_", "AWS_", "POWERTOOLS_"))
            and name != "DATABASE_URL"
        }
        env.update(NEXUS_HOME=str(home), PYTHONUNBUFFERED="1")
        command = [
            sys.executable,
            "-m",
            "shared.cli",
            "dev",
            "--port",
            str(port),
            "--sweep-interval",
            "3600",
        ]
        home.mkdir(parents=True)
        self.proc = subprocess.Popen(
            command,
            cwd=home,  # no stray .env files
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self._collector = threading.Thread(target=self._collect, daemon=True)
        self._collector.start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:  # closed at EOF, i.e. once the process and its children are gone
            for line in self.proc.stdout:
                with self._new_line:
                    self.lines.append(line.rstrip("\n"))
                    self._new_line.notify_all()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        """The first output line matching `pattern`, waiting for it (bounded)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        with self._new_line:
            while True:
                for line in self.lines:
                    if match := regex.search(line):
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    pytest.fail(f"no line matching {pattern!r} (exit {self.proc.poll()}):\n{self.output}")
                self._new_line.wait(min(left, 0.5))

    def read_to_end(self, timeout_s: float = 10.0) -> None:
        """Wait until every line the process wrote has been collected."""
        self._collector.join(timeout_s)

    def kill(self) -> None:
        """Kill what is still running (a failed test), then wait for the output to end."""
        if self.proc.poll() is None:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.kill()
            self.proc.kill()
            self.proc.wait(10)
        self._collector.join(10)


def _stop_leftover_postgres(data_dir: Path) -> None:
    """After a failed test: fast-shutdown a server nexus dev left behind (it is not our child)."""
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.is_file():
        return
    with contextlib.suppress(ProcessLookupError, ValueError, psutil.Error):
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGINT)
        psutil.Process(pid).wait(15)


@pytest.fixture
def dev() -> Iterator[tuple[DevProcess, Path, int]]:
    # Not under pytest's basetemp: a concurrent pytest session resets /tmp/pytest-of-<user> to 0700,
    # which an embedded server initialised as a different user (root runs it as "pgserver") cannot cross.
    root = Path(tempfile.mkdtemp(prefix="nexus-dev-test-"))
    home = root / "home"
    port = _free_port_block()
    process = DevProcess(home, port)
    try:
        yield process, home, port
    finally:
        process.kill()
        _stop_leftover_postgres(home / "pgdata")
        shutil.rmtree(root, ignore_errors=True)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _postgres_on(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and any(str(data_dir) in part for part in cmdline):
            found.append(proc)
    return found


def _processed_chunks(dsn: str, item_id: str, timeout_s: float) -> tuple[str, int]:
    """Poll the database until the item is done (bounded); return its status and chunk count."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        while True:
            row = conn.execute(
                "select status, (select count(*) from knowledge_chunks c where c.knowledge_item_id = k.id)"
                " as chunks from knowledge_items k where id = %s",
                (item_id,),
            ).fetchone()
            assert row is not None
            if row["status"] in ("done", "failed") or time.monotonic() > deadline:
                return str(row["status"]), int(row["chunks"])
            time.sleep(0.2)


def test_ingest_ends_in_chunks_through_the_bridge_and_sigterm_stops_everything(
    dev: tuple[DevProcess, Path, int],
) -> None:
    process, home, port = dev
    started = time.monotonic()
    key = process.wait_for(r"^\s+API key\s+(\S+)$", START_TIMEOUT_S)[1]
    client_id = process.wait_for(r"^\s+dev client\s+(\S+)$", 1)[1]
    dsn = process.wait_for(r"^\s+database\s+(\S+)", 1)[1]
    page = process.wait_for(r"^\s+dashboard\s+GET\s+(http://127\.0\.0\.1:(\d+)/)", 1)
    assert int(page[2]) == port + len(FUNCTIONS)  # the operator page, next to the functions
    process.wait_for(r"^sweep: nothing was pending$", START_TIMEOUT_S)  # the start-up sweep is over
    children = psutil.Process(process.proc.pid).children(recursive=True)
    assert len(children) >= len(FUNCTIONS)  # a functions-framework per function (plus gunicorn workers)

    response = httpx.post(
        f"http://127.0.0.1:{port}/api/knowledge/ingest",
        headers={"authorization": f"Bearer {key}"},
        json={"client_id": client_id, "source": "notes/dev.md", "content": "The dock ships Thursday. " * 200},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    item_id = response.json()["id"]

    status, chunks = _processed_chunks(dsn, item_id, PROCESS_TIMEOUT_S)
    assert (status, chunks > 0) == ("done", True), process.output
    # processed by the webhook the bridge delivered (the sweep runs only hourly here)
    process.wait_for(rf"^webhook INSERT knowledge_items {item_id} → 200 done", 5)
    ready_s = time.monotonic() - started
    # the operator page answers what `nexus status --json` does, over the stack's database
    status = httpx.get(f"{page[1]}api/status", timeout=30)
    assert status.status_code == 200 and status.json()["counts"].get("done") == 1, status.text
    assert "count-done" in httpx.get(page[1], timeout=30).text

    # `nexus replay --port` sends recorded events to this running stack, with its dev credentials
    code, result = _replay_over_http(home, port, "function_url_ingest.json")
    assert (code, result["statusCode"]) == (0, 201), result
    code, result = _replay_over_http(home, port, "supabase_webhook_insert.json", "--item", item_id)
    assert (code, result["statusCode"], json.loads(result["body"])["status"]) == (0, 200, "skipped")
    assert _replay_over_http(home, port, "sqs_batch.json", "--item", item_id)[0] == 1  # no HTTP form

    data_dir = home / "pgdata"
    assert (data_dir / "postmaster.pid").is_file()
    process.proc.send_signal(signal.SIGTERM)
    assert process.proc.wait(STOP_TIMEOUT_S) == 0, process.output
    process.read_to_end()
    assert process.output.splitlines()[-1] == "nexus dev: stopped"
    assert not (data_dir / "postmaster.pid").exists(), "the embedded Postgres was left running"
    assert _postgres_on(data_dir) == []
    assert [c.pid for c in children if _alive(c)] == []
    assert ready_s < START_TIMEOUT_S


def _replay_over_http(home: Path, port: int, name: str, *args: str) -> tuple[int, Any]:
    """`nexus replay examples/events/<name> --port PORT`, in-process, against the running stack."""
    command = ["replay", str(ROOT / "examples" / "events" / name), "--port", str(port), *args]
    with pytest.MonkeyPatch.context() as patch:
        for name_ in [n for n in os.environ if n.startswith(("NEXUS_", "DATABASE_URL"))]:
            patch.delenv(name_)
        patch.setenv("NEXUS_HOME", str(home))
        out = io.StringIO()
        reset_settings()
        try:
            with contextlib.redirect_stdout(out):
                code = main(command)
        finally:
            reset_settings()
    return code, json.loads(out.getvalue()) if out.getvalue() else None


def test_taken_port_is_refused_with_a_sentence() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        with pytest.raises(DevError, match=f"Port {port} is already in use; pass --port N"):
            require_free_ports([port])


def test_dev_credentials_are_generated_once_and_the_environment_wins(tmp_path: Path) -> None:
    first = dev_credentials(Settings(home=str(tmp_path)))
    again = dev_credentials(Settings(home=str(tmp_path)))
    assert first == again
    assert (tmp_path / "dev.env").stat().st_mode & 0o777 == 0o600
    chosen = dev_credentials(Settings(home=str(tmp_path), ingest_api_keys=("mine",), webhook_secret="shh"))
    assert (chosen.api_key, chosen.webhook_secret, chosen.client_id) == ("mine", "shh", first.client_id)


# -- the bridge, in-process ----------------------------------------------------------------------


class FlakyWebhook:
    """A webhook that is unreachable, then overloaded, then fine; it records what it received."""

    def __init__(self, failures: list[int | None]) -> None:
        self.failures = list(failures)  # None: connection refused; a number: that status
        self.calls = 0
        self.received: queue.Queue[dict[str, Any]] = queue.Queue()

    def __call__(self, body: dict[str, Any]) -> tuple[int, str]:
        self.calls += 1
        if self.failures:
            failure = self.failures.pop(0)
            if failure is None:
                raise ConnectionRefusedError("process function is restarting")
            return failure, "unavailable"
        self.received.put(body)
        return 200, "done"

    def next_body(self) -> dict[str, Any]:
        return self.received.get(timeout=10)


@pytest.fixture
def bridge_db(pg_url: str) -> Iterator[tuple[str, psycopg.Connection[Any]]]:
    with (
        isolated_database(pg_url) as url,
        psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn,
    ):
        yield url, conn


def _row_json(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...]) -> dict[str, Any]:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return dict(row["j"])


def _webhook_body(kind: str, record: dict[str, Any], old: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": kind, "table": "knowledge_items", "schema": "public", "record": record, "old_record": old}


INSERT_RETURNING_JSON = (
    "insert into knowledge_items as k (client_id, source, content)"
    " values (%s, %s, %s) returning to_jsonb(k) j"
)


def test_bridge_delivers_supabase_bodies_exactly_with_retries(
    bridge_db: tuple[str, psycopg.Connection[Any]],
) -> None:
    url, conn = bridge_db
    webhook = FlakyWebhook([None, 503])
    reports: list[str] = []
    bridge = WebhookBridge(
        url, webhook, report=reports.append, retry=DeliveryRetries(0.01, 0.05, 5.0), workers=1
    )
    bridge.install()
    bridge.install()  # idempotent
    client = uuid.uuid4()
    conn.execute("insert into clients (id) values (%s)", (client,))
    # > 8000 bytes, inserted while nobody listens: kept in the outbox, delivered once the bridge starts
    early = _row_json(conn, INSERT_RETURNING_JSON, (client, "early.md", "é" * 20_000))
    bridge.start()
    try:
        small = _row_json(conn, INSERT_RETURNING_JSON, (client, "small.md", "hello"))
        big = _row_json(conn, INSERT_RETURNING_JSON, (client, "big.md", "ü" * 20_000))
        conn.execute("update knowledge_items set status = 'processing' where id = %s", (small["id"],))
        old = _row_json(conn, "select to_jsonb(k) j from knowledge_items k where id = %s", (small["id"],))
        new = _row_json(
            conn,
            "update knowledge_items k set content = 'hello again' where id = %s returning to_jsonb(k) j",
            (small["id"],),
        )
        expected = [
            _webhook_body("INSERT", early),
            _webhook_body("INSERT", small),
            _webhook_body("INSERT", big),
            _webhook_body("UPDATE", new, old),
        ]
        assert [webhook.next_body() for _ in expected] == expected
        assert webhook.received.empty()  # the status-only update sent nothing
        assert webhook.calls == 6  # the first body needed three attempts
        outbox = conn.execute("select count(*) n from nexus.dev_webhook_outbox").fetchone()
        assert outbox == {"n": 0}
    finally:
        bridge.stop()
        bridge.uninstall()
    assert conn.execute("select 1 from pg_trigger where tgname = 'nexus_dev_webhook'").fetchone() is None
    assert reports[0] == f"webhook INSERT knowledge_items {early['id']} → 200 done"


def test_bridge_gives_up_after_its_budget_and_does_not_retry_client_errors() -> None:
    bridge = WebhookBridge(
        "postgresql:///unused", FlakyWebhook([503] * 100), retry=DeliveryRetries(0.01, 0.02, 0.1)
    )
    reports: list[str] = []
    bridge.report = reports.append
    body = {"type": "INSERT", "table": "knowledge_items", "record": {"id": "x"}}
    assert bridge.deliver_with_retry(body) is None
    assert "gave up" in reports[-1] and "the sweep will process it" in reports[-1]
    refused = FlakyWebhook([401])
    bridge.deliver = refused
    assert bridge.deliver_with_retry(body) == 401
    assert refused.calls == 1
    bridge.stop()
