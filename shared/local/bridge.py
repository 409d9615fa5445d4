"""The database webhook on one machine: a LISTEN/NOTIFY bridge in place of Supabase's pg_net.

Production uses a pg_net trigger (a migration). Here a trigger installed at start
(`nexus_dev_webhook`, dropped at stop) sends Supabase's exact webhook body (`type`, `table`,
`schema`, `record`, `old_record`) with `pg_notify('nexus_webhook', …)` after an INSERT or an UPDATE
OF content on `knowledge_items`. NOTIFY payloads must stay under 8000 bytes, so a bigger body goes
to the unlogged table `nexus.dev_webhook_outbox` and the notification carries only
`{"outbox_id": n}`. The bridge LISTENs and POSTs each body to the process webhook with
`Authorization: Bearer <NEXUS_WEBHOOK_SECRET>`, retrying transport errors and 500/503/504/429 with
exponential backoff for up to two minutes (`DeliveryRetries`). A 502 (processing failed and
recorded) is not retried: the sweep retries the item with the pipeline's own backoff. Nothing is
lost while nobody listens: outbox rows are delivered when the bridge (re)connects, and the sweep
at start (and after each reconnect, through `on_gap`) processes the rest.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from shared.local.environment import DevError
from shared.local.servers import post_local

__all__ = [
    "INSTALL_BRIDGE_SQL",
    "RETRYABLE_STATUSES",
    "UNINSTALL_BRIDGE_SQL",
    "WEBHOOK_CHANNEL",
    "Deliver",
    "DeliveryRetries",
    "WebhookBridge",
    "WebhookSender",
]

WEBHOOK_CHANNEL = "nexus_webhook"
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
class DeliveryRetries:
    """When the bridge tries a webhook delivery again: first_delay_s doubling up to max_delay_s,
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
        retry: DeliveryRetries | None = None,
        on_gap: Callable[[], None] | None = None,
        workers: int = 4,
    ) -> None:
        self.database_url = database_url
        self.deliver = deliver
        self.report = report
        self.retry = retry or DeliveryRetries()
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
