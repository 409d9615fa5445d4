"""The functions on one machine: `nexus dev` (the whole stack), `nexus replay` (a recorded event to
its handler), `nexus dashboard` (the operator page), `nexus demo`, and the database local commands use.

Modules, one noun each: `database` (DATABASE_URL or the embedded server, and the store local
commands open), `embedded` (the embedded Postgres), `environment` (what a local function runs
with: settings, dev credentials, a Lambda context), `options` (`nexus dev`'s options, light enough
for `nexus --help`), `servers` (the functions-framework children and their ports), `bridge` (the
database webhook over LISTEN/NOTIFY), `jobs` (the sweep and token upkeep schedules), `stack` (the
emulator that starts and stops all of them), `signals` (Ctrl-C and SIGTERM as a stop request),
`overview` (what the operator page shows) and `dashboard` (the page's web app and server), `replay`
and `demo` (their commands).

Names load on first use, so importing the package costs nothing; nothing here imports `shared.cli`.
"""

from typing import TYPE_CHECKING

from shared.lazy import lazy_exports

_HOMES = {
    "database_url": "database",
    "open_store": "database",
    "local_settings": "database",
    "start_embedded_postgres": "embedded",
    "stop_embedded_postgres": "embedded",
    "DevCredentials": "environment",
    "DevError": "environment",
    "LocalContext": "environment",
    "LocalEnvironment": "environment",
    "dev_credentials": "environment",
    "local_environment": "environment",
    "DEFAULT_PORT": "options",
    "DevOptions": "options",
    "local_url": "servers",
    "port_of": "servers",
    "require_free_ports": "servers",
    "DeliveryRetries": "bridge",
    "WebhookBridge": "bridge",
    "WebhookSender": "bridge",
    "PeriodicJob": "jobs",
    "Sweeper": "jobs",
    "DevStack": "stack",
    "run_dev": "stack",
    "Replay": "replay",
    "ReplayError": "replay",
    "ReplayOptions": "replay",
    "classify": "replay",
    "run_replay": "replay",
    "demo_client_id": "demo",
    "run_demo": "demo",
    "DashboardError": "dashboard",
    "DashboardServer": "dashboard",
    "create_app": "dashboard",
    "run_dashboard": "dashboard",
    "start_dashboard": "dashboard",
    "Overview": "overview",
    "gather_overview": "overview",
    "status_json": "overview",
    "stop_on_signals": "signals",
}
__all__ = [
    "DEFAULT_PORT",
    "DashboardError",
    "DashboardServer",
    "DeliveryRetries",
    "DevCredentials",
    "DevError",
    "DevOptions",
    "DevStack",
    "LocalContext",
    "LocalEnvironment",
    "Overview",
    "PeriodicJob",
    "Replay",
    "ReplayError",
    "ReplayOptions",
    "Sweeper",
    "WebhookBridge",
    "WebhookSender",
    "classify",
    "create_app",
    "database_url",
    "demo_client_id",
    "dev_credentials",
    "gather_overview",
    "local_environment",
    "local_settings",
    "local_url",
    "open_store",
    "port_of",
    "require_free_ports",
    "run_dashboard",
    "run_demo",
    "run_dev",
    "run_replay",
    "start_dashboard",
    "start_embedded_postgres",
    "status_json",
    "stop_embedded_postgres",
    "stop_on_signals",
]
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)

if TYPE_CHECKING:
    from shared.local.bridge import DeliveryRetries, WebhookBridge, WebhookSender
    from shared.local.dashboard import (
        DashboardError,
        DashboardServer,
        create_app,
        run_dashboard,
        start_dashboard,
    )
    from shared.local.database import database_url, local_settings, open_store
    from shared.local.demo import demo_client_id, run_demo
    from shared.local.embedded import start_embedded_postgres, stop_embedded_postgres
    from shared.local.environment import (
        DevCredentials,
        DevError,
        LocalContext,
        LocalEnvironment,
        dev_credentials,
        local_environment,
    )
    from shared.local.jobs import PeriodicJob, Sweeper
    from shared.local.options import DEFAULT_PORT, DevOptions
    from shared.local.overview import Overview, gather_overview, status_json
    from shared.local.replay import Replay, ReplayError, ReplayOptions, classify, run_replay
    from shared.local.servers import local_url, port_of, require_free_ports
    from shared.local.signals import stop_on_signals
    from shared.local.stack import DevStack, run_dev
