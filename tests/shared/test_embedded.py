"""The embedded Postgres (the default with no DATABASE_URL) starts with the settings the write
path needs, on a new data directory and on one made before those settings existed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from shared.database import connect
from shared.embedded import SETTINGS, configure, start_embedded_postgres, stop_embedded_postgres


def test_the_session_server_runs_with_larger_wal_buffers(admin: psycopg.Connection[Any]) -> None:
    row = admin.execute("show wal_buffers").fetchone()
    assert row is not None and row["wal_buffers"] == SETTINGS["wal_buffers"] == "64MB"


def test_an_older_data_directory_gets_the_settings_once_at_its_next_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    start_embedded_postgres(data_dir)
    stop_embedded_postgres(data_dir)
    assert not (data_dir / "postmaster.pid").exists()  # stopped: the next start reads the file
    conf = data_dir / "postgresql.conf"
    # As a data directory from before the settings: their block removed.
    conf.write_text(conf.read_text().split("# nexus-workers settings")[0])

    url = start_embedded_postgres(data_dir)
    try:
        with connect(url) as conn:
            row = conn.execute("show wal_buffers").fetchone()
        assert row is not None and row["wal_buffers"] == "64MB"
        configure(data_dir)  # a later start adds nothing
        assert conf.read_text().count("# nexus-workers settings") == 1
    finally:
        stop_embedded_postgres(data_dir)
