"""Postgres connections: one per process, reused across warm invocations, re-opened after a failure.

Safe behind Supabase's transaction pooler (port 6543): autocommit, explicit transactions, and
no server-side prepared statements (`prepare_threshold=None`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row

from shared.errors import DatabaseUnavailable

CONNECT_TIMEOUT_S = 10


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

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """Yield the live connection; a connection-level failure closes it for the next call."""
        with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self.prepared.clear()
                self._conn = connect(self._dsn, application_name=self._application_name)
            try:
                yield self._conn
            except psycopg.OperationalError:
                self.close()
                raise DatabaseUnavailable(
                    "The database connection failed during the request; retry it."
                ) from None

    def sibling(self, application_name: str | None = None) -> ConnectionHolder:
        """Another holder for the same database (its own connection)."""
        return ConnectionHolder(self._dsn, application_name or self._application_name)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
