"""The operator page (`nexus dashboard`), served on a free port over a database of its own and opened
in a real headless Chromium (Debian's chromium + chromium-driver, see tests/support/browser.py):

- what the page counts is what `nexus status --json` counts, and `/api/status` answers the same JSON;
- a failed item's requeue button makes it pending (attempts 0) and the page says so; so does
  "requeue all";
- a cross-site POST, a request for another Host on loopback (DNS rebinding), and a request off
  loopback without NEXUS_DASHBOARD_TOKEN are refused; `nexus dashboard --host 0.0.0.0` without the
  token does not start, in one sentence;
- Google tokens show their state and never a secret; an unreachable database is one sentence.

Screenshots are kept under tests/artifacts/ (or NEXUS_TEST_ARTIFACTS).
"""

from __future__ import annotations

import html
import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from shared.cli.main import main
from shared.config import Settings, reset_settings
from shared.gcal import generate_key
from shared.gcal.store import PostgresTokenStore
from shared.local.dashboard import DashboardError, DashboardServer, duration, is_loopback, start_dashboard
from shared.store.database import ConnectionHolder
from shared.store.postgres import PostgresStore
from tests.conftest import ROOT
from tests.support.browser import artifacts_dir, full_page_screenshot, headless_chromium
from tests.support.operator_state import OperatorState, arrange_operator_state, store_google_token

TOKEN = "operator-page-token-3f9c2a71d8e4b6"
KEY = generate_key()
WAIT_S = 20
COUNTED = ("pending", "processing", "done", "failed")


@dataclass
class Served:
    """A page served over a database arranged the way an operator meets it."""

    url: str
    db_url: str
    state: OperatorState
    server: DashboardServer


def serve(db_url: str, host: str = "127.0.0.1", port: int = 0, **settings: Any) -> DashboardServer:
    """The page on `port` (0: a free one) of `host`, over the database at `db_url` (stores of its own)."""
    options = Settings(database_url=db_url, token_encryption_key=KEY, **settings)
    store, tokens = PostgresStore(ConnectionHolder(db_url)), PostgresTokenStore(ConnectionHolder(db_url))
    return start_dashboard(options, host, port, store=store, token_store=tokens, refresh_s=600)


@pytest.fixture
def served(db: psycopg.Connection[Any], db_url: str, db_store: PostgresStore) -> Iterator[Served]:
    state = arrange_operator_state(db, db_store, done_items=12)
    server = serve(db_url)
    try:
        yield Served(server.url, db_url, state, server)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with headless_chromium() as driver:
        yield driver


@pytest.fixture
def nexus_status(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """`nexus status --json` against a database, as the command prints it."""

    def run(db_url: str) -> dict[str, Any]:
        monkeypatch.setenv("DATABASE_URL", db_url)
        reset_settings()
        capsys.readouterr()
        try:
            assert main(["status", "--json"]) == 0
        finally:
            reset_settings()
        return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]

    return run


def page_counts(browser: Any) -> dict[str, int]:
    return {name: int(browser.find_element(By.ID, f"count-{name}").text) for name in COUNTED}


def item_row(db: psycopg.Connection[Any], item: uuid.UUID) -> dict[str, Any]:
    row = db.execute(
        "select status, attempts, last_error, next_attempt_at from knowledge_items where id = %s", (item,)
    ).fetchone()
    assert row is not None
    return dict(row)


def failed_now(db: psycopg.Connection[Any]) -> int:
    row = db.execute("select count(*) as n from knowledge_items where status = 'failed'").fetchone()
    assert row is not None
    return int(row["n"])


def submit(browser: Any, css: str, notice: str) -> str:
    """Click the button at `css` and wait for the page the POST redirects to, told by its notice
    starting with `notice` (the page before may hold an older one); return the notice."""
    browser.find_element(By.CSS_SELECTOR, css).click()

    def said(driver: Any) -> str | None:
        text = str(driver.find_element(By.ID, "notice").text)
        return text if text.startswith(notice) else None

    # while the page changes, the driver may answer with errors about the document it is leaving
    return str(WebDriverWait(browser, WAIT_S, ignored_exceptions=(WebDriverException,)).until(said))


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the page has no requeue form"
    return match[1]


# -- in the browser ------------------------------------------------------------------------------


def test_the_page_counts_what_nexus_status_counts_and_requeues_failed_items(
    served: Served, browser: Any, db: psycopg.Connection[Any], nexus_status: Any
) -> None:
    browser.get(served.url)
    status = nexus_status(served.db_url)
    expected = {name: int(status["counts"].get(name, 0)) for name in COUNTED}
    assert page_counts(browser) == expected == {"pending": 6, "processing": 1, "done": 12, "failed": 3}
    assert browser.find_element(By.ID, "oldest-pending").text == duration(
        status["oldest_pending_age_seconds"]
    )
    assert browser.find_element(By.ID, "oldest-pending").text.startswith("2 h 1")  # the intake form's age
    assert browser.find_element(By.ID, "chunks-awaiting-index").text == str(status["chunks_awaiting_index"])
    for item in served.state.failed:
        error = item_row(db, item)["last_error"]
        assert browser.find_element(By.CSS_SELECTOR, f"#failed-{item} .error").text == error
    full_page_screenshot(browser, artifacts_dir() / "dashboard-overview.png")

    first, *rest = served.state.failed
    said = submit(browser, f"#failed-{first} button", f"Requeued item {first}.")
    assert said.endswith("The next sweep (or nexus process --all) claims it.")
    assert item_row(db, first) == {
        "status": "pending",
        "attempts": 0,
        "last_error": None,
        "next_attempt_at": None,
    }
    assert page_counts(browser) == {**expected, "pending": 7, "failed": 2}
    assert not browser.find_elements(By.ID, f"failed-{first}")
    full_page_screenshot(browser, artifacts_dir() / "dashboard-requeued-one.png")

    said = submit(browser, "#requeue-all button", "Requeued 2 failed item(s).")
    assert said.endswith("claims them.")
    assert [item_row(db, item)["status"] for item in rest] == ["pending", "pending"]
    assert item_row(db, served.state.processing)["status"] == "processing"  # not failed: untouched
    assert page_counts(browser) == {**expected, "pending": 9, "failed": 0}
    assert browser.find_element(By.CSS_SELECTOR, "#failures .empty").text == "No failed item."
    after = nexus_status(served.db_url)
    assert page_counts(browser) == {name: int(after["counts"].get(name, 0)) for name in COUNTED}


def test_a_browser_off_loopback_signs_in_once_with_the_token(
    db: psycopg.Connection[Any], db_url: str, db_store: PostgresStore, browser: Any
) -> None:
    arrange_operator_state(db, db_store, done_items=3)
    server = serve(db_url, non_loopback_address(), dashboard_token=TOKEN)
    try:
        browser.delete_all_cookies()
        browser.get(server.url)
        assert "needs NEXUS_DASHBOARD_TOKEN" in browser.find_element(By.ID, "sentence").text
        assert not browser.find_elements(By.ID, "count-done")
        browser.get(f"{server.url}?token={TOKEN}")
        assert browser.current_url == server.url  # the token left the address bar
        assert page_counts(browser)["done"] == 3
        assert TOKEN not in browser.page_source
        browser.get(server.url)  # the cookie carries on
        assert page_counts(browser)["done"] == 3
    finally:
        server.stop()


# -- over HTTP -----------------------------------------------------------------------------------


def test_api_status_answers_what_nexus_status_json_prints(served: Served, nexus_status: Any) -> None:
    answer = httpx.get(f"{served.url}api/status", timeout=WAIT_S)
    printed = nexus_status(served.db_url)
    assert (answer.status_code, answer.headers["content-type"]) == (200, "application/json")
    served_status = answer.json()
    assert set(served_status) == set(printed)
    # everything but the pending item's age in whole seconds, which moves between the two reads
    assert (
        abs(served_status.pop("oldest_pending_age_seconds") - printed.pop("oldest_pending_age_seconds")) <= 2
    )
    assert served_status == printed


def test_a_cross_site_post_requeues_nothing(served: Served, db: psycopg.Connection[Any]) -> None:
    page = httpx.get(served.url, timeout=WAIT_S)
    csrf, origin = csrf_of(page.text), served.url.rstrip("/")
    attempts = [
        ({"Origin": "https://attacker.example"}, {"csrf": csrf}),  # another site, even with the value
        ({"Referer": "https://attacker.example/page"}, {"csrf": csrf}),
        ({}, {"csrf": csrf}),  # neither Origin nor Referer
        ({"Origin": origin}, {}),  # this site's origin without the form's value
        ({"Origin": origin}, {"csrf": "guessed"}),
    ]
    for headers, form in attempts:
        refused = httpx.post(f"{served.url}requeue/all", headers=headers, data=form, timeout=WAIT_S)
        assert refused.status_code == 403, (headers, form)
        assert failed_now(db) == 3
    one = str(served.state.failed[0])
    refused = httpx.post(
        f"{served.url}requeue",
        headers={"Origin": "null"},
        data={"csrf": csrf, "item_id": one},
        timeout=WAIT_S,
    )
    assert refused.status_code == 403 and failed_now(db) == 3
    accepted = httpx.post(
        f"{served.url}requeue/all", headers={"Origin": origin}, data={"csrf": csrf}, timeout=WAIT_S
    )
    assert (accepted.status_code, accepted.headers["location"]) == (303, "/")
    assert failed_now(db) == 0


def test_on_loopback_only_a_loopback_host_is_answered(served: Served) -> None:
    port = served.url.rsplit(":", 1)[1].rstrip("/")
    rebound = httpx.get(served.url, headers={"Host": f"attacker.example:{port}"}, timeout=WAIT_S)
    assert rebound.status_code == 421 and "Traceback" not in rebound.text
    assert httpx.get(served.url, headers={"Host": f"localhost:{port}"}, timeout=WAIT_S).status_code == 200


def non_loopback_address() -> str:
    """This machine's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the outgoing interface
        address = str(probe.getsockname()[0])
    assert not is_loopback(address), f"this machine has no address beyond loopback ({address})"
    return address


def test_off_loopback_every_request_needs_the_token(db_url: str) -> None:
    server = serve(db_url, non_loopback_address(), dashboard_token=TOKEN)
    try:
        url, bearer = server.url, {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(timeout=WAIT_S) as http:
            for path in ("", "api/status"):
                refused = http.get(url + path)
                assert refused.status_code == 401 and TOKEN not in refused.text
                assert refused.headers["www-authenticate"].startswith("Bearer")
                assert (
                    http.get(url + path, headers={"Authorization": "Bearer not-the-token"}).status_code == 401
                )
                assert http.get(url + path, headers=bearer).status_code == 200
            assert http.get(f"{url}?token=not-the-token").status_code == 401
            signed_in = http.get(f"{url}?token={TOKEN}")
            assert (signed_in.status_code, signed_in.headers["location"]) == (303, "/")
            cookie = signed_in.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
            assert http.get(url).status_code == 200  # the client kept the cookie
            assert http.post(f"{url}requeue/all", headers=bearer).status_code == 303  # a script's POST
    finally:
        server.stop()


def test_google_tokens_show_their_state_and_no_secret(served: Served, db: psycopg.Connection[Any]) -> None:
    secrets = {
        "token": "ya29.access-SECRET-4b1d9e",
        "refresh_token": "1//refresh-SECRET-77c0aa",
        "client_secret": "GOCSPX-client-SECRET-e91f",
    }
    settings = Settings(database_url=served.db_url, token_encryption_key=KEY)
    tokens = PostgresTokenStore(ConnectionHolder(served.db_url))
    try:
        store_google_token(settings, tokens, secrets)
    finally:
        tokens.close()
    row = db.execute("select value from system_config where key = 'google_oauth_token'").fetchone()
    assert row is not None
    page = httpx.get(served.url, timeout=WAIT_S).text
    google = page[page.index('id="google"') :]
    assert "<td>default</td>" in google and ">ok<" in google and ">current<" in google
    for secret in [*secrets.values(), row["value"]["secrets"]]:
        assert secret not in page


def test_an_unreachable_database_is_one_sentence() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    server = serve(f"postgresql://nexus@127.0.0.1:{port}/nexus")
    try:
        page = httpx.get(server.url, timeout=WAIT_S)
        assert page.status_code == 503 and "Traceback" not in page.text
        sentence = "The database could not be reached; check DATABASE_URL."
        assert f'<p id="sentence">{sentence}</p>' in page.text
        api = httpx.get(f"{server.url}api/status", timeout=WAIT_S)
        assert (api.status_code, api.json()) == (503, {"error": sentence})
    finally:
        server.stop()


def test_a_role_that_may_not_run_the_page_is_one_sentence(db: psycopg.Connection[Any], db_url: str) -> None:
    db.execute("alter role nexus_process login")  # the process function's role: status, but not the page
    try:
        server = serve(make_conninfo(db_url, user="nexus_process"))
        try:
            page = httpx.get(server.url, timeout=WAIT_S)
        finally:
            server.stop()
    finally:
        db.execute("alter role nexus_process nologin")
    assert page.status_code == 503 and "Traceback" not in page.text
    assert "may not run the operator page's SQL functions" in html.unescape(page.text)


def test_a_taken_port_is_one_sentence(db_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sentence = (
            f"The operator page cannot listen on 127.0.0.1:{port} (Address already in use); pass --port N"
        )
        with pytest.raises(DashboardError, match=re.escape(sentence)):
            serve(db_url, port=port)


# -- the command ---------------------------------------------------------------------------------


def command_env(**extra: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("NEXUS_", "SUPABASE_", "GOOGLE_", "OPENAI_")) and name != "DATABASE_URL"
    }
    return {**env, **extra}


@pytest.mark.parametrize(
    ("host", "token", "sentence"),
    [
        ("0.0.0.0", None, "Listening on 0.0.0.0 reaches beyond this machine; set NEXUS_DASHBOARD_TOKEN"),
        ("::", None, "Listening on :: reaches beyond this machine; set NEXUS_DASHBOARD_TOKEN"),
        ("0.0.0.0", "short", "NEXUS_DASHBOARD_TOKEN is too short; use at least 16 random characters"),
    ],
)
def test_nexus_dashboard_beyond_loopback_refuses_to_start_without_the_token(
    tmp_path: Any, host: str, token: str | None, sentence: str
) -> None:
    # the database is unreachable: the refusal comes before anything touches it
    env = command_env(
        DATABASE_URL="postgresql://nexus@127.0.0.1:9/nexus",
        **({"NEXUS_DASHBOARD_TOKEN": token} if token else {}),
    )
    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", "dashboard", "--host", host, "--port", "0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nexus: {sentence}"), done.stderr


def test_nexus_dashboard_serves_until_sigterm(
    db: psycopg.Connection[Any], db_url: str, tmp_path: Any
) -> None:
    db.execute("insert into clients (name) values ('solo')")
    with subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "dashboard", "--port", "0"],
        cwd=tmp_path,
        env=command_env(DATABASE_URL=db_url, PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            first = process.stdout.readline()  # once the server listens (or the command failed)
            match = re.match(
                r"nexus dashboard: (http://127\.0\.0\.1:\d+/) \(Ctrl-C stops it\)$", first.strip()
            )
            assert match, first + process.stdout.read()
            status = httpx.get(f"{match[1]}api/status", timeout=WAIT_S)
            assert status.status_code == 200 and status.json()["counts"] == {}
            process.send_signal(signal.SIGTERM)
            assert process.wait(WAIT_S) == 0
            assert process.stdout.read().strip() == "nexus dashboard: stopped"
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.20", False),
        ("example.com", False),
        ("localhost.attacker.example", False),
    ],
)
def test_which_hosts_are_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_page_ships_with_the_package() -> None:
    templates = ROOT / "shared" / "local" / "templates"
    assert {p.name for p in templates.glob("*.html")} == {"dashboard.html", "sentence.html"}
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"shared.local" = ["templates/*.html"]' in pyproject
