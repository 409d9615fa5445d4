"""Google token upkeep against the real database and a local OAuth token server over real HTTP.

Every test runs with the functions' log stream captured; after each one, no secret the token
server ever issued (nor the client secret) may appear in the logs or in any stored row's text.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest

from shared.config import Settings
from shared.errors import ConfigError, NexusError
from shared.gcal.crypto import TokenCipher, UndecryptableError, generate_key
from shared.gcal.refresh import (
    REAUTH_ALERT,
    RefreshPolicy,
    refresh_account,
    refresh_all_accounts,
    refresh_token_if_needed,
)
from shared.gcal.store import GoogleTokenStore, PostgresTokenStore, SupabaseTokenStore
from shared.gcal.tokens import (
    ReauthRequired,
    TokenMissing,
    TokenSecrets,
    import_authorized_user,
    load_credentials,
    rotate_encryption_key,
    token_key,
    token_states,
)
from shared.store.database import ConnectionHolder
from shared.store.supabase import SupabaseStore
from tests.support.google_oauth import CALENDAR_SCOPE, GoogleOAuthServer, authorized_user_info
from tests.support.json_logs import CapturedLogs, captured_logs
from tests.support.postgrest import PostgrestStandIn

KEY = generate_key()
FAST = RefreshPolicy(timeout_s=0.5, backoff_s=0.01, max_wait_s=10.0)


@pytest.fixture(autouse=True)
def clean_tokens(admin: psycopg.Connection[Any]) -> Iterator[None]:
    admin.execute("delete from system_config where key like 'google_oauth_token%'")
    yield
    admin.execute("delete from system_config where key like 'google_oauth_token%'")


@pytest.fixture(autouse=True)
def logs() -> Iterator[CapturedLogs]:
    with captured_logs() as captured:
        yield captured


@pytest.fixture
def oauth(logs: CapturedLogs, admin: psycopg.Connection[Any]) -> Iterator[GoogleOAuthServer]:
    """The token server; afterwards, no secret it knows may be in the logs or a row's text."""
    with GoogleOAuthServer() as server:
        yield server
    rows = admin.execute("select value::text as text from system_config").fetchall()
    for secret in server.issued_secrets():
        assert secret not in logs.text
        assert all(secret not in found["text"] for found in rows)


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresTokenStore]:
    """The psycopg token store (this module's `store`, not conftest's item store)."""
    token_store = PostgresTokenStore(ConnectionHolder(pg_url))
    yield token_store
    token_store.close()


def settings_for(pg_url: str, oauth: GoogleOAuthServer, key: str = KEY) -> Settings:
    return Settings(
        database_url=pg_url,
        google_client_id=oauth.client_id,
        google_client_secret=oauth.client_secret,
        google_token_uri=oauth.token_uri,
        google_auth_uri=oauth.auth_uri,
        token_encryption_key=key,
    )


@pytest.fixture
def settings(pg_url: str, oauth: GoogleOAuthServer) -> Settings:
    return settings_for(pg_url, oauth)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def store_token(
    tmp_path: Path,
    oauth: GoogleOAuthServer,
    settings: Settings,
    store: GoogleTokenStore,
    *,
    expires_in: timedelta | None,
    account: str = "default",
) -> dict[str, Any]:
    """Import an authorized_user file whose access token expires after `expires_in` (None: no
    access token at all); returns the file's content."""
    if expires_in is None:
        info = authorized_user_info(oauth)
    else:
        info = authorized_user_info(
            oauth, access_token=oauth.issue_access_token(), expiry=iso(datetime.now(UTC) + expires_in)
        )
    path = tmp_path / f"{account}.json"
    path.write_text(json.dumps(info))
    import_authorized_user(path, account, settings=settings, store=store)
    return info


def row(admin: psycopg.Connection[Any], account: str = "default") -> dict[str, Any]:
    found = admin.execute("select value from system_config where key = %s", (token_key(account),)).fetchone()
    assert found is not None
    return dict(found["value"])


def secrets_of(admin: psycopg.Connection[Any], key: str = KEY, account: str = "default") -> TokenSecrets:
    return TokenSecrets.decrypt(row(admin, account)["secrets"], TokenCipher.from_setting(key))


# --- storing ---


def test_import_stores_only_ciphertext_beside_readable_fields(
    tmp_path: Path, oauth: GoogleOAuthServer, settings: Settings, store: GoogleTokenStore, admin: Any
) -> None:
    info = store_token(tmp_path, oauth, settings, store, expires_in=timedelta(minutes=50))

    text = admin.execute(
        "select value::text as t from system_config where key = 'google_oauth_token'"
    ).fetchone()
    assert info["token"] not in text["t"] and info["refresh_token"] not in text["t"]
    assert oauth.client_secret not in text["t"]
    value = row(admin)
    assert value["status"] == "ok" and value["last_error"] is None
    assert value["client_id"] == oauth.client_id
    assert value["expiry"] == info["expiry"][:19] + "Z"
    credentials = load_credentials(settings=settings, store=store)
    assert (credentials.token, credentials.refresh_token) == (info["token"], info["refresh_token"])
    assert credentials.token_uri == oauth.token_uri
    assert oauth.refresh_calls == 0  # importing calls nobody


def test_import_keeps_scopes_and_accounts_apart(
    tmp_path: Path, oauth: GoogleOAuthServer, settings: Settings, store: GoogleTokenStore, admin: Any
) -> None:
    path = tmp_path / "work.json"
    path.write_text(json.dumps(authorized_user_info(oauth, scopes=[CALENDAR_SCOPE])))
    import_authorized_user(path, "work@example.com", settings=settings, store=store)
    store_token(tmp_path, oauth, settings, store, expires_in=None)

    states = {state.account: state for state in token_states(settings=settings, store=store)}
    assert set(states) == {"default", "work@example.com"}
    assert states["work@example.com"].scopes == (CALENDAR_SCOPE,)
    assert states["default"].expiry is None and states["default"].key == "current"
    assert row(admin, "work@example.com")["scopes"] == [CALENDAR_SCOPE]


# --- refreshing ---


def test_expired_token_is_refreshed_once_and_expiry_moves_forward(
    tmp_path: Path, oauth: GoogleOAuthServer, settings: Settings, store: GoogleTokenStore, admin: Any
) -> None:
    info = store_token(tmp_path, oauth, settings, store, expires_in=timedelta(minutes=-5))

    assert refresh_token_if_needed(settings=settings, store=store) is True
    assert oauth.refresh_calls == 1
    value = row(admin)
    assert value["status"] == "ok" and value["last_error"] is None
    assert datetime.fromisoformat(value["expiry"]) > datetime.now(UTC) + timedelta(minutes=55)
    assert datetime.fromisoformat(value["refreshed_at"]) > datetime.now(UTC) - timedelta(minutes=1)
    secrets = secrets_of(admin)
    assert secrets.access_token != info["token"] and secrets.refresh_token == info["refresh_token"]
    assert "lease_id" not in value

    assert refresh_token_if_needed(settings=settings, store=store) is False  # now fresh
    assert oauth.refresh_calls == 1


@pytest.mark.parametrize(
    ("left", "calls"),
    [(timedelta(minutes=45), 0), (timedelta(minutes=21), 0), (timedelta(minutes=19), 1), (None, 1)],
)
def test_refresh_happens_only_inside_the_margin(
    tmp_path: Path,
    oauth: GoogleOAuthServer,
    settings: Settings,
    store: GoogleTokenStore,
    left: timedelta | None,
    calls: int,
) -> None:
    """The default margin is 20 minutes (the schedule runs every 10); no access token is due."""
    store_token(tmp_path, oauth, settings, store, expires_in=left)
    outcome = refresh_account(settings=settings, store=store)
    assert oauth.refresh_calls == calls
    assert outcome.ok and outcome.refreshed is bool(calls)


def test_force_refreshes_a_fresh_token(
    tmp_path: Path, oauth: GoogleOAuthServer, settings: Settings, store: GoogleTokenStore
) -> None:
    store_token(tmp_path, oauth, settings, store, expires_in=timedelta(minutes=55))
    assert refresh_token_if_needed(force=True, settings=settings, store=store) is True
    assert oauth.refresh_calls == 1


def test_ten_concurrent_refreshes_of_an_expired_token_call_google_once(
    tmp_path: Path,
    oauth: GoogleOAuthServer,
    settings: Settings,
    store: GoogleTokenStore,
    pg_url: str,
    admin: Any,
) -> None:
    """Each invocation has its own connection. The token server holds the one refresh it gets
    until the nine others have found the lease taken and started waiting, so they truly overlap."""
    store_token(tmp_path, oauth, settings, store, expires_in=timedelta(minutes=-1))
    everyone_waits = threading.Event()
    waiting: set[int] = set()
    lock = threading.Lock()
    oauth.hold_refreshes(everyone_waits)

    def sleep(seconds: float) -> None:
        with lock:
            waiting.add(threading.get_ident())
            if len(waiting) == 9:
                everyone_waits.set()
        time.sleep(seconds)

    def invocation(_: int) -> Any:
        own = PostgresTokenStore(ConnectionHolder(pg_url))
        try:
            return refresh_account(settings=settings, store=own, policy=FAST, sleep=sleep)
        finally:
            own.close()

    with ThreadPoolExecutor(max_workers=10) as pool:
        outcomes = list(pool.map(invocation, range(10)))

    assert oauth.refresh_calls == 1
    assert len(waiting) == 9
    assert [o.refreshed for o in outcomes].count(True) == 1
    assert all(o.ok for o in outcomes)
    assert len({o.expiry for o in outcomes}) == 1  # the losers report the winner's token
    assert "lease_id" not in row(admin)


def test_lease_left_by_a_dead_refresher_is_taken_over(
    tmp_path: Path, oauth: GoogleOAuthServer, settings: Settings, store: GoogleTokenStore, admin: Any
) -> None:
    """A refresher that died holding the lease blocks the others only until its lease ends."""
    store_token(tmp_path, oauth, settings, store, expires_in=timedelta(minutes=-1))
    admin.execute(
        """update system_config set value = value || jsonb_build_object(
             'lease_id', 'dead-invocation', 'lease_until', clock_timestamp() + interval '300 milliseconds')
           where key = 'google_oauth_token'"""
    )
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        time.sleep(seconds)

    outcome = refresh_account(settings=settings, store=store, policy=FAST, sleep=sleep)
    assert outcome.refreshed and oauth.refresh_calls == 1
    assert pauses and sum(pauses) < 2


def test_invalid_grant_needs_reauth_is_logged_once_and_stops_calling(
    tmp_path: Path,
    oauth: GoogleOAuthServer,
    settings: Settings,
    store: GoogleTokenStore,
    admin: Any,
    logs: CapturedLogs,
) -> None:
    store_token(tmp_path, oauth, settings, store, expires_in=timedelta(minutes=-1))
    oauth.revoke_all()

    first = refresh_account(settings=settings, store=store)
    assert first.status == "reauth_required" and not first.ok
    assert "nexus gcal init" in first.message
    value = row(admin)
    assert value["status"] == "reauth_required" and value["last_error"].startswith("invalid_grant")

    for _ in range(3):
        assert (
            refresh_account(settings=settings, store=store, policy=RefreshPolicy()).status
            == "reauth_required"
        )
    assert oauth.refresh_calls == 1  # no retry storm
    with pytest.raises(ReauthRequired, match="nexus gcal init"):
        refresh_token_if_needed(settings=settings, store=store)
    with pytest.raises(ReauthRequired):
        load_credentials(settings=settings, store=store)
    assert oauth.refresh_calls == 1
    alerts = [r for r in logs.records() if r.get("alert") == REAUTH_ALERT]
    assert len(alerts) == 1 and alerts[0]["level"] == "ERROR" and alerts[0]["account"] == "default"

    store_token(tmp_path, oauth, settings, store, expires_in=timedelta(minutes=-1))  # signed in again
    assert refresh_token_if_needed(settings=settings, store=store) is True
    assert row(admin)["status"] == "ok"


@pytest.mark.parametrize("fault", ["revoked", "bad_request"])
def test_error_descriptions_echoing_secrets_are_redacted(
    tmp_path: Path,
    oauth: GoogleOAuthServer,
    settings: Settings,
    store: GoogleTokenStore,
    admin: Any,
    fault: str,
) -> None:
    """The fixture checks logs and rows for every secret after the test; here Google's answer
    itself carries the refresh token and the client secret."""
    store_token(tmp_path, oauth, settings, store, expires_in=timedelta(minutes=-1))
    oauth.echo_secrets = True
    if fault == "revoked":
        oauth.revoke_all()
    else:
        oauth.fail_next(1, status=400)
    outcome = refresh_account(settings=settings, store=store)
    assert outcome.status == ("reauth_required" if fault == "revoked" else "error")
    assert "[redacted]" in row(admin)["last_error"]
    assert oauth.refresh_calls == 1


def test_server_error_then_success_is_refreshed(
    tmp_path: Path, oauth: GoogleOAuthServer, settings: Settings, store: GoogleTokenStore, admin: Any
) -> None:
    store_token(tmp_path, oauth, settings, store, expires_in=timedelta(minutes=-1))
    oauth.fail_next(1, status=503)
    assert refresh_token_if_needed(settings=settings, store=store) is True
    assert oauth.refresh_calls == 2  # google-auth retried after a backoff
    assert row(admin)["status"] == "ok"


def test_persistent_server_errors_keep_the_token_and_the_next_run_retries(
    tmp_path: Path, oauth: GoogleOAuthServer, settings: Settings, store: GoogleTokenStore, admin: Any
) -> None:
    info = store_token(tmp_path, oauth, settings, store, expires_in=timedelta(minutes=10))
    before = row(admin)
    oauth.fail_next(3, status=500)

    outcome = refresh_account(settings=settings, store=store)
    assert outcome.status == "error" and not outcome.refreshed
    assert oauth.refresh_calls == 3
    value = row(admin)
    assert value["status"] == "error" and "internal_failure" in value["last_error"]
    assert value["expiry"] == before["expiry"]
    kept = secrets_of(admin)
    assert (kept.access_token, kept.refresh_token) == (info["token"], info["refresh_token"])

    assert refresh_account(settings=settings, store=store).refreshed  # status error: due again
    assert oauth.refresh_calls == 4
    assert row(admin)["status"] == "ok" and row(admin)["last_error"] is None


def test_timeouts_are_retried_with_backoff(
    tmp_path: Path, oauth: GoogleOAuthServer, settings: Settings, store: GoogleTokenStore, admin: Any
) -> None:
    store_token(tmp_path, oauth, settings, store, expires_in=timedelta(minutes=-1))
    oauth.delay_next(1, delay_s=3.0)
    pauses: list[float] = []
    outcome = refresh_account(
        settings=settings,
        store=store,
        policy=RefreshPolicy(timeout_s=0.3, backoff_s=0.02),
        sleep=lambda s: pauses.append(s),
    )
    assert outcome.refreshed and oauth.refresh_calls == 2
    assert pauses == [0.02]
    assert row(admin)["status"] == "ok"


def test_endpoint_unreachable_records_the_error_and_keeps_the_token(
    tmp_path: Path, oauth: GoogleOAuthServer, settings: Settings, store: GoogleTokenStore, admin: Any
) -> None:
    info = store_token(tmp_path, oauth, settings, store, expires_in=timedelta(minutes=-1))
    oauth.delay_next(3, delay_s=3.0)
    pauses: list[float] = []
    outcome = refresh_account(
        settings=settings,
        store=store,
        policy=RefreshPolicy(timeout_s=0.2, backoff_s=0.01, attempts=3),
        sleep=lambda s: pauses.append(s),
    )
    assert outcome.status == "error" and oauth.refresh_calls == 3
    assert pauses == [0.01, 0.02]  # doubling backoff
    value = row(admin)
    assert value["status"] == "error" and "could not be reached in 3 tries" in value["last_error"]
    assert secrets_of(admin).refresh_token == info["refresh_token"]
    assert "lease_id" not in value


# --- keys and settings ---


def test_key_rotation_keeps_old_rows_readable_and_reencrypts(
    tmp_path: Path, oauth: GoogleOAuthServer, pg_url: str, store: GoogleTokenStore, admin: Any
) -> None:
    old, new = KEY, generate_key()
    info = store_token(
        tmp_path, oauth, settings_for(pg_url, oauth, old), store, expires_in=timedelta(hours=1)
    )
    both = settings_for(pg_url, oauth, f"{new},{old}")

    assert load_credentials(settings=both, store=store).refresh_token == info["refresh_token"]
    assert [s.key for s in token_states(settings=both, store=store)] == ["older"]
    assert rotate_encryption_key(settings=both, store=store) == 1
    assert [s.key for s in token_states(settings=both, store=store)] == ["current"]

    only_new = settings_for(pg_url, oauth, new)
    assert load_credentials(settings=only_new, store=store).refresh_token == info["refresh_token"]
    with pytest.raises(UndecryptableError, match="NEXUS_TOKEN_ENCRYPTION_KEY"):
        load_credentials(settings=settings_for(pg_url, oauth, old), store=store)


def test_wrong_key_is_one_sentence_and_leaves_the_row_and_lease_alone(
    tmp_path: Path,
    oauth: GoogleOAuthServer,
    settings: Settings,
    pg_url: str,
    store: GoogleTokenStore,
    admin: Any,
) -> None:
    store_token(tmp_path, oauth, settings, store, expires_in=timedelta(minutes=-1))
    before = row(admin)
    wrong = settings_for(pg_url, oauth, generate_key())
    with pytest.raises(UndecryptableError) as caught:
        refresh_account(settings=wrong, store=store)
    assert str(caught.value).count(".") == 1 and "NEXUS_TOKEN_ENCRYPTION_KEY" in str(caught.value)
    assert row(admin) == before  # no lease left behind, nothing changed
    assert oauth.refresh_calls == 0
    (outcome,) = refresh_all_accounts(settings=wrong, store=store)  # the schedule reports it instead
    assert outcome.status == "error" and "cannot be decrypted" in outcome.message
    assert refresh_account(settings=settings, store=store, policy=FAST).refreshed  # no waiting needed


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (None, "NEXUS_TOKEN_ENCRYPTION_KEY is not set; create a key with 'nexus gcal new-key'."),
        ("not-a-key", "NEXUS_TOKEN_ENCRYPTION_KEY is invalid: key 1 is not a Fernet key"),
    ],
)
def test_missing_or_malformed_key_names_the_variable(
    tmp_path: Path, oauth: GoogleOAuthServer, pg_url: str, key: str | None, message: str
) -> None:
    settings = settings_for(pg_url, oauth).model_copy(update={"token_encryption_key": key})
    with pytest.raises(ConfigError) as caught:
        refresh_account(settings=settings)
    assert str(caught.value).startswith(message)
    assert "not-a-key" not in str(caught.value)


def test_missing_client_credentials_name_the_variable(
    tmp_path: Path, oauth: GoogleOAuthServer, settings: Settings, store: GoogleTokenStore
) -> None:
    path = tmp_path / "no-client.json"
    path.write_text(json.dumps(authorized_user_info(oauth, with_client=False)))
    bare = settings.model_copy(update={"google_client_id": None, "google_client_secret": None})
    with pytest.raises(ConfigError, match=r"^GOOGLE_CLIENT_ID is not set\.$"):
        import_authorized_user(path, settings=bare, store=store)
    # With the client in the settings the file is enough, and the refresh uses that client.
    import_authorized_user(path, settings=settings, store=store)
    assert refresh_account(settings=settings, store=store).refreshed


def test_no_stored_token_says_which_command_to_run(settings: Settings, store: GoogleTokenStore) -> None:
    with pytest.raises(TokenMissing, match=r"^No Google token is stored; run 'nexus gcal init'"):
        refresh_token_if_needed(settings=settings, store=store)
    with pytest.raises(TokenMissing, match=r"for account 'work'.*--account work"):
        refresh_account("work", settings=settings, store=store)
    with pytest.raises(TokenMissing):
        refresh_all_accounts(settings=settings, store=store)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not JSON"),
        (json.dumps({"type": "service_account", "private_key": "x"}), "is not a Google authorized_user file"),
        (json.dumps({"type": "authorized_user", "client_id": "c"}), "has no refresh_token"),
    ],
)
def test_bad_import_file_is_one_sentence(
    tmp_path: Path, settings: Settings, store: GoogleTokenStore, content: str, message: str
) -> None:
    path = tmp_path / "token.json"
    path.write_text(content)
    with pytest.raises(NexusError, match=message):
        import_authorized_user(path, settings=settings, store=store)


def test_plain_http_endpoint_off_this_machine_is_refused(
    tmp_path: Path, oauth: GoogleOAuthServer, settings: Settings, store: GoogleTokenStore
) -> None:
    store_token(tmp_path, oauth, settings, store, expires_in=None)
    remote = settings.model_copy(update={"google_token_uri": "http://oauth.example.com/token"})
    with pytest.raises(ConfigError, match="GOOGLE_TOKEN_URI must be an https URL"):
        refresh_account(settings=remote, store=store)


# --- the PostgREST backend runs the same SQL functions ---

JWT_SECRET = "gcal-stand-in-jwt-secret-with-32-characters-or-more"
SERVICE_KEY = jwt.encode({"role": "service_role"}, JWT_SECRET, algorithm="HS256")
ANON_KEY = jwt.encode({"role": "anon"}, JWT_SECRET, algorithm="HS256")


@pytest.fixture
def postgrest(pg_url: str) -> Iterator[PostgrestStandIn]:
    with PostgrestStandIn(pg_url, {SERVICE_KEY: "service_role", ANON_KEY: "anon"}) as server:
        yield server


def test_supabase_backend_refreshes_and_marks_reauth_like_postgres(
    tmp_path: Path, oauth: GoogleOAuthServer, settings: Settings, postgrest: PostgrestStandIn, admin: Any
) -> None:
    store = SupabaseTokenStore(SupabaseStore(postgrest.url, SERVICE_KEY))
    try:
        store_token(tmp_path, oauth, settings, store, expires_in=timedelta(minutes=-1))
        assert refresh_account(settings=settings, store=store).refreshed
        assert refresh_account(settings=settings, store=store).refreshed is False
        oauth.revoke_all()
        assert refresh_account(
            settings=settings, store=store, policy=RefreshPolicy(margin_s=7200)
        ).status == ("reauth_required")
        assert refresh_account(settings=settings, store=store).status == "reauth_required"
    finally:
        store.close()
    assert oauth.refresh_calls == 2
    assert row(admin)["status"] == "reauth_required"
    assert {call.role for call in postgrest.calls} == {"service_role"}


def test_api_roles_cannot_call_the_token_functions(postgrest: PostgrestStandIn, settings: Settings) -> None:
    anon = SupabaseTokenStore(SupabaseStore(postgrest.url, ANON_KEY))
    try:
        with pytest.raises(ConfigError, match="SUPABASE_SERVICE_ROLE_KEY"):
            anon.list()
    finally:
        anon.close()
