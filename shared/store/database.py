"""Postgres connections: one per process, reused across warm invocations, re-opened after a failure.

Safe behind Supabase's transaction pooler (port 6543): autocommit, explicit transactions, and
no server-side prepared statements (`prepare_threshold=None`).

A server or pooler may drop a connection while it sits idle between invocations. A call the
caller declares idempotent (`ConnectionHolder.run(fn, idempotent=True)`) is run once more on a
new connection when it failed that way; every other failure is `DatabaseUnavailable`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row

from shared.errors import DatabaseUnavailable

CONNECT_TIMEOUT_S = 10
_FAILED = "The database connection failed during the request; retry it."

T = TypeVar("T")


def connect(dsn: str, *, application_name: str = "nexus-workers") -> psycopg.Connection[Any]:
    """Open a new autocommit connection with dict rows and no server-side prepared statements."""
    try:
        return psycopg.connect(
            dsn,
            autocommit=True,
            row_factory=dict_row,
            prepare_threshold=None,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name=application_name,
        )
    except psycopg.OperationalError:
        raise DatabaseUnavailable("The database could not be reached; check DATABASE_URL.") from None


class ConnectionHolder:
    """Holds one connection per process and hands it out, re-opening it when it broke.

    Lambda runs one invocation at a time per process; the lock covers threaded servers
    (functions-framework's dev server) by serialising use of the single connection.
    """

    def __init__(self, dsn: str, application_name: str = "nexus-workers") -> None:
        self._dsn = dsn
        self._application_name = application_name
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.RLock()
        # Per-connection setup done so far (e.g. "vector"); cleared when the connection is replaced.
        self.prepared: set[str] = set()

    def _live(self) -> tuple[psycopg.Connection[Any], bool]:
        """The connection and whether it was reused; a new one when there is none or it broke."""
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn, True
        self.prepared.clear()
        self._conn = connect(self._dsn, application_name=self._application_name)
        return self._conn, False

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """Yield the live connection; a connection-level failure closes it for the next call."""
        with self._lock:
            conn, _ = self._live()
            try:
                yield conn
            except psycopg.OperationalError:
                self.close()
                raise DatabaseUnavailable(_FAILED) from None

    def run(self, fn: Callable[[psycopg.Connection[Any]], T], *, idempotent: bool) -> T:
        """Return `fn(connection)`.

        With `idempotent=True` (running `fn` twice has the effect of running it once), a failure
        on a connection reused from an earlier call that left the connection closed or broken
        (the server or a pooler dropped it while idle) runs `fn` once more on a new connection.
        Any other failure, and any failure of the second run, is `DatabaseUnavailable`.
        """
        with self._lock:
            conn, reused = self._live()
            try:
                return fn(conn)
            except psycopg.OperationalError:
                lost = conn.closed or conn.broken
                self.close()
                if not (idempotent and reused and lost):
                    raise DatabaseUnavailable(_FAILED) from None
            from shared.logs import get_logger

            get_logger().info("The idle database connection was lost; retrying once on a new one.")
            with self.connection() as fresh:
                return fn(fresh)

    def sibling(self, application_name: str | None = None) -> ConnectionHolder:
        """Another holder for the same database (its own connection)."""
        return ConnectionHolder(self._dsn, application_name or self._application_name)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
