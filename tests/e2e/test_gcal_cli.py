"""`nexus gcal …` end to end against the real database and a local Google authorization + token
server over real HTTP. Sign-in runs the installed console script in a subprocess, driven by a
scripted browser; the other commands go through the CLI's `main()` in this process (same code,
faster), plus one subprocess check of how the script reports a problem.

Every command's stdout, stderr and logs are checked: no secret the token server knows, no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from shared.cli.main import main
from shared.config import reset_settings
from shared.gcal.crypto import generate_key
from shared.logs import get_logger
from tests.conftest import ROOT
from tests.support.google_oauth import CALENDAR_SCOPE, GoogleOAuthServer, authorized_user_info, follow_sign_in
from tests.support.json_logs import captured_logs

NEXUS = ROOT / ".venv" / "bin" / "nexus"
OLD_KEY = generate_key()


@dataclass
class Run:
    code: int
    out: str
    err: str


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
def oauth() -> Iterator[GoogleOAuthServer]:
    with GoogleOAuthServer() as server:
        yield server


def check_output(oauth: GoogleOAuthServer, text: str) -> None:
    assert "Traceback" not in text
    for secret in oauth.issued_secrets():
        assert secret not in text


class Nexus:
    """Runs `nexus gcal …` through the CLI's `main()` in this process (fast), with the environment
    a user would set; checks that stdout, stderr and the logs hold no secret and no traceback."""

    def __init__(
        self,
        env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        oauth: GoogleOAuthServer,
    ) -> None:
        self.env = env
        self.monkeypatch = monkeypatch
        self.capsys = capsys
        self.oauth = oauth

    def __call__(self, *args: str, **overrides: str | None) -> Run:
        with self.monkeypatch.context() as patch, captured_logs() as logs:
            for name, value in {**self.env, **overrides}.items():
                if value is None:
                    patch.delenv(name, raising=False)
                else:
                    patch.setenv(name, value)
            reset_settings()
            code = main(["gcal", *args])
        reset_settings()
        out, err = self.capsys.readouterr()
        check_output(self.oauth, out + err + logs.text)
        return Run(code, out, err)


@pytest.fixture
def env(pg_url: str, oauth: GoogleOAuthServer, tmp_path: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": pg_url,
        "NEXUS_HOME": str(tmp_path / ".nexus"),
        "NEXUS_TOKEN_ENCRYPTION_KEY": OLD_KEY,
        "GOOGLE_CLIENT_ID": oauth.client_id,
        "GOOGLE_CLIENT_SECRET": oauth.client_secret,
        "GOOGLE_TOKEN_URI": oauth.token_uri,
        "GOOGLE_AUTH_URI": oauth.auth_uri,
        "POWERTOOLS_LOG_LEVEL": "WARNING",  # what `nexus` sets; here restored after each command
        "BROWSER": "false",  # never a real browser, even if the code tried
    }


@pytest.fixture
def nexus(
    function_env: pytest.MonkeyPatch,
    env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    oauth: GoogleOAuthServer,
) -> Nexus:
    return Nexus(env, function_env, capsys, oauth)


def process_env(env: dict[str, str], **overrides: str | None) -> dict[str, str]:
    """The environment for the real console script: ours, minus anything of the caller's."""
    merged = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("NEXUS_", "SUPABASE_", "GOOGLE_", "OPENAI_", "POWERTOOLS_", "OAUTHLIB_"))
        and name != "DATABASE_URL"
    }
    merged.update(env)
    merged.pop("POWERTOOLS_LOG_LEVEL")
    for name, value in overrides.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


def stored(admin: psycopg.Connection[Any], key: str = "google_oauth_token") -> tuple[dict[str, Any], str]:
    found = admin.execute(
        "select value, value::text as text from system_config where key = %s", (key,)
    ).fetchone()
    assert found is not None
    return dict(found["value"]), str(found["text"])


def write_token(
    tmp_path: Path, oauth: GoogleOAuthServer, minutes_left: int | None
) -> tuple[Path, dict[str, Any]]:
    if minutes_left is None:
        info = authorized_user_info(oauth)
    else:
        expiry = (datetime.now(UTC) + timedelta(minutes=minutes_left)).isoformat().replace("+00:00", "Z")
        info = authorized_user_info(oauth, access_token=oauth.issue_access_token(), expiry=expiry)
    path = tmp_path / "authorized_user.json"
    path.write_text(json.dumps(info))
    return path, info


def test_init_signs_in_through_the_browser_flow_and_stores_the_token(
    nexus: Nexus,
    env: dict[str, str],
    tmp_path: Path,
    oauth: GoogleOAuthServer,
    admin: psycopg.Connection[Any],
) -> None:
    """The real console script in a subprocess; the scripted browser reads the address it prints."""
    with subprocess.Popen(
        [str(NEXUS), "gcal", "init", "--no-browser"],
        cwd=tmp_path,
        env=process_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            printed = []
            for line in process.stdout:  # the address comes first; then the command waits for the browser
                printed.append(line)
                if line.startswith("http"):
                    break
            url = printed[-1].strip() if printed else ""
            assert url.startswith(oauth.auth_uri + "?"), "".join(printed)
            status, page = follow_sign_in(url)  # Google redirects the browser back to the loopback server
            rest, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:  # the test failed before the command finished
                process.kill()
                process.communicate()
    check_output(oauth, "".join(printed) + rest + err)
    assert status == 200 and "you can close this tab" in page
    assert process.returncode == 0, err
    assert "stored the Google token for account 'default'" in rest

    (asked,) = oauth.authorizations
    assert asked["access_type"] == "offline" and asked["prompt"] == "consent"
    assert asked["code_challenge_method"] == "S256" and asked["scope"] == CALENDAR_SCOPE
    assert asked["redirect_uri"].startswith("http://127.0.0.1:")
    assert oauth.code_exchanges == 1
    value, text = stored(admin)
    assert value["status"] == "ok" and value["scopes"] == [CALENDAR_SCOPE]
    assert datetime.fromisoformat(value["expiry"]) > datetime.now(UTC) + timedelta(minutes=55)
    assert not any(secret in text for secret in oauth.issued_secrets())

    fresh = nexus("refresh")
    assert fresh.code == 0 and "no refresh needed" in fresh.out
    forced = nexus("refresh", "--force")
    assert forced.code == 0 and "default: ok: Refreshed; valid until" in forced.out
    assert oauth.refresh_calls == 1


def test_import_status_refresh_and_force(
    nexus: Nexus, oauth: GoogleOAuthServer, tmp_path: Path, admin: psycopg.Connection[Any]
) -> None:
    path, info = write_token(tmp_path, oauth, minutes_left=-3)
    imported = nexus("import", str(path))
    assert imported.code == 0 and "imported the Google token for account 'default'" in imported.out
    _, text = stored(admin)
    assert info["token"] not in text and info["refresh_token"] not in text

    refreshed = nexus("refresh")
    assert refreshed.code == 0 and "Refreshed" in refreshed.out
    assert oauth.refresh_calls == 1
    assert nexus("refresh", "--account", "default").code == 0
    assert oauth.refresh_calls == 1
    assert nexus("refresh", "--force", "--account", "default").code == 0
    assert oauth.refresh_calls == 2

    status = nexus("status")
    assert status.code == 0
    assert (
        "status       ok" in status.out
        and CALENDAR_SCOPE in status.out
        and "current (first key)" in status.out
    )
    (shown,) = json.loads(nexus("status", "--json").out)
    assert shown["status"] == "ok" and shown["client_id"] == oauth.client_id and shown["key"] == "current"


def test_key_rotation_reencrypts_and_old_rows_stay_readable_meanwhile(
    nexus: Nexus, oauth: GoogleOAuthServer, tmp_path: Path, admin: psycopg.Connection[Any]
) -> None:
    path, _ = write_token(tmp_path, oauth, minutes_left=50)
    assert nexus("import", str(path)).code == 0
    new_key = nexus("new-key").out.strip()
    before, _ = stored(admin)

    both = f"{new_key},{OLD_KEY}"
    waiting = nexus("status", NEXUS_TOKEN_ENCRYPTION_KEY=both)
    assert waiting.code == 0 and "an older key; run 'nexus gcal rotate-key'" in waiting.out
    rotated = nexus("rotate-key", NEXUS_TOKEN_ENCRYPTION_KEY=both)
    assert rotated.code == 0 and "re-encrypted 1 token(s)" in rotated.out
    after, _ = stored(admin)
    assert after["secrets"] != before["secrets"]
    assert {k: v for k, v in after.items() if k != "secrets"} == {
        k: v for k, v in before.items() if k != "secrets"
    }

    assert nexus("status", NEXUS_TOKEN_ENCRYPTION_KEY=new_key).code == 0
    assert nexus("refresh", "--force", NEXUS_TOKEN_ENCRYPTION_KEY=new_key).code == 0
    old_only = nexus("status", NEXUS_TOKEN_ENCRYPTION_KEY=OLD_KEY)
    assert old_only.code == 1 and "no key in NEXUS_TOKEN_ENCRYPTION_KEY opens it" in old_only.out
    refused = nexus("refresh", NEXUS_TOKEN_ENCRYPTION_KEY=OLD_KEY)
    assert refused.code == 1 and "cannot be decrypted with NEXUS_TOKEN_ENCRYPTION_KEY" in refused.out


def test_revoked_token_asks_for_sign_in_and_does_not_call_again(
    nexus: Nexus, oauth: GoogleOAuthServer, tmp_path: Path
) -> None:
    path, _ = write_token(tmp_path, oauth, minutes_left=None)
    assert nexus("import", str(path), "--account", "work").code == 0
    oauth.revoke_all()

    first = nexus("refresh", "--account", "work")
    assert first.code == 1
    assert "work: reauth_required: Google refused the stored refresh token for account 'work'" in first.out
    assert "run 'nexus gcal init --account work'" in first.out
    again = nexus("refresh")
    assert again.code == 1 and "reauth_required" in again.out
    assert oauth.refresh_calls == 1
    status = nexus("status")
    assert status.code == 1 and "status       reauth_required" in status.out


@pytest.mark.parametrize(
    ("args", "overrides", "message"),
    [
        (
            ("status",),
            {"NEXUS_TOKEN_ENCRYPTION_KEY": None},
            "nexus: NEXUS_TOKEN_ENCRYPTION_KEY is not set; create a key with 'nexus gcal new-key'.",
        ),
        (
            ("refresh",),
            {"NEXUS_TOKEN_ENCRYPTION_KEY": "not-a-fernet-key"},
            "nexus: NEXUS_TOKEN_ENCRYPTION_KEY is invalid: key 1 is not a Fernet key "
            "(32 url-safe base64-encoded bytes; create one with 'nexus gcal new-key').",
        ),
        (("init", "--no-browser"), {"GOOGLE_CLIENT_ID": None}, "nexus: GOOGLE_CLIENT_ID is not set."),
        (("init", "--no-browser"), {"GOOGLE_CLIENT_SECRET": None}, "nexus: GOOGLE_CLIENT_SECRET is not set."),
        (
            ("refresh",),
            {},
            "nexus: No Google token is stored; run 'nexus gcal init' or 'nexus gcal import FILE'.",
        ),
        (
            ("status",),
            {},
            "nexus: No Google token is stored; run 'nexus gcal init' or 'nexus gcal import FILE'.",
        ),
        (("import", "missing.json"), {}, "nexus: Cannot read missing.json: No such file or directory."),
    ],
)
def test_each_problem_is_one_sentence_and_a_failed_exit(
    nexus: Nexus, args: tuple[str, ...], overrides: dict[str, str | None], message: str
) -> None:
    run = nexus(*args, **overrides)
    assert run.code == 1
    assert run.err.strip() == message
    assert "not-a-fernet-key" not in run.out + run.err


def test_console_script_reports_a_problem_in_one_line_without_a_traceback(
    env: dict[str, str], tmp_path: Path, oauth: GoogleOAuthServer
) -> None:
    """The installed `nexus` script itself: exit status 1 and one sentence on stderr."""
    done = subprocess.run(
        [str(NEXUS), "gcal", "refresh"],
        cwd=tmp_path,
        env=process_env(env, NEXUS_TOKEN_ENCRYPTION_KEY="not-a-fernet-key"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "nexus: NEXUS_TOKEN_ENCRYPTION_KEY is invalid: key 1 is not a Fernet key "
        "(32 url-safe base64-encoded bytes; create one with 'nexus gcal new-key')."
    ]
    assert done.stdout == ""
    check_output(oauth, done.stderr)
