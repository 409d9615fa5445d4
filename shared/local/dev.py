"""`nexus dev`: the whole stack on one machine, wired the way the cloud wires it.

- **Database**: DATABASE_URL, or the embedded Postgres under `NEXUS_HOME/pgdata` (started, or
  reused when already running); migrations are applied at start.
- **Credentials**: NEXUS_INGEST_API_KEYS and NEXUS_WEBHOOK_SECRET from the environment, else a dev
  API key and webhook secret generated once and kept in `NEXUS_HOME/dev.env` (mode 0600), with
  a dev client id so the printed curl example works as is.
- **Functions**: functions-framework serves `ingest` on port N, the process `webhook` on N+1 and
  `refresh` (gcal_refresh) on N+2, each a child process on 127.0.0.1 (default N = 8080). They use
  the local providers unless OPENAI_API_KEY is set.
- **Database webhook**: production uses a pg_net trigger (a migration). Here a trigger installed
  at start (`nexus_dev_webhook`, dropped at stop) sends Supabase's exact webhook body
  (`type`, `table`, `schema`, `record`, `old_record`) with `pg_notify('nexus_webhook', …)` after
  an INSERT or an UPDATE OF content on `knowledge_items`. NOTIFY payloads must stay under 8000
  bytes, so a bigger body goes to the unlogged table `nexus.dev_webhook_outbox` and the
  notification carries only `{"outbox_id": n}`. The bridge LISTENs and POSTs each body to the
  webhook with `Authorization: Bearer <NEXUS_WEBHOOK_SECRET>`, retrying transport errors and
  500/503/504/429 with exponential backoff for up to two minutes. A 502 (processing failed and
  recorded) is not retried: the sweep retries the item with the pipeline's own backoff.
  Nothing is lost while nobody listens: outbox rows are delivered when the bridge (re)connects,
  and the sweep at start (and after each reconnect) processes the rest.
- **Schedules**: the EventBridge sweep runs in this process (`ProcessService.handle_schedule`,
  every `--sweep-interval` s, default 60, and once at start, so items inserted while nothing was
  listening are processed too); the functions-framework webhook target has no sweep. The
  token upkeep POSTs to the `refresh` target every `--refresh-interval` s (default 600, as
  deployed) when GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET are set.
- **Stop** (Ctrl-C or SIGTERM): stop the schedules and the bridge, terminate the servers' process
  groups, drop the trigger, and stop the embedded Postgres unless another live process still uses
  it (stale handles of crashed commands are ignored, so an orphaned server is stopped too).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from shared.config import Settings
from shared.errors import NexusError
from shared.local.embedded import stop_embedded_postgres

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PORT = 8080
DEFAULT_SWEEP_INTERVAL_S = 60.0
DEFAULT_REFRESH_INTERVAL_S = 600.0
HOST = "127.0.0.1"
INGEST_PATH = "/api/knowledge/ingest"
WEBHOOK_CHANNEL = "nexus_webhook"
STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0


class DevError(NexusError):
    """`nexus dev` cannot start; the message says what to change."""


@dataclass(frozen=True)
class FunctionTarget:
    """One functions-framework server: `functions/<function>/main.py`, target `target`."""

    function: str
    target: str
    offset: int  # its port is the base port plus this

    @property
    def source(self) -> Path:
        return ROOT / "functions" / self.function / "main.py"


FUNCTIONS = (
    FunctionTarget("ingest", "ingest", 0),
    FunctionTarget("process", "webhook", 1),
    FunctionTarget("gcal_refresh", "refresh", 2),
)


@dataclass
class LocalContext:
    """The parts of a Lambda context the handlers read, for invocations outside Lambda.

    The remaining time counts down from `timeout_s`, and drops to 0 once `cancelled` is set, so a
    sweep stops claiming work when the emulator is stopping.
    """

    function_name: str = "nexus-local"
    timeout_s: float = 300.0
    cancelled: threading.Event | None = None
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    memory_limit_in_mb: int = 1024
    function_version: str = "$LATEST"
    _started: float = field(default_factory=time.monotonic, repr=False)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:local:000000000000:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        if self.cancelled is not None and self.cancelled.is_set():
            return 0
        return max(0, int((self.timeout_s - (time.monotonic() - self._started)) * 1000))


# -- credentials and the database ----------------------------------------------------------------


@dataclass(frozen=True)
class DevCredentials:
    """What local callers present: ingest API keys, the webhook secret, and the dev client."""

    api_keys: tuple[str, ...]
    webhook_secret: str
    client_id: uuid.UUID

    @property
    def api_key(self) -> str:
        return self.api_keys[0]


def dev_credentials(settings: Settings) -> DevCredentials:
    """The environment's keys, else the ones generated once into `NEXUS_HOME/dev.env`."""
    stored = _read_or_create_dev_env(settings.home_path / "dev.env")
    stored_keys = tuple(k for k in stored["NEXUS_INGEST_API_KEYS"].split(",") if k)
    return DevCredentials(
        api_keys=settings.ingest_api_keys or stored_keys,
        webhook_secret=settings.webhook_secret or stored["NEXUS_WEBHOOK_SECRET"],
        client_id=uuid.UUID(stored["NEXUS_DEV_CLIENT_ID"]),
    )


_DEV_ENV_NAMES = ("NEXUS_INGEST_API_KEYS", "NEXUS_WEBHOOK_SECRET", "NEXUS_DEV_CLIENT_ID")


def _read_or_create_dev_env(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    if not path.is_file():
        generated = {
            "NEXUS_INGEST_API_KEYS": f"nexus-dev-{secrets.token_urlsafe(24)}",
            "NEXUS_WEBHOOK_SECRET": f"whsec-dev-{secrets.token_urlsafe(24)}",
            "NEXUS_DEV_CLIENT_ID": str(uuid.uuid4()),
        }
        text = "# Generated by `nexus dev`; delete this file for new ones.\n"
        text += "".join(f"{name}={generated[name]}\n" for name in _DEV_ENV_NAMES)
        _create_exclusively(path, text)
    values = {k: v for k, v in dotenv_values(path).items() if v}
    missing = [name for name in _DEV_ENV_NAMES if name not in values]
    if missing:
        raise DevError(f"{path} lacks {', '.join(missing)}; delete the file and nexus dev writes a new one.")
    return {name: str(values[name]) for name in _DEV_ENV_NAMES}


def _create_exclusively(path: Path, text: str) -> None:
    """Write `path` (mode 0600) unless it exists; concurrent first runs agree on one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    try:
        os.link(temporary, path)  # fails if another process created it first: theirs wins
    except FileExistsError:
        pass
    finally:
        temporary.unlink()


@dataclass
class LocalEnvironment:
    """The database, credentials and settings the local functions run with."""

    settings: Settings  # database_url set; providers resolved
    credentials: DevCredentials
    embedded_data_dir: Path | None = None  # set when the embedded server serves the database

    @property
    def database_url(self) -> str:
        return str(self.settings.database_url)

    def function_environment(self) -> dict[str, str]:
        """os.environ plus what a local function needs (children inherit it; replay patches it)."""
        env = {name: value for name, value in os.environ.items() if name != "AWS_LAMBDA_FUNCTION_NAME"}
        env.update(
            DATABASE_URL=self.database_url,
            NEXUS_INGEST_API_KEYS=",".join(self.credentials.api_keys),
            NEXUS_WEBHOOK_SECRET=self.credentials.webhook_secret,
            NEXUS_EMBEDDING_PROVIDER=self.settings.embedding_provider,
            NEXUS_SUMMARY_PROVIDER=self.settings.summary_provider,
            NEXUS_HOME=str(self.settings.home_path),
            PYTHONUNBUFFERED="1",
        )
        return env

    def ensure_dev_client(self) -> uuid.UUID:
        """Create the dev client (named "nexus dev") if missing; idempotent; return its id."""
        from shared.store.postgres import default_store

        store = default_store(self.settings)
        try:
            store.ensure_client(self.credentials.client_id, "nexus dev")
        finally:
            store.close()
        return self.credentials.client_id

    def close(self) -> None:
        """Stop the embedded Postgres if this process is its last live user."""
        if self.embedded_data_dir is not None:
            stop_embedded_postgres(self.embedded_data_dir)
            self.embedded_data_dir = None


def local_environment(settings: Settings, *, migrate: bool) -> LocalEnvironment:
    """DATABASE_URL or the embedded server (started or reused), migrated when `migrate` is true
    or the database is the embedded one; local providers unless OPENAI_API_KEY is set."""
    from shared.local.database import database_url
    from shared.store.migrations import migrate as apply_pending

    embedded = None if settings.database_url else settings.home_path / "pgdata"
    url = database_url(settings)
    if migrate or embedded is not None:
        apply_pending(url)
    update: dict[str, Any] = {"database_url": url}
    if not settings.openai_api_key:
        update.update(embedding_provider="local", summary_provider="local")
    resolved = settings.model_copy(update=update)
    return LocalEnvironment(resolved, dev_credentials(resolved), embedded)


def _display_dsn(url: str) -> str:
    """The DSN with any password masked."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(DATABASE_URL)"
    if not params.get("password"):
        return url
    return make_conninfo("", **{**params, "password": "***"})


# -- the database webhook bridge -----------------------------------------------------------------

NOTIFY_LIMIT_BYTES = 7900  # pg_notify rejects payloads of 8000 bytes or more

INSTALL_BRIDGE_SQL = f"""
create unlogged table if not exists nexus.dev_webhook_outbox (
  id bigint generated always as identity primary key,
  body jsonb not null,
  created_at timestamptz not null default now()
);

create or replace function nexus.dev_webhook_notify() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
  -- the body Supabase's database webhooks send (supabase_functions.http_request)
  body jsonb := jsonb_build_object(
    'type', tg_op, 'table', tg_table_name, 'schema', tg_table_schema,
    'record', to_jsonb(new), 'old_record', case when tg_op = 'UPDATE' then to_jsonb(old) end);
  payload text := body::text;
  outbox_id bigint;
begin
  if octet_length(payload) < {NOTIFY_LIMIT_BYTES} then
    perform pg_notify('{WEBHOOK_CHANNEL}', payload);
  else
    insert into nexus.dev_webhook_outbox (body) values (body) returning id into outbox_id;
    perform pg_notify('{WEBHOOK_CHANNEL}', json_build_object('outbox_id', outbox_id)::text);
  end if;
  return null;
end $$;

create or replace trigger nexus_dev_webhook
  after insert or update of content on public.knowledge_items
  for each row execute function nexus.dev_webhook_notify();
"""

UNINSTALL_BRIDGE_SQL = "drop trigger if exists nexus_dev_webhook on public.knowledge_items"

# A delivery answers (HTTP status, short note) or raises OSError when nothing answered.
Deliver = Callable[[dict[str, Any]], tuple[int, str]]
RETRYABLE_STATUSES = frozenset({429, 500, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for webhook deliveries: first_delay_s doubling up to max_delay_s,
    giving up after give_up_after_s (the sweep still covers the item)."""

    first_delay_s: float = 0.5
    max_delay_s: float = 8.0
    give_up_after_s: float = 120.0

    def delays(self) -> Iterator[float]:
        delay, waited = self.first_delay_s, 0.0
        while waited < self.give_up_after_s:
            yield delay
            waited += delay
            delay = min(delay * 2, self.max_delay_s)


def post_local(
    url: str, body: bytes, headers: dict[str, str], timeout_s: float, method: str = "POST"
) -> tuple[int, bytes]:
    """Send a request to a local http:// URL; return (status, body) for any HTTP answer, error
    statuses too. Raises OSError (URLError, timeouts, refused connections) when nothing answered.
    """
    if not url.startswith("http://"):
        raise ValueError(f"{url} is not a local http:// URL.")
    request = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class WebhookSender:
    """POSTs a webhook body to the process function, as Supabase does."""

    def __init__(self, url: str, secret: str, timeout_s: float = 300.0) -> None:
        self.url = url
        self._secret = secret
        self.timeout_s = timeout_s

    def __call__(self, body: dict[str, Any]) -> tuple[int, str]:
        headers = {"content-type": "application/json", "authorization": f"Bearer {self._secret}"}
        status, answer = post_local(self.url, json.dumps(body).encode(), headers, self.timeout_s)
        return status, _response_note(answer)


def _response_note(data: bytes) -> str:
    try:
        body = json.loads(data)
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    if "chunks" in body:
        return f"{body.get('status')} ({body['chunks']} chunks)"
    return str(body.get("status") or body.get("detail") or "")


class WebhookBridge:
    """LISTEN on `nexus_webhook` and deliver each body to the process webhook, with retries.

    `install()` (idempotent) puts the trigger in place; `start()` listens; `stop()` ends the
    listener and waits for in-flight deliveries (their retries end at once); `uninstall()` drops
    the trigger. After a lost database connection `on_gap` is called (e.g. to run a sweep),
    since notifications sent meanwhile are gone.
    """

    def __init__(
        self,
        database_url: str,
        deliver: Deliver,
        *,
        report: Callable[[str], None] = print,
        retry: RetryPolicy | None = None,
        on_gap: Callable[[], None] | None = None,
        workers: int = 4,
    ) -> None:
        self.database_url = database_url
        self.deliver = deliver
        self.report = report
        self.retry = retry or RetryPolicy()
        self.on_gap = on_gap
        self._stopping = threading.Event()
        self._listening = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nexus-webhook")
        self._thread = threading.Thread(target=self._listen_forever, name="nexus-bridge", daemon=True)

    def install(self) -> None:
        """Create (or replace) the trigger, its function and the outbox; raises DevError."""
        import psycopg

        from shared.store.database import connect

        try:
            with connect(self.database_url, application_name="nexus-dev") as conn, conn.transaction():
                conn.execute(INSTALL_BRIDGE_SQL)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            detail = exc.diag.message_primary or type(exc).__name__
            raise DevError(
                f"The dev webhook trigger could not be installed on knowledge_items: {detail}."
            ) from None

    def uninstall(self) -> None:
        from shared.store.database import connect

        with connect(self.database_url, application_name="nexus-dev") as conn:
            conn.execute("set lock_timeout = '3s'")
            conn.execute(UNINSTALL_BRIDGE_SQL)

    def start(self, timeout_s: float = 10.0) -> None:
        """Start listening; returns once LISTEN is in effect (so no later row is missed)."""
        self._thread.start()
        if not self._listening.wait(timeout_s):
            raise DevError("The webhook bridge could not LISTEN on the database.")

    def stop(self, timeout_s: float = 15.0) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- listening -----------------------------------------------------------------------------

    def _listen_forever(self) -> None:
        import psycopg

        connected_before = False
        delays = _reconnect_delays()
        while not self._stopping.is_set():
            try:
                with psycopg.connect(
                    self.database_url, autocommit=True, application_name="nexus-bridge"
                ) as conn:
                    conn.execute(f"listen {WEBHOOK_CHANNEL}")
                    # Big bodies whose notification nobody heard (taking one is a DELETE … RETURNING,
                    # so a live notification for the same row cannot deliver it twice).
                    backlog = conn.execute("select id from nexus.dev_webhook_outbox order by id").fetchall()
                    self._listening.set()
                    for (outbox_id,) in backlog:
                        self._submit(self._deliver_from_outbox, outbox_id)
                    if connected_before and self.on_gap is not None:
                        self.on_gap()
                    connected_before, delays = True, _reconnect_delays()
                    self._receive(conn)
            except psycopg.Error as exc:
                self.report(f"bridge: database connection lost ({type(exc).__name__}); reconnecting")
                self._stopping.wait(next(delays))

    def _receive(self, conn: Any) -> None:
        while not self._stopping.is_set():
            for note in conn.notifies(timeout=0.5):
                self._submit(self._handle_payload, note.payload)

    def _submit(self, task: Callable[..., Any], *args: Any) -> None:
        """Run `task` on the delivery pool; an exception is reported, not lost in its future."""

        def run() -> None:
            try:
                task(*args)
            except Exception as exc:
                self.report(f"bridge: {task.__name__} failed: {type(exc).__name__}: {exc}")

        self._pool.submit(run)

    def _handle_payload(self, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            self.report("bridge: ignored a notification that is not JSON")
            return
        if isinstance(message, dict) and set(message) == {"outbox_id"}:
            self._deliver_from_outbox(int(message["outbox_id"]))
        else:
            self.deliver_with_retry(message)

    def _deliver_from_outbox(self, outbox_id: int) -> None:
        from shared.store.database import connect

        with connect(self.database_url, application_name="nexus-bridge") as conn:
            row = conn.execute(
                "delete from nexus.dev_webhook_outbox where id = %s returning body", (outbox_id,)
            ).fetchone()
        if row is not None:  # else another delivery took it already
            self.deliver_with_retry(dict(row["body"]))

    # -- delivering ----------------------------------------------------------------------------

    def deliver_with_retry(self, body: dict[str, Any]) -> int | None:
        """POST one body until it is answered (not with a retryable status); return the final
        status, or None when it was given up (stopping, or the retry budget is spent)."""
        label = _describe(body)
        delays = self.retry.delays()
        while True:
            try:
                status, note = self.deliver(body)
            except OSError as exc:
                status, note = None, f"process function unreachable ({type(exc).__name__})"
            if status is not None and status not in RETRYABLE_STATUSES:
                self.report(f"webhook {label} → {status} {note}".rstrip())
                return status
            delay = next(delays, None)
            if delay is None or self._stopping.wait(delay):
                self.report(f"webhook {label} → gave up ({status or note}); the sweep will process it")
                return None


def _describe(body: dict[str, Any]) -> str:
    record = body.get("record") or body.get("old_record") or {}
    item_id = record.get("id", "?") if isinstance(record, dict) else "?"
    return f"{body.get('type', '?')} {body.get('table', '?')} {item_id}"


def _reconnect_delays() -> Iterator[float]:
    delay = 0.5
    while True:
        yield delay
        delay = min(delay * 2, 10.0)


# -- schedules -----------------------------------------------------------------------------------


class PeriodicJob:
    """Run `job` at once and then every `interval_s` seconds in a thread; `trigger()` runs it
    early. A job's exception is reported, never fatal."""

    def __init__(self, name: str, interval_s: float, job: Callable[[], None], report: Callable[[str], None]):
        self.name = name
        self.interval_s = interval_s
        self.job = job
        self.report = report
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"nexus-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def trigger(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self._wake.set()

    def join(self, timeout_s: float = 30.0) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.job()
            except Exception as exc:  # reported, and the next run tries again
                self.report(f"{self.name}: {type(exc).__name__}: {exc}")
            self._wake.wait(self.interval_s)
            self._wake.clear()


class Sweeper:
    """The scheduled sweep, run in this process as the EventBridge rule runs it in AWS.

    Reports each run that claimed something, and the first run always (so the start-up sweep's
    end is visible)."""

    def __init__(self, settings: Settings, interval_s: float, report: Callable[[str], None]) -> None:
        from shared.process.service import ProcessService

        self.service = ProcessService(settings=settings)
        self.interval_s = interval_s
        self.report = report
        self.cancelled = threading.Event()
        self.runs = 0

    def __call__(self) -> None:
        budget_s = max(self.interval_s, 60.0)
        result = self.service.handle_schedule(LocalContext("nexus-dev-sweep", budget_s, self.cancelled))
        self.runs += 1
        if not result.get("claimed") and self.runs == 1:
            self.report("sweep: nothing was pending")
        elif result.get("claimed"):
            self.report(
                f"sweep: {result['done']} done, {result['failed']} failed, {result['chunks']} chunks "
                f"({result['embedded_chunks']} embedded)"
            )

    def close(self) -> None:
        processor = self.service.processor
        if processor is None:
            return
        for part in (processor.store, processor.embedder, processor.summarizer):
            close = getattr(part, "close", None)
            if callable(close):
                close()


def token_refresher(url: str, report: Callable[[str], None]) -> Callable[[], None]:
    """POST to the `refresh` target, as Cloud Scheduler does; report refreshes and failures."""

    def refresh() -> None:
        status, answer = post_local(url, b"", {}, 60.0)
        if status != 200:  # 500: an account needs attention
            report(f"token refresh → {status} {answer.decode(errors='replace')[:300]}")
            return
        for account in json.loads(answer).get("accounts", []):
            if account.get("refreshed"):
                report(f"token refresh → {account.get('account')}: {account.get('message')}")

    return refresh


# -- the function servers ------------------------------------------------------------------------


class Output:
    """Whole lines to a stream from several threads, flushed at once (pipes too)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def __call__(self, text: str) -> None:
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()


@dataclass
class FunctionServer:
    """A functions-framework child process serving one target."""

    spec: FunctionTarget
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def start_function_servers(
    env: dict[str, str], base_port: int, out: Callable[[str], None]
) -> list[FunctionServer]:
    """Start one functions-framework per target, each in its own process group, its output
    relayed line by line with the function's name in front."""
    servers = []
    for spec in FUNCTIONS:
        port = base_port + spec.offset
        command = [sys.executable, "-m", "functions_framework", "--target", spec.target]
        command += ["--source", str(spec.source), "--host", HOST, "--port", str(port)]
        process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the whole group
        )
        servers.append(FunctionServer(spec, port, process))
        threading.Thread(
            target=_relay,
            args=(process.stdout, spec.function, out),
            name=f"relay-{spec.function}",
            daemon=True,
        ).start()
    return servers


def _relay(stream: IO[bytes] | None, name: str, out: Callable[[str], None]) -> None:
    if stream is None:
        return
    with stream:
        for raw in stream:
            out(f"{name:>12} | {raw.decode(errors='replace').rstrip()}")


def wait_until_serving(servers: Sequence[FunctionServer], stopping: threading.Event) -> None:
    """Return once every server accepts connections; raise DevError if one exits or is slow."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    waiting = list(servers)
    while waiting:
        for server in list(waiting):
            code = server.process.poll()
            if code is not None:
                raise DevError(f"functions-framework for {server.spec.function} exited with code {code}.")
            if _port_answers(server.port):
                waiting.remove(server)
        if time.monotonic() > deadline:
            names = ", ".join(s.spec.function for s in waiting)
            raise DevError(f"functions-framework did not start in {STARTUP_TIMEOUT_S:.0f} s: {names}.")
        if waiting and stopping.wait(0.1):
            return


def stop_function_servers(servers: Sequence[FunctionServer]) -> None:
    """SIGTERM each server's process group, then SIGKILL what is left after the grace period."""
    for server in servers:
        _signal_group(server.process, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for server in servers:
        try:
            server.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(server.process, signal.SIGKILL)
            server.process.wait(5)
        _signal_group(server.process, signal.SIGKILL)  # workers whose master is gone


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def require_free_ports(ports: Sequence[int]) -> None:
    """Raise DevError naming the first port something else already listens on."""
    for port in ports:
        if not 0 < port < 65536:
            raise DevError(f"Port {port} is out of range; pass --port N with N + 2 below 65536.")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                raise DevError(f"Port {port} is already in use; pass --port N to use N, N+1, N+2.") from None


# -- the emulator --------------------------------------------------------------------------------


@dataclass
class DevOptions:
    port: int = DEFAULT_PORT
    sweep_interval_s: float = DEFAULT_SWEEP_INTERVAL_S
    refresh_interval_s: float = DEFAULT_REFRESH_INTERVAL_S


@contextlib.contextmanager
def _stop_on_signals(stopping: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set `stopping` instead of interrupting (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class DevStack:
    """Everything `nexus dev` runs, started in order and stopped in reverse."""

    def __init__(
        self,
        env: LocalEnvironment,
        options: DevOptions,
        out: Callable[[str], None],
        stopping: threading.Event | None = None,
    ) -> None:
        self.env = env
        self.options = options
        self.out = out
        self.stopping = stopping or threading.Event()
        self.servers: list[FunctionServer] = []
        self.jobs: list[PeriodicJob] = []
        self.sweeper = Sweeper(env.settings, options.sweep_interval_s, out)
        webhook_url = f"http://{HOST}:{options.port + 1}/"
        self.bridge = WebhookBridge(
            env.database_url,
            WebhookSender(webhook_url, env.credentials.webhook_secret),
            report=out,
            on_gap=self._sweep_soon,
        )

    @property
    def refreshes_tokens(self) -> bool:
        settings = self.env.settings
        return bool(settings.google_client_id and settings.google_client_secret)

    def _sweep_soon(self) -> None:
        for job in self.jobs:
            if job.name == "sweep":
                job.trigger()

    def start(self) -> None:
        self.env.ensure_dev_client()
        self.bridge.install()
        self.bridge.start()  # listening before anything can insert, so no row is missed
        if self.stopping.is_set():
            return
        self.servers = start_function_servers(self.env.function_environment(), self.options.port, self.out)
        wait_until_serving(self.servers, self.stopping)
        self.jobs.append(PeriodicJob("sweep", self.options.sweep_interval_s, self.sweeper, self.out))
        if self.refreshes_tokens:
            refresh = token_refresher(f"http://{HOST}:{self.options.port + 2}/", self.out)
            self.jobs.append(PeriodicJob("token refresh", self.options.refresh_interval_s, refresh, self.out))
        for job in self.jobs:
            job.start()

    def supervise(self) -> int:
        """Wait for a stop signal (0) or a server that died (1)."""
        while not self.stopping.wait(0.5):
            for server in self.servers:
                code = server.process.poll()
                if code is not None:
                    self.out(f"nexus dev: {server.spec.function} exited with code {code}; stopping")
                    return 1
        return 0

    def stop(self) -> None:
        """Stop in reverse order; each step runs even if an earlier one failed."""
        self.sweeper.cancelled.set()
        for job in self.jobs:
            job.stop()
        steps: list[tuple[str, Callable[[], None]]] = [
            ("servers", lambda: stop_function_servers(self.servers)),
            ("bridge", self.bridge.stop),
            ("schedules", self._join_jobs),
            ("sweeper", self.sweeper.close),
            ("webhook trigger", self.bridge.uninstall),
            ("database", self.env.close),
        ]
        for name, step in steps:
            try:
                step()
            except Exception as exc:
                self.out(f"nexus dev: stopping the {name} failed: {type(exc).__name__}: {exc}")

    def _join_jobs(self) -> None:
        for job in self.jobs:
            job.join()

    def banner(self) -> str:
        o, env, creds = self.options, self.env, self.env.credentials
        base = f"http://{HOST}:{o.port}"

        def url(offset: int) -> str:
            return f"http://{HOST}:{o.port + offset}/"

        database = _display_dsn(env.database_url)
        where = f" (embedded, {env.embedded_data_dir})" if env.embedded_data_dir else ""
        providers = env.settings.embedding_provider + "/" + env.settings.summary_provider
        if not env.settings.openai_api_key:
            providers += " (offline; set OPENAI_API_KEY for OpenAI)"
        refresh = f"every {o.refresh_interval_s:g} s" if self.refreshes_tokens else "off (no Google settings)"
        example = json.dumps(
            {"client_id": str(creds.client_id), "source": "hello.md", "content": "Hello, Nexus"}
        )
        return "\n".join(
            [
                "nexus dev is running (Ctrl-C stops it)",
                f"  ingest          POST {base}{INGEST_PATH}",
                f"  process         POST {url(1)}  (Supabase webhook; the bridge posts here)",
                f"  gcal_refresh    POST {url(2)}  (token upkeep; schedule: {refresh})",
                f"  database        {database}{where}",
                f"  providers       {providers}",
                f"  sweep           every {o.sweep_interval_s:g} s, in this process",
                f"  API key         {creds.api_key}",
                f"  webhook secret  {creds.webhook_secret}",
                f"  dev client      {creds.client_id}",
                f"  try: curl -sS {base}{INGEST_PATH} -H 'Authorization: Bearer {creds.api_key}' "
                f"-H 'Content-Type: application/json' -d '{example}'",
            ]
        )


def run_dev(settings: Settings, options: DevOptions, out: Callable[[str], None] | None = None) -> int:
    """Run the emulator until Ctrl-C / SIGTERM (exit 0) or until a function server dies (exit 1).

    Raises DevError when a port is taken or a server cannot start; everything started so far is
    stopped first.
    """
    write = out or Output()
    if options.sweep_interval_s <= 0 or options.refresh_interval_s <= 0:
        raise DevError("--sweep-interval and --refresh-interval must be positive numbers of seconds.")
    for spec in FUNCTIONS:
        if not spec.source.is_file():
            raise DevError(f"{spec.source} is missing; run nexus dev from a checkout of the repository.")
    require_free_ports([options.port + spec.offset for spec in FUNCTIONS])
    stopping = threading.Event()
    with _stop_on_signals(stopping):
        env = local_environment(settings, migrate=True)
        try:
            stack = DevStack(env, options, write, stopping)
        except BaseException:
            env.close()
            raise
        try:
            stack.start()
            if stopping.is_set():
                return 0
            write(stack.banner())
            return stack.supervise()
        finally:
            write("nexus dev: stopping")
            stack.stop()
            write("nexus dev: stopped")
