"""`nexus dev`: the whole stack on one machine, wired the way the cloud wires it.

The parts live in their own modules, one noun each, and this one starts them in order, says
what runs where, and stops them in reverse:

- `environment`: the database (DATABASE_URL or the embedded Postgres, migrated at start), the dev
  credentials and the local providers the functions run with;
- `bridge`: the database webhook (LISTEN/NOTIFY in place of pg_net) to the process function;
- `servers`: functions-framework serving each function of `shared.runtime.functions.FUNCTIONS`
  on its own port, from N = `--port` (default 8080) up;
- `jobs`: the sweep and the token upkeep, on their schedules;
- `dashboard`: the operator page, on the port after the functions' (N + 4), served from a thread.

**Stop** (Ctrl-C or SIGTERM): stop the schedules, the operator page and the bridge, terminate the
servers' process groups, drop the trigger, and stop the embedded Postgres unless another live
process still uses it (stale handles of crashed commands are ignored, so an orphaned server is
stopped too).
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from typing import IO

from shared.config import Settings
from shared.local.bridge import WebhookBridge, WebhookSender
from shared.local.dashboard import DashboardServer, open_sources, start_dashboard
from shared.local.environment import DevError, LocalEnvironment, local_environment
from shared.local.jobs import PeriodicJob, Sweeper, token_refresher
from shared.local.options import DevOptions
from shared.local.servers import (
    HOST,
    FunctionServer,
    dashboard_port,
    local_url,
    ports_used,
    require_free_ports,
    source_path,
    start_function_servers,
    stop_function_servers,
    wait_until_serving,
)
from shared.local.signals import stop_on_signals
from shared.runtime.functions import FUNCTIONS

__all__ = ["DevStack", "Output", "endpoint_lines", "run_dev"]

BRIDGE_TARGET = "process"  # the function whose webhook the bridge delivers to
REFRESH_TARGET = "gcal_refresh"  # the function the token upkeep calls
INGEST = "ingest"  # the function the printed curl example calls


class Output:
    """Whole lines to a stream from several threads, flushed at once (pipes too)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def __call__(self, text: str) -> None:
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()


def endpoint_lines(base_port: int, notes: dict[str, str]) -> list[str]:
    """A line per function, in the order of FUNCTIONS: its name, the URL to POST to, and its note
    from `notes` (by function name) when there is one."""
    lines = []
    for function in FUNCTIONS:
        note = f"  ({notes[function.name]})" if function.name in notes else ""
        lines.append(f"  {function.name:<16}POST {local_url(function.name, base_port)}{note}")
    return lines


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
        self.dashboard: DashboardServer | None = None
        self.jobs: list[PeriodicJob] = []
        self.sweeper = Sweeper(env.settings, options.sweep_interval_s, out)
        self.bridge = WebhookBridge(
            env.database_url,
            WebhookSender(local_url(BRIDGE_TARGET, options.port), env.credentials.webhook_secret),
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
        self.dashboard = self._start_dashboard()
        self.jobs.append(PeriodicJob("sweep", self.options.sweep_interval_s, self.sweeper, self.out))
        if self.refreshes_tokens:
            refresh = token_refresher(local_url(REFRESH_TARGET, self.options.port), self.out)
            self.jobs.append(PeriodicJob("token refresh", self.options.refresh_interval_s, refresh, self.out))
        for job in self.jobs:
            job.start()

    def _start_dashboard(self) -> DashboardServer:
        """The operator page over the stack's database, in this process."""
        settings = self.env.settings
        store, token_store = open_sources(settings)
        port = dashboard_port(self.options.port)
        return start_dashboard(settings, HOST, port, store=store, token_store=token_store, report=self.out)

    def _stop_dashboard(self) -> None:
        if self.dashboard is not None:
            self.dashboard.stop()

    def supervise(self) -> int:
        """Wait for a stop signal (0) or a server that died (1)."""
        while not self.stopping.wait(0.5):
            for server in self.servers:
                code = server.process.poll()
                if code is not None:
                    self.out(f"nexus dev: {server.function.name} exited with code {code}; stopping")
                    return 1
        return 0

    def stop(self) -> None:
        """Stop in reverse order; each step runs even if an earlier one failed."""
        self.sweeper.cancelled.set()
        for job in self.jobs:
            job.stop()
        steps: list[tuple[str, Callable[[], None]]] = [
            ("operator page", self._stop_dashboard),
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
        database = _display_dsn(env.database_url)
        where = f" (embedded, {env.embedded_data_dir})" if env.embedded_data_dir else ""
        providers = env.settings.embedding_provider + "/" + env.settings.summary_provider
        if not env.settings.openai_api_key:
            providers += " (offline; set OPENAI_API_KEY for OpenAI)"
        refresh = f"every {o.refresh_interval_s:g} s" if self.refreshes_tokens else "off (no Google settings)"
        notes = {
            BRIDGE_TARGET: "Supabase webhook; the bridge posts here",
            REFRESH_TARGET: f"token upkeep; schedule: {refresh}",
        }
        example = json.dumps(
            {"client_id": str(creds.client_id), "source": "hello.md", "content": "Hello, Nexus"}
        )
        page = self.dashboard.url if self.dashboard else f"http://{HOST}:{dashboard_port(o.port)}/"
        guard = "; every request needs NEXUS_DASHBOARD_TOKEN" if env.settings.dashboard_token else ""
        return "\n".join(
            [
                "nexus dev is running (Ctrl-C stops it)",
                *endpoint_lines(o.port, notes),
                f"  {'dashboard':<16}GET  {page}  (the operator page{guard})",
                f"  database        {database}{where}",
                f"  providers       {providers}",
                f"  sweep           every {o.sweep_interval_s:g} s, in this process",
                f"  API key         {creds.api_key}",
                f"  webhook secret  {creds.webhook_secret}",
                f"  dev client      {creds.client_id}",
                f"  try: curl -sS {local_url(INGEST, o.port)} -H 'Authorization: Bearer {creds.api_key}' "
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
    for function in FUNCTIONS:
        source = source_path(function)
        if not source.is_file():
            raise DevError(f"{source} is missing; run nexus dev from a checkout of the repository.")
    require_free_ports(ports_used(options.port))
    stopping = threading.Event()
    with stop_on_signals(stopping):
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
