"""The first sign-in with Google: the installed-app OAuth flow behind `nexus gcal init`.

google-auth-oauthlib's `InstalledAppFlow` with a loopback redirect (http://127.0.0.1:<port>/),
offline access and the consent prompt, so Google grants a refresh token; the token is then stored
with `shared.gcal.tokens.save_credentials`. Endpoints: GOOGLE_AUTH_URI and GOOGLE_TOKEN_URI.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import urlsplit

from shared.config import Settings, get_settings
from shared.errors import NexusError
from shared.gcal.crypto import TokenCipher
from shared.gcal.store import GoogleTokenStore
from shared.gcal.tokens import (
    CALENDAR_SCOPES,
    DEFAULT_ACCOUNT,
    TokenState,
    checked_endpoint,
    save_credentials,
    token_key,
)


def run_initial_oauth_flow(
    account: str = DEFAULT_ACCOUNT,
    *,
    open_browser: bool = True,
    scopes: Sequence[str] = CALENDAR_SCOPES,
    port: int = 0,
    timeout_s: int = 300,
    settings: Settings | None = None,
    store: GoogleTokenStore | None = None,
) -> TokenState:
    """Sign in with Google (installed-app flow, loopback redirect) and store the token.

    Asks for offline access with the consent prompt, so Google grants a refresh token. Prints the
    authorisation URL; with `open_browser` also opens it. Waits up to `timeout_s` for the browser
    to come back to http://127.0.0.1:<port>/. Endpoints: GOOGLE_AUTH_URI and GOOGLE_TOKEN_URI.
    """
    settings = settings or get_settings()
    TokenCipher.from_setting(settings.token_encryption_key)  # fail before the browser, not after
    token_key(account)
    client_id = settings.require("google_client_id")
    client_secret = settings.require("google_client_secret")
    auth_uri = checked_endpoint(settings.google_auth_uri, "GOOGLE_AUTH_URI")
    token_uri = checked_endpoint(settings.google_token_uri, "GOOGLE_TOKEN_URI")
    _allow_loopback_http(token_uri)
    from google_auth_oauthlib.flow import InstalledAppFlow

    client = {
        "client_id": client_id,
        "client_secret": client_secret,
        "auth_uri": auth_uri,
        "token_uri": token_uri,
    }
    flow = InstalledAppFlow.from_client_config(
        {"installed": {**client, "redirect_uris": ["http://127.0.0.1"]}}, scopes
    )
    with _oauth_errors():
        credentials = flow.run_local_server(
            host="127.0.0.1",
            port=port,
            open_browser=open_browser,
            authorization_prompt_message="Open this address in a browser on this machine to sign in:\n{url}",
            success_message="Nexus Workers has the Google Calendar token; you can close this tab.",
            timeout_seconds=timeout_s,
            access_type="offline",
            prompt="consent",
        )
    return save_credentials(credentials, account, settings=settings, store=store)


@contextmanager
def _oauth_errors() -> Iterator[None]:
    """Turn the sign-in flow's failures into one sentence each (no tokens, no traceback)."""
    import requests
    from google_auth_oauthlib.flow import WSGITimeoutError
    from oauthlib.oauth2.rfc6749.errors import OAuth2Error

    try:
        yield
    except WSGITimeoutError:
        raise NexusError(
            "No answer came back from the browser in time; run 'nexus gcal init' again."
        ) from None
    except OAuth2Error as exc:
        raise NexusError(f"Google refused the sign-in ({exc.error}); run 'nexus gcal init' again.") from None
    except requests.RequestException as exc:
        raise NexusError(
            f"Google's token endpoint could not be reached ({type(exc).__name__}); check GOOGLE_TOKEN_URI."
        ) from None
    except OSError as exc:  # after requests' errors, which are OSErrors too
        raise NexusError(
            f"Cannot listen on 127.0.0.1 for the sign-in ({exc.strerror}); pick another --port."
        ) from None
    except Warning:  # oauthlib raises a Warning when fewer scopes were granted than asked for
        raise NexusError(
            "Google granted other permissions than asked for; "
            "run 'nexus gcal init' again and allow Calendar access."
        ) from None


def _allow_loopback_http(token_uri: str) -> None:
    """oauthlib refuses plain http; a token endpoint on this machine (a local stand-in) is fine."""
    import os

    if urlsplit(token_uri).scheme == "http":
        os.environ.setdefault("OAUTHLIB_INSECURE_TRANSPORT", "1")
