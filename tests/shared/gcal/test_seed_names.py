"""The seed's Google token functions, called as the seed's callers call them: no arguments but
the credentials, settings from the environment, the store those settings choose."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from google.oauth2.credentials import Credentials

import shared.gcal
from shared.config import reset_settings
from shared.gcal import (
    load_credentials_from_supabase,
    refresh_token_if_needed,
    run_initial_oauth_flow,
    save_credentials_to_supabase,
)
from shared.gcal.crypto import generate_key
from tests.support.google_oauth import GoogleOAuthServer


@pytest.fixture
def oauth() -> Iterator[GoogleOAuthServer]:
    with GoogleOAuthServer() as server:
        yield server


@pytest.fixture(autouse=True)
def environment(
    pg_url: str, oauth: GoogleOAuthServer, admin: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    admin.execute("delete from system_config where key like 'google_oauth_token%'")
    for name, value in {
        "DATABASE_URL": pg_url,
        "GOOGLE_CLIENT_ID": oauth.client_id,
        "GOOGLE_CLIENT_SECRET": oauth.client_secret,
        "GOOGLE_TOKEN_URI": oauth.token_uri,
        "NEXUS_TOKEN_ENCRYPTION_KEY": generate_key(),
    }.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    yield
    reset_settings()
    admin.execute("delete from system_config where key like 'google_oauth_token%'")


def test_nothing_stored_loads_as_none() -> None:
    assert load_credentials_from_supabase() is None


def test_saved_credentials_load_back_and_refresh(
    oauth: GoogleOAuthServer, admin: psycopg.Connection[Any]
) -> None:
    refresh_token = oauth.issue_refresh_token()
    save_credentials_to_supabase(Credentials(token=None, refresh_token=refresh_token))
    stored = admin.execute("select value::text as text from system_config where key = 'google_oauth_token'")
    assert refresh_token not in stored.fetchone()["text"]  # encrypted at rest

    loaded = load_credentials_from_supabase()
    assert loaded is not None and loaded.refresh_token == refresh_token

    assert refresh_token_if_needed() is True  # no access token yet: one refresh
    assert refresh_token_if_needed() is False  # now fresh
    assert oauth.refresh_calls == 1
    refreshed = load_credentials_from_supabase()
    assert refreshed is not None and refreshed.token and refreshed.valid


def test_the_sign_in_flow_keeps_the_seed_name_and_defaults() -> None:
    # The flow itself is driven end to end by tests/e2e/test_gcal_cli.py (`nexus gcal init`).
    from shared.gcal.signin import run_initial_oauth_flow as flow

    assert run_initial_oauth_flow is flow
    parameters = inspect.signature(run_initial_oauth_flow).parameters
    assert all(p.default is not inspect.Parameter.empty for p in parameters.values())
    assert set(shared.gcal.__all__) >= {
        "load_credentials_from_supabase",
        "save_credentials_to_supabase",
        "refresh_token_if_needed",
        "run_initial_oauth_flow",
    }
