"""A local Google OAuth 2.0 authorization + token server for tests, over real HTTP on 127.0.0.1.

- `GET /auth`: the authorization endpoint. Checks the request as Google does for an installed
  app (known client_id, loopback redirect_uri, response_type=code, a scope, a PKCE S256
  challenge), records it, and redirects the browser to redirect_uri with `code`, `state`, `scope`.
- `POST /token`: the token endpoint. `authorization_code` (checks the PKCE verifier and the
  redirect_uri) and `refresh_token` grants; the client authenticates in the body or with HTTP
  Basic. A refresh token it does not know, or one revoked with `revoke_all()`, gets
  `400 {"error": "invalid_grant"}` as Google answers.

Faults for refresh grants, taken in order: `fail_next(n, status)` answers 5xx, `delay_next(n, s)`
answers only after `s` seconds (the client times out first), `hold_refreshes(event)` keeps every
refresh waiting until the test sets `event`; `echo_secrets` makes error descriptions repeat the
request (refresh token, client secret), as a careless proxy might. Counts: `refresh_calls`, `code_exchanges`;
`authorizations` keeps each authorization request's parameters. `issued_secrets()` is every
secret it knows (client secret, access and refresh tokens), so tests can check none leaks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from tests.support.local_http import AppServer, LocalHttpServer

CLIENT_ID = "nexus-test-client.apps.googleusercontent.com"
CLIENT_SECRET = "GOCSPX-test-client-secret-0123456789"
CALENDAR_SCOPE = "https://www.googleapis.com/auth/calendar"


@dataclass(frozen=True)
class _Code:
    client_id: str
    redirect_uri: str
    scope: str
    challenge: str
    offline: bool


@dataclass(frozen=True)
class _Fault:
    status: int | None = None
    delay_s: float = 0.0


class GoogleOAuthServer(LocalHttpServer):
    """Serves `/auth` and `/token` from a thread; use as a context manager."""

    thread_name = "google-oauth-stand-in"

    def __init__(
        self, client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET, expires_in: int = 3599
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in = expires_in
        self.refresh_calls = 0
        self.code_exchanges = 0
        self.authorizations: list[dict[str, str]] = []
        self.echo_secrets = False  # error descriptions repeat what was sent, as a careless proxy might
        self._refresh_tokens: dict[str, str] = {}  # refresh token -> granted scope
        self._revoked: set[str] = set()
        self._access_tokens: set[str] = set()
        self._codes: dict[str, _Code] = {}
        self._faults: list[_Fault] = []
        self._hold: threading.Event | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    # --- lifecycle ---

    @property
    def base_url(self) -> str:
        return self.url

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    @property
    def auth_uri(self) -> str:
        return f"{self.base_url}/auth"

    def _before_stop(self) -> None:
        self._stopping.set()
        if self._hold is not None:
            self._hold.set()

    # --- arranging ---

    def issue_refresh_token(self, scope: str = CALENDAR_SCOPE) -> str:
        """A refresh token this server accepts, as if a user had signed in earlier."""
        token = f"1//test-refresh-{secrets.token_urlsafe(24)}"
        with self._lock:
            self._refresh_tokens[token] = scope
        return token

    def issue_access_token(self) -> str:
        token = f"ya29.test-access-{secrets.token_urlsafe(24)}"
        with self._lock:
            self._access_tokens.add(token)
        return token

    def revoke_all(self) -> None:
        """Every refresh token issued so far now gets invalid_grant (the user revoked access)."""
        with self._lock:
            self._revoked.update(self._refresh_tokens)

    def fail_next(self, count: int, status: int = 503) -> None:
        with self._lock:
            self._faults.extend(_Fault(status=status) for _ in range(count))

    def delay_next(self, count: int, delay_s: float) -> None:
        with self._lock:
            self._faults.extend(_Fault(delay_s=delay_s) for _ in range(count))

    def hold_refreshes(self, release: threading.Event) -> None:
        """Keep each refresh answer until `release` is set (or the server stops)."""
        self._hold = release

    def issued_secrets(self) -> set[str]:
        with self._lock:
            return {self.client_secret, *self._refresh_tokens, *self._access_tokens}

    # --- answering ---

    def authorize(self, query: Mapping[str, str]) -> tuple[int, dict[str, str], bytes]:
        redirect_uri = query.get("redirect_uri", "")
        problem = self._authorization_problem(query, redirect_uri)
        if problem:
            return 400, {"Content-Type": "text/plain"}, problem.encode()
        code = f"test-code-{secrets.token_urlsafe(16)}"
        with self._lock:
            self.authorizations.append(dict(query))
            self._codes[code] = _Code(
                client_id=query["client_id"],
                redirect_uri=redirect_uri,
                scope=query["scope"],
                challenge=query["code_challenge"],
                offline=query.get("access_type") == "offline",
            )
        params = {"code": code, "scope": query["scope"]}
        if "state" in query:
            params["state"] = query["state"]
        return 302, {"Location": f"{redirect_uri}?{urlencode(params)}"}, b""

    def _authorization_problem(self, query: Mapping[str, str], redirect_uri: str) -> str | None:
        host = urlsplit(redirect_uri).hostname
        checks = [
            (query.get("client_id") == self.client_id, "unknown client_id"),
            (query.get("response_type") == "code", "response_type must be code"),
            (host in ("127.0.0.1", "localhost"), "redirect_uri must be a loopback address"),
            (bool(query.get("scope")), "scope is missing"),
            (query.get("code_challenge_method") == "S256", "PKCE with S256 is required"),
            (bool(query.get("code_challenge")), "code_challenge is missing"),
        ]
        return next((message for passed, message in checks if not passed), None)

    def token(self, form: Mapping[str, str], basic: tuple[str, str] | None) -> tuple[int, dict[str, Any]]:
        client_id, client_secret = basic or (form.get("client_id", ""), form.get("client_secret", ""))
        if (client_id, client_secret) != (self.client_id, self.client_secret):
            return 401, {"error": "invalid_client", "error_description": "The OAuth client was not found."}
        grant = form.get("grant_type")
        if grant == "refresh_token":
            status, body = self._refresh(form.get("refresh_token", ""))
            if status != 200 and self.echo_secrets:
                body["error_description"] = f"{body['error_description']} (sent {sorted(form.items())})"
            return status, body
        if grant == "authorization_code":
            return self._exchange(form)
        return 400, {"error": "unsupported_grant_type"}

    def _refresh(self, refresh_token: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.refresh_calls += 1
            fault = self._faults.pop(0) if self._faults else None
            hold = self._hold
        if hold is not None:
            hold.wait(timeout=30)
        if fault is not None and fault.delay_s:
            self._stopping.wait(fault.delay_s)
        if fault is not None and fault.status:
            error = "internal_failure" if fault.status >= 500 else "invalid_request"
            return fault.status, {"error": error, "error_description": "Try again later."}
        with self._lock:
            scope = self._refresh_tokens.get(refresh_token)
            revoked = refresh_token in self._revoked
        if scope is None or revoked:
            return 400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
        return 200, self._tokens(scope, refresh_token=None)

    def _exchange(self, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.code_exchanges += 1
            code = self._codes.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "")
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if code is None or code.redirect_uri != form.get("redirect_uri") or digest != code.challenge:
            return 400, {"error": "invalid_grant", "error_description": "Malformed auth code."}
        refresh_token = self.issue_refresh_token(code.scope) if code.offline else None
        return 200, self._tokens(code.scope, refresh_token=refresh_token)

    def _tokens(self, scope: str, refresh_token: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": self.issue_access_token(),
            "expires_in": self.expires_in,
            "scope": scope,
            "token_type": "Bearer",
        }
        if refresh_token:
            body["refresh_token"] = refresh_token
        return body


class _Handler(BaseHTTPRequestHandler):
    server: AppServer

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != "/auth":
            self._send(404, {"Content-Type": "text/plain"}, b"not found")
            return
        query = {name: values[0] for name, values in parse_qs(parts.query).items()}
        self._send(*self.server.app.authorize(query))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode()
        if urlsplit(self.path).path != "/token":
            self._send(404, {"Content-Type": "text/plain"}, b"not found")
            return
        form = {name: values[0] for name, values in parse_qs(raw).items()}
        status, body = self.server.app.token(form, _basic_credentials(self.headers.get("Authorization")))
        self._send(status, {"Content-Type": "application/json"}, json.dumps(body).encode())

    def _send(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up (a timeout test); nothing to answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    from urllib.parse import unquote_plus

    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    return unquote_plus(user), unquote_plus(password)


def follow_sign_in(authorization_url: str, timeout_s: float = 10.0) -> tuple[int, str]:
    """A scripted browser: open the authorization URL and follow the redirect back to the
    loopback redirect URI; returns the final status and page text."""
    with urllib.request.urlopen(authorization_url, timeout=timeout_s) as response:  # follows the 302
        return int(response.status), response.read().decode()


def authorized_user_info(
    server: GoogleOAuthServer,
    *,
    access_token: str | None = None,
    expiry: str | None = None,
    with_client: bool = True,
    scopes: list[str] | None = None,
) -> dict[str, Any]:
    """An `authorized_user` JSON document as gcloud / google-auth write them, with a refresh
    token `server` accepts."""
    info: dict[str, Any] = {"type": "authorized_user", "refresh_token": server.issue_refresh_token()}
    if with_client:
        info.update(client_id=server.client_id, client_secret=server.client_secret)
    if access_token is not None:
        info["token"] = access_token
    if expiry is not None:
        info["expiry"] = expiry
    if scopes is not None:
        info["scopes"] = scopes
    return info


GoogleOAuthServer.handler = _Handler
