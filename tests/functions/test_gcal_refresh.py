"""The gcal_refresh function through its real entry points: the Lambda handler fed EventBridge
scheduled events and the functions-framework `refresh` target, against the real embedded Postgres
and a local Google token server over real HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from shared.config import Settings
from shared.gcal.crypto import generate_key
from shared.gcal.refresh import REAUTH_ALERT, RefreshPolicy
from shared.gcal.store import PostgresTokenStore
from shared.gcal.tokens import import_authorized_user
from shared.logs import get_logger
from tests.conftest import ROOT, load_event, load_function
from tests.support.google_oauth import GoogleOAuthServer, authorized_user_info
from tests.support.json_logs import CapturedLogs, captured_logs

KEY = generate_key()
SOURCE = ROOT / "functions" / "gcal_refresh" / "main.py"


@pytest.fixture(scope="module", autouse=True)
def logger_outside_capsys() -> None:
    """Create the shared Logger before any test's capsys exists: its handler keeps the stream it
    was created with, and a capsys stream is closed after its test (later captures would fail)."""
    get_logger()


@pytest.fixture(autouse=True)
def clean_tokens(admin: psycopg.Connection[Any]) -> Iterator[None]:
    admin.execute("delete from system_config where key like 'google_oauth_token%'")
    yield
    admin.execute("delete from system_config where key like 'google_oauth_token%'")


@pytest.fixture
def logs() -> Iterator[CapturedLogs]:
    with captured_logs() as captured:
        yield captured


@pytest.fixture
def oauth(logs: CapturedLogs, capsys: pytest.CaptureFixture[str]) -> Iterator[GoogleOAuthServer]:
    """The token server; afterwards no secret it knows may be in the logs or on stdout/stderr."""
    with GoogleOAuthServer() as server:
        yield server
    out, err = capsys.readouterr()
    sys.stdout.write(out)  # keep it for the test's own report
    for secret in server.issued_secrets():
        assert secret not in logs.text and secret not in out and secret not in err


@pytest.fixture
def gcal_env(function_env: pytest.MonkeyPatch, oauth: GoogleOAuthServer) -> pytest.MonkeyPatch:
    function_env.setenv("NEXUS_TOKEN_ENCRYPTION_KEY", KEY)
    function_env.setenv("GOOGLE_TOKEN_URI", oauth.token_uri)
    function_env.setenv("GOOGLE_AUTH_URI", oauth.auth_uri)
    return function_env


@pytest.fixture
def gcal(gcal_env: pytest.MonkeyPatch) -> Iterator[Any]:
    module = load_function("gcal_refresh")
    yield module
    module.upkeep.close()


def store_expired_token(
    pg_url: str, oauth: GoogleOAuthServer, tmp_path: Path, minutes_left: int = -5
) -> None:
    expiry = (datetime.now(UTC) + timedelta(minutes=minutes_left)).isoformat().replace("+00:00", "Z")
    path = tmp_path / "token.json"
    path.write_text(
        json.dumps(authorized_user_info(oauth, access_token=oauth.issue_access_token(), expiry=expiry))
    )
    settings = Settings(database_url=pg_url, token_encryption_key=KEY)
    import_authorized_user(path, settings=settings)


def metrics(stdout: str) -> dict[str, float]:
    """The values of the CloudWatch embedded-metric lines printed during the run."""
    found: dict[str, float] = {}
    for line in stdout.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            record = json.loads(line)
            for definition in record["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
                found[definition["Name"]] = sum(record[definition["Name"]])
    return found


def scheduled() -> dict[str, Any]:
    return load_event("eventbridge_scheduled.json")


def test_importing_reads_no_setting_and_loads_no_heavy_module() -> None:
    """A fresh interpreter with no configuration at all imports the handler; nothing heavy loads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEXUS_", "GOOGLE_", "SUPABASE_"))}
    env.pop("DATABASE_URL", None)
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import main; "
        "heavy = ('psycopg', 'google.auth', 'google.oauth2', 'cryptography', 'requests', 'pydantic', "
        "'shared.config', 'shared.store.database'); "
        "print(json.dumps([m for m in heavy if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(SOURCE.parent)],
        cwd=ROOT / "tests" / "functions",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_scheduled_event_refreshes_an_expired_token_then_reuses_the_connection(
    gcal: Any, oauth: GoogleOAuthServer, pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store_expired_token(pg_url, oauth, tmp_path)

    result = gcal.handler(scheduled(), None)
    assert result["ok"] is True
    (account,) = result["accounts"]
    assert account["account"] == "default" and account["status"] == "ok" and account["refreshed"] is True
    assert datetime.fromisoformat(account["expiry"]) > datetime.now(UTC) + timedelta(minutes=55)
    assert oauth.refresh_calls == 1
    first = metrics(capsys.readouterr().out)
    assert first == {"GoogleTokenReauthRequired": 0, "GoogleTokenRefreshFailed": 0, "GoogleTokenRefreshed": 1}

    store = gcal.upkeep.store
    assert isinstance(store, PostgresTokenStore)
    connection = store.holder._conn
    again = gcal.handler(scheduled(), None)  # a warm invocation ten minutes later
    assert again["ok"] is True and again["accounts"][0]["refreshed"] is False
    assert oauth.refresh_calls == 1
    assert gcal.upkeep.store is store and store.holder._conn is connection


def test_revoked_token_fails_every_run_alerts_once_and_stops_calling(
    gcal: Any,
    oauth: GoogleOAuthServer,
    pg_url: str,
    tmp_path: Path,
    logs: CapturedLogs,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store_expired_token(pg_url, oauth, tmp_path)
    oauth.revoke_all()

    for _ in range(3):
        result = gcal.handler(scheduled(), None)
        assert result["ok"] is False
        assert result["accounts"][0]["status"] == "reauth_required"
        assert "nexus gcal init" in result["accounts"][0]["message"]
        assert metrics(capsys.readouterr().out)["GoogleTokenReauthRequired"] == 1
    assert oauth.refresh_calls == 1
    alerts = [record for record in logs.records() if record.get("alert") == REAUTH_ALERT]
    assert len(alerts) == 1 and alerts[0]["level"] == "ERROR"
    checks = [record for record in logs.records() if record["message"] == "google token checked"]
    assert [record["token_status"] for record in checks] == ["reauth_required"] * 3


def test_unreachable_endpoint_is_a_failed_run_with_the_token_kept(
    gcal: Any,
    oauth: GoogleOAuthServer,
    pg_url: str,
    tmp_path: Path,
    admin: psycopg.Connection[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    store_expired_token(pg_url, oauth, tmp_path)
    before = admin.execute("select value->>'secrets' as s from system_config").fetchone()
    oauth.delay_next(3, delay_s=3.0)
    gcal.upkeep.policy = RefreshPolicy(timeout_s=0.2, backoff_s=0.01)

    result = gcal.handler(scheduled(), None)
    assert result["ok"] is False and result["accounts"][0]["status"] == "error"
    assert metrics(capsys.readouterr().out)["GoogleTokenRefreshFailed"] == 1
    after = admin.execute(
        "select value->>'secrets' as s, value->>'status' as status from system_config"
    ).fetchone()
    assert after["s"] == before["s"] and after["status"] == "error"


def test_missing_encryption_key_is_a_failed_run_naming_the_variable(
    gcal: Any, gcal_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], logs: CapturedLogs
) -> None:
    gcal_env.delenv("NEXUS_TOKEN_ENCRYPTION_KEY")
    result = gcal.handler(scheduled(), None)
    assert result == {
        "ok": False,
        "accounts": [],
        "error": "NEXUS_TOKEN_ENCRYPTION_KEY is not set; create a key with 'nexus gcal new-key'.",
    }
    out, err = capsys.readouterr()
    assert metrics(out)["GoogleTokenRefreshFailed"] == 1
    assert "Traceback" not in out + err + logs.text


def test_no_stored_token_says_which_command_to_run(gcal: Any, oauth: GoogleOAuthServer) -> None:
    result = gcal.handler(scheduled(), None)
    assert result["ok"] is False
    assert result["error"].startswith("No Google token is stored; run 'nexus gcal init'")
    assert oauth.refresh_calls == 0


@pytest.mark.parametrize(
    "event",
    [
        {},
        None,
        "refresh please",
        {"Records": [{"eventSource": "aws:sqs", "body": "{}"}]},
        "function_url_ingest.json",
    ],
)
def test_unrecognised_events_get_a_clear_error_without_reading_settings(
    function_env: pytest.MonkeyPatch, event: Any
) -> None:
    function_env.delenv("DATABASE_URL")
    module = load_function("gcal_refresh")
    if event == "function_url_ingest.json":
        event = load_event(event)
    result = module.handler(event, None)
    assert result["statusCode"] == 400
    assert "EventBridge scheduled event" in json.loads(result["body"])["detail"]
    assert module.upkeep.settings is None and module.upkeep.store is None


@pytest.fixture
def framework_app(gcal_env: pytest.MonkeyPatch) -> Iterator[Any]:
    """The real functions-framework app for the `refresh` target (it imports main.py itself)."""
    from functions_framework import create_app

    gcal_env.setattr(sys, "path", list(sys.path))
    gcal_env.setitem(sys.modules, "main", types.ModuleType("placeholder"))
    app = create_app(target="refresh", source=str(SOURCE))
    yield app
    sys.modules["main"].upkeep.close()


def test_functions_framework_target_refreshes_on_post(
    framework_app: Any, oauth: GoogleOAuthServer, pg_url: str, tmp_path: Path
) -> None:
    store_expired_token(pg_url, oauth, tmp_path)
    client = framework_app.test_client()

    response = client.post("/")
    assert response.status_code == 200
    assert response.get_json()["accounts"][0]["refreshed"] is True
    assert oauth.refresh_calls == 1

    wrong = client.get("/")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.headers["content-type"] == "application/problem+json"


def test_functions_framework_target_answers_500_when_sign_in_is_needed(
    framework_app: Any, oauth: GoogleOAuthServer, pg_url: str, tmp_path: Path
) -> None:
    store_expired_token(pg_url, oauth, tmp_path)
    oauth.revoke_all()
    response = framework_app.test_client().post("/")
    assert response.status_code == 500
    assert response.get_json()["accounts"][0]["status"] == "reauth_required"
