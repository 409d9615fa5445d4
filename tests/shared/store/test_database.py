"""`ConnectionHolder` against the real embedded Postgres: a connection dropped while idle is
re-opened and an idempotent call run once more; nothing else is retried."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from shared.errors import DatabaseUnavailable
from shared.store.database import ConnectionHolder


@pytest.fixture
def holder(pg_url: str) -> Iterator[ConnectionHolder]:
    holder = ConnectionHolder(pg_url, application_name="nexus-test-database")
    yield holder
    holder.close()


def backend_pid(holder: ConnectionHolder) -> int:
    return holder.run(lambda conn: conn.info.backend_pid, idempotent=True)


def terminate(admin: psycopg.Connection[Any], pid: int) -> None:
    """End a backend as a server restart or a pooler would, and wait until it is gone."""
    row = admin.execute("select pg_terminate_backend(%s, 10000) as done", (pid,)).fetchone()
    assert row is not None and row["done"]


def counted(fn: Callable[[psycopg.Connection[Any]], Any]) -> tuple[list[int], Callable[..., Any]]:
    """`fn`, recording the backend pid of every connection it is called with."""
    pids: list[int] = []

    def wrapper(conn: psycopg.Connection[Any]) -> Any:
        pids.append(conn.info.backend_pid)
        return fn(conn)

    return pids, wrapper


def test_idempotent_call_on_a_dropped_idle_connection_reconnects_once(
    holder: ConnectionHolder, admin: psycopg.Connection[Any]
) -> None:
    old_pid = backend_pid(holder)
    terminate(admin, old_pid)
    pids, fn = counted(lambda conn: conn.execute("select 41 + 1 as n").fetchone()["n"])
    assert holder.run(fn, idempotent=True) == 42
    assert pids[0] == old_pid and len(pids) == 2 and pids[1] != old_pid
    assert backend_pid(holder) == pids[1]  # the new connection is kept for the next call


def test_call_not_declared_idempotent_is_not_retried(
    holder: ConnectionHolder, admin: psycopg.Connection[Any]
) -> None:
    old_pid = backend_pid(holder)
    terminate(admin, old_pid)
    pids, fn = counted(lambda conn: conn.execute("select 1").fetchone())
    with pytest.raises(DatabaseUnavailable, match="retry it"):
        holder.run(fn, idempotent=False)
    assert pids == [old_pid]
    assert backend_pid(holder) != old_pid  # the next call opens a new connection


def test_connection_context_is_not_retried(holder: ConnectionHolder, admin: psycopg.Connection[Any]) -> None:
    old_pid = backend_pid(holder)
    terminate(admin, old_pid)
    with pytest.raises(DatabaseUnavailable), holder.connection() as conn:
        conn.execute("select 1")
    with holder.connection() as conn:
        assert conn.execute("select 1 as one").fetchone() == {"one": 1}


def test_failure_on_a_connection_opened_for_the_call_is_not_retried(holder: ConnectionHolder) -> None:
    pids, fn = counted(lambda conn: conn.execute("select pg_terminate_backend(pg_backend_pid())"))
    with pytest.raises(DatabaseUnavailable):
        holder.run(fn, idempotent=True)
    assert len(pids) == 1


def test_the_retry_is_made_once(holder: ConnectionHolder) -> None:
    backend_pid(holder)
    pids, fn = counted(lambda conn: conn.execute("select pg_terminate_backend(pg_backend_pid())"))
    with pytest.raises(DatabaseUnavailable):
        holder.run(fn, idempotent=True)
    assert len(pids) == 2 and pids[0] != pids[1]


def test_error_that_leaves_the_connection_usable_is_not_retried(holder: ConnectionHolder) -> None:
    backend_pid(holder)

    def timed_out(conn: psycopg.Connection[Any]) -> Any:
        conn.execute("set statement_timeout = '1ms'")
        return conn.execute("select pg_sleep(0.2)")

    pids, fn = counted(timed_out)
    with pytest.raises(DatabaseUnavailable):
        holder.run(fn, idempotent=True)
    assert len(pids) == 1


def test_errors_of_the_statement_itself_pass_through_unretried(holder: ConnectionHolder) -> None:
    backend_pid(holder)
    pids, fn = counted(lambda conn: conn.execute("select 1 / 0"))
    with pytest.raises(psycopg.errors.DivisionByZero):
        holder.run(fn, idempotent=True)
    assert len(pids) == 1
    assert backend_pid(holder) == pids[0]  # the connection is still good and kept


def test_per_connection_setup_is_redone_after_the_reconnect(
    holder: ConnectionHolder, admin: psycopg.Connection[Any]
) -> None:
    old_pid = backend_pid(holder)
    holder.prepared.add("vector")
    terminate(admin, old_pid)
    seen: list[set[str]] = []

    def fn(conn: psycopg.Connection[Any]) -> Any:
        seen.append(set(holder.prepared))
        return conn.execute("select 1").fetchone()

    holder.run(fn, idempotent=True)
    assert seen == [{"vector"}, set()]
