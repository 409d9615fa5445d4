"""The embedded Postgres (the default with no DATABASE_URL) starts with the settings the write
path needs, on a new data directory and on one made before those settings existed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from shared.local.embedded import SETTINGS, configure, start_embedded_postgres, stop_embedded_postgres
from shared.store.database import connect


def shown(conn: psycopg.Connection[Any]) -> dict[str, str]:
    return {name: next(iter(conn.execute(f"show {name}").fetchone().values())) for name in SETTINGS}


def test_the_session_server_runs_with_the_write_path_settings(admin: psycopg.Connection[Any]) -> None:
    assert shown(admin) == SETTINGS == {"wal_buffers": "64MB", "wal_writer_delay": "10ms"}


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
            assert shown(conn) == SETTINGS
        configure(data_dir)  # a later start adds nothing
        text = conf.read_text()
        assert text.count("# nexus-workers settings") == 1
        assert all(text.count(f"{name} = '{value}'") == 1 for name, value in SETTINGS.items())
    finally:
        stop_embedded_postgres(data_dir)


def test_a_setting_added_later_is_appended_to_the_existing_block(tmp_path: Path) -> None:
    conf = tmp_path / "postgresql.conf"
    conf.write_text("max_connections = 100\n\n# nexus-workers settings\nwal_buffers = '64MB'\n")

    configure(tmp_path)

    assert conf.read_text() == (
        "max_connections = 100\n\n# nexus-workers settings\nwal_buffers = '64MB'\nwal_writer_delay = '10ms'\n"
    )
