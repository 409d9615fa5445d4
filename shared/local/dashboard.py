"""The operator page: `nexus dashboard`, and `nexus dev` beside its functions.

A Flask app, rendered on the server (`templates/dashboard.html`, no JavaScript): `/` shows what
`shared.local.overview` gathers, `/api/status` answers what `nexus status --json` prints, and two
POST forms requeue failed items (`/requeue`: one, `/requeue/all`: every one), each answered by a
303 back to `/` with how many were requeued.

Who may use it:

- **Loopback by default.** Bound to 127.0.0.1 (or another loopback address) it answers only
  requests whose `Host` names a loopback address or `localhost`, so a web page whose name
  resolves to 127.0.0.1 (DNS rebinding) cannot read it.
- **Elsewhere, `NEXUS_DASHBOARD_TOKEN`** (refused without it). When the token is set it is asked of
  every request, on loopback too: `Authorization: Bearer <token>` (scripts, curl), or a browser
  opens `/?token=<token>` once, which sets an HttpOnly, SameSite=Strict cookie (a keyed hash of
  the token, not the token) and redirects to `/` so the token leaves the address bar. Tokens are
  compared in constant time and never logged (the server logs no request lines).
- **No cross-site actions.** A POST needs the form's CSRF value and an `Origin` (or `Referer`) of
  this very host; a request with the bearer token needs neither (a browser never adds it on its
  own). The page may not be framed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from shared.errors import DatabaseUnavailable, NexusError
from shared.local.overview import gather_overview, status_json

__all__ = [
    "DashboardError",
    "DashboardServer",
    "check_binding",
    "create_app",
    "is_loopback",
    "run_dashboard",
    "start_dashboard",
]

TOKEN_VARIABLE = "NEXUS_DASHBOARD_TOKEN"
MIN_TOKEN_CHARS = 16
REFRESH_S = 30  # the page reloads itself this often (a meta refresh; no script)
COOKIE = "nexus_dashboard"
_COOKIE_CONTEXT = b"nexus dashboard session"
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class DashboardError(NexusError):
    """The operator page cannot start as asked; the message says what to change."""


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1); `0.0.0.0` and `::` (every
    interface) are not."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """Refuse, in one sentence naming the variable, to listen beyond loopback without a token, and
    a token too short to resist guessing."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise DashboardError(
            f"{TOKEN_VARIABLE} is too short; use at least {MIN_TOKEN_CHARS} random characters "
            "(python3 -c 'import secrets; print(secrets.token_urlsafe(32))' makes one)."
        )
    if token is None and not is_loopback(host):
        raise DashboardError(
            f"Listening on {host} reaches beyond this machine; set {TOKEN_VARIABLE} to a long random "
            "secret that every request must then carry."
        )


@dataclass(frozen=True)
class _Access:
    """The server's access rules (see the module docstring)."""

    token: str | None
    loopback: bool
    csrf: str

    @property
    def cookie_value(self) -> str:
        assert self.token is not None
        return hmac.new(self.token.encode(), _COOKIE_CONTEXT, hashlib.sha256).hexdigest()

    def host_allowed(self, host_header: str) -> bool:
        if not self.loopback:
            return True
        name = urlsplit(f"//{host_header}").hostname or ""
        return is_loopback(name)

    def bearer_ok(self, authorization: str | None) -> bool:
        scheme, _, presented = (authorization or "").partition(" ")
        return bool(
            self.token
            and scheme.lower() == "bearer"
            and hmac.compare_digest(presented.strip().encode(), self.token.encode())
        )

    def token_ok(self, presented: str) -> bool:
        return bool(self.token) and hmac.compare_digest(presented.encode(), str(self.token).encode())

    def cookie_ok(self, cookie: str | None) -> bool:
        return bool(self.token and cookie) and hmac.compare_digest(
            str(cookie).encode(), self.cookie_value.encode()
        )

    def same_origin(self, origin: str | None, referer: str | None, host_header: str) -> bool:
        """The POST comes from a page of this host (Origin, else Referer); neither: refused."""
        source = origin if origin and origin != "null" else referer
        if not source:
            return False
        return urlsplit(source).netloc.lower() == host_header.lower()

    def csrf_ok(self, presented: str | None) -> bool:
        return hmac.compare_digest((presented or "").encode(), self.csrf.encode())


def create_app(
    store: Any,
    settings: Any,
    *,
    token: str | None = None,
    loopback: bool = True,
    token_store: Any = None,
    refresh_s: int = REFRESH_S,
    report: Callable[[str], None] | None = None,
) -> Any:
    """The operator page's Flask app over `store` (and `token_store` for Google's tokens).

    `token`: what every request must carry (None: nothing, allowed on loopback only, see
    `check_binding`); `loopback`: whether the server listens on loopback only (then the Host header
    must name loopback too); `report`: where requeue actions are told (a line each).
    """
    from flask import Flask

    app = Flask(__name__)
    app.secret_key = secrets.token_bytes(32)  # signs the one-shot notice after a requeue
    app.config.update(
        SESSION_COOKIE_NAME=f"{COOKIE}_notice",
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_HTTPONLY=True,
    )
    access = _Access(token, loopback, secrets.token_urlsafe(32))
    _install_filters(app)
    _install_guards(app, access)
    _install_routes(app, access, store, settings, token_store, refresh_s, report or (lambda _line: None))
    return app


def _install_guards(app: Any, access: _Access) -> None:
    from flask import abort, request

    @app.before_request
    def guard() -> Any:
        if not access.host_allowed(request.host):
            abort(421, "This page answers only to its loopback address (127.0.0.1 or localhost).")
        bearer = access.bearer_ok(request.headers.get("Authorization"))
        if access.token and not bearer:
            signed_in = _browser_sign_in(access, request)
            if signed_in is not None:
                return signed_in
        if request.method == "POST" and not bearer:
            _refuse_cross_site(access, request)
        return None

    @app.after_request
    def secure_headers(response: Any) -> Any:
        response.headers.update(_SECURITY_HEADERS)
        if response.status_code == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="nexus dashboard"'
        return response


def _browser_sign_in(access: _Access, request: Any) -> Any:
    """A browser's way in: `GET /?token=…` sets the cookie and redirects to the same path without
    the token (returned); afterwards the cookie must come with every request (else 401)."""
    from flask import abort, redirect

    presented = request.args.get("token")
    if presented is not None and request.method == "GET":
        if not access.token_ok(presented):
            abort(401, f"That is not {TOKEN_VARIABLE}.")
        response = redirect(request.path, code=303)
        response.set_cookie(
            COOKIE, access.cookie_value, httponly=True, samesite="Strict", secure=request.is_secure, path="/"
        )
        return response
    if not access.cookie_ok(request.cookies.get(COOKIE)):
        abort(401, f"This page needs {TOKEN_VARIABLE}: open /?token=… once, or send a bearer token.")
    return None


def _refuse_cross_site(access: _Access, request: Any) -> None:
    """Abort (403) a POST that did not come from this page: another site's Origin (or Referer),
    neither of them, or no CSRF value of this server."""
    from flask import abort

    if not access.same_origin(request.headers.get("Origin"), request.headers.get("Referer"), request.host):
        abort(403, "Refused: the request did not come from this page.")
    if not access.csrf_ok(request.form.get("csrf")):
        abort(403, "Refused: the form is stale or not this page's; reload the page and try again.")


def _install_routes(
    app: Any,
    access: _Access,
    store: Any,
    settings: Any,
    token_store: Any,
    refresh_s: int,
    report: Callable[[str], None],
) -> None:
    from flask import Response, flash, get_flashed_messages, redirect, render_template, request
    from werkzeug.exceptions import HTTPException

    @app.get("/")
    def page() -> Any:
        overview = gather_overview(store, settings, token_store)
        return render_template(
            "dashboard.html",
            o=overview,
            csrf=access.csrf,
            notices=get_flashed_messages(),
            refresh_s=refresh_s,
        )

    @app.get("/api/status")
    def api_status() -> Any:
        return Response(status_json(store.status()) + "\n", mimetype="application/json")

    @app.post("/requeue")
    def requeue_one() -> Any:
        try:
            item = uuid.UUID(request.form.get("item_id", ""))
        except ValueError:
            return _sentence(400, "Refused: item_id is not a knowledge item id.")
        count = store.requeue_failed(item)
        said = f"Requeued item {item}." if count else f"Item {item} was not failed; nothing was requeued."
        return _after_requeue(said, count)

    @app.post("/requeue/all")
    def requeue_all() -> Any:
        count = store.requeue_failed(None)
        return _after_requeue(f"Requeued {count} failed item(s).", count)

    def _after_requeue(sentence: str, count: int) -> Any:
        report(f"dashboard: {sentence}")
        them = "it" if count == 1 else "them"
        flash(sentence + (f" The next sweep (or nexus process --all) claims {them}." if count else ""))
        return redirect("/", code=303)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:
        return _sentence(error.code or 500, str(error.description))

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Any:
        return _sentence(*_explain(error))


def _explain(error: Exception) -> tuple[int, str]:
    """The status and one sentence for a failure while building an answer; the unexpected ones
    are logged (type and message, which name no token)."""
    import psycopg

    if isinstance(error, DatabaseUnavailable):
        return 503, str(error)  # the store's sentence: what could not be reached, which variable
    if isinstance(error, psycopg.errors.UndefinedFunction):
        return (
            503,
            "The database lacks the operator page's SQL functions; apply the migrations (nexus migrate).",
        )
    if isinstance(error, psycopg.errors.InsufficientPrivilege):
        return 503, (
            "The database role in DATABASE_URL may not run the operator page's SQL functions; "
            "use the database owner's (or, through Supabase, the service role's)."
        )
    if isinstance(error, NexusError):
        return 500, str(error)
    from shared.logs import get_logger

    get_logger().error("dashboard request failed", extra={"error": f"{type(error).__name__}: {error}"})
    return 500, f"The page could not be built ({type(error).__name__}); the server's log has the details."


def _sentence(status: int, sentence: str) -> Any:
    """An answer of one sentence: HTML for a browser, JSON for `/api/…` and scripts."""
    from flask import jsonify, make_response, render_template, request

    if request.path.startswith("/api/") or not request.accept_mimetypes.accept_html:
        return make_response(jsonify({"error": sentence}), status)
    return make_response(render_template("sentence.html", sentence=sentence, status=status), status)


def _install_filters(app: Any) -> None:
    app.jinja_env.filters.update(
        when=when, moment=moment, clock=clock, duration=duration, usd=usd, number=number, short=short_id
    )


def parse_moment(value: Any) -> datetime | None:
    """A time from the store: a datetime, or the ISO text JSON carries it as."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def when(value: Any) -> str:
    """`2026-12-09 14:03 UTC (5 min ago)`, or `-`."""
    moment = parse_moment(value)
    if moment is None:
        return "-"
    seconds = (datetime.now(UTC) - moment).total_seconds()
    distance = f"{duration(seconds)} ago" if seconds >= 0 else f"in {duration(-seconds)}"
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC ({distance})"


def moment(value: Any) -> str:
    """`2026-12-09 14:00` (UTC), or `-`."""
    parsed = parse_moment(value)
    return "-" if parsed is None else f"{parsed.astimezone(UTC):%Y-%m-%d %H:%M}"


def clock(value: Any) -> str:
    """`14:00` (UTC), or empty."""
    parsed = parse_moment(value)
    return "" if parsed is None else f"{parsed.astimezone(UTC):%H:%M}"


def duration(seconds: Any) -> str:
    """`42 s`, `7 min`, `3 h 12 min`, `2 d 4 h`, or `-`."""
    if seconds is None:
        return "-"
    total = float(seconds)
    if total < 10:
        return f"{total:.1f} s"
    whole = int(total)
    if whole < 120:
        return f"{whole} s"
    if whole < 7200:
        return f"{whole // 60} min"
    if whole < 172800:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def usd(value: Any) -> str:
    return "-" if value is None else f"{float(value):,.4f}"


def number(value: Any) -> str:
    return f"{int(value or 0):,}".replace(",", "\u202f")


def short_id(value: Any) -> str:
    """The first 8 characters of an id (the full one is in the cell's title)."""
    return str(value)[:8]


@dataclass
class DashboardServer:
    """The page served from a thread of this process (werkzeug's threaded server)."""

    server: Any
    thread: threading.Thread
    url: str
    closers: tuple[Callable[[], None], ...] = ()

    def stop(self) -> None:
        """Stop serving, then close the stores (each step runs even if one fails)."""
        try:
            self.server.shutdown()
            self.thread.join(10)
            self.server.server_close()
        finally:
            _close_all(self.closers)


def _close_all(closers: tuple[Callable[[], None], ...]) -> None:
    for close in closers:
        try:
            close()
        except Exception as exc:  # closing one store must not keep the others open
            from shared.logs import get_logger

            get_logger().warning("dashboard: closing a store failed", extra={"error": type(exc).__name__})


def open_sources(settings: Any) -> tuple[Any, Any]:
    """The page's store and Google token store over `settings`' database (both closed again if the
    second cannot be opened): what `start_dashboard` reads."""
    from shared.gcal.store import default_token_store
    from shared.store.backends import store_from_settings

    store = store_from_settings(settings, application_name="nexus-dashboard")
    try:
        return store, default_token_store(settings)
    except BaseException:
        store.close()
        raise


def start_dashboard(
    settings: Any,
    host: str,
    port: int,
    *,
    store: Any,
    token_store: Any = None,
    refresh_s: int = REFRESH_S,
    report: Callable[[str], None] | None = None,
    owned: bool = True,
) -> DashboardServer:
    """Serve the page on host:port from a thread and return at once (`stop()` ends it). With
    `owned`, `store` and `token_store` are closed when it stops, or when it cannot start: a
    DashboardError when the binding is refused (`check_binding`) or the port is taken."""
    closers = tuple(c.close for c in (store, token_store) if c is not None) if owned else ()
    try:
        token = settings.dashboard_token or None
        check_binding(host, token)
        app = create_app(
            store,
            settings,
            token=token,
            loopback=is_loopback(host),
            token_store=token_store,
            refresh_s=refresh_s,
            report=report,
        )
        from werkzeug.serving import make_server

        with _listening_socket(host, port) as listening:  # werkzeug would exit the process instead
            server = make_server(
                host, port, app, threaded=True, request_handler=_silent_handler(), fd=listening.fileno()
            )
    except BaseException:
        _close_all(closers)
        raise
    thread = threading.Thread(target=server.serve_forever, name="dashboard", daemon=True)
    thread.start()
    shown = f"[{host}]" if ":" in host else host
    return DashboardServer(server, thread, f"http://{shown}:{server.port}/", closers)


def _listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port and listening (werkzeug serves on a copy of it); raises
    DashboardError when the port is taken or the host is not an address of this machine."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as werkzeug chooses
    try:
        return socket.create_server((host.strip("[]"), port), family=family, backlog=128)
    except OSError as exc:
        # socket.create_server adds "(while attempting to bind on address …)": the address is said already
        reason = (exc.strerror or str(exc)).split(" (while attempting", 1)[0]
        raise DashboardError(
            f"The operator page cannot listen on {host}:{port} ({reason}); pass --port N or --host H."
        ) from None


def _silent_handler() -> Any:
    """werkzeug's request handler without its log lines: a request line may carry `?token=`."""
    from werkzeug.serving import WSGIRequestHandler

    class SilentHandler(WSGIRequestHandler):
        def log(self, type: str, message: str, *args: Any) -> None:
            return None

    return SilentHandler


def _say(line: str) -> None:
    print(line, flush=True)


def run_dashboard(settings: Any, host: str, port: int, out: Callable[[str], None] = _say) -> int:
    """`nexus dashboard`: serve the page until Ctrl-C or SIGTERM (exit 0). Raises DashboardError,
    before touching any database, when the binding is refused (`check_binding`)."""
    from shared.local.database import local_settings
    from shared.local.signals import stop_on_signals

    check_binding(host, settings.dashboard_token or None)
    resolved = local_settings(settings)
    store, token_store = open_sources(resolved)
    served = start_dashboard(resolved, host, port, store=store, token_store=token_store, report=out)
    guard = f"; every request needs {TOKEN_VARIABLE}" if settings.dashboard_token else ""
    stopping = threading.Event()
    try:
        with stop_on_signals(stopping):
            out(f"nexus dashboard: {served.url}{guard} (Ctrl-C stops it)")
            while not stopping.wait(0.5):
                pass
    finally:
        served.stop()
    out("nexus dashboard: stopped")
    return 0
