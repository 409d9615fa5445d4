"""The PostgREST backend: used when `DATABASE_URL` is absent but `SUPABASE_URL` and
`SUPABASE_SERVICE_ROLE_KEY` (or `SUPABASE_SECRET_KEY`) are set. It calls only SQL functions from the
migrations, via `rpc`, so both backends run the same SQL and give the same results.

The key is the project's server key, in either of Supabase's forms: the legacy `service_role` JWT,
sent as `apikey` and as the bearer token, or a secret key (`sb_secret_…`), which is not a JWT and
goes in `apikey` only (Supabase's gateway then calls PostgREST with a `service_role` JWT of its
own). A publishable key (`sb_publishable_…`) is refused: it runs as `anon`.

Failures map to one sentence naming what to fix: an unreachable Supabase or a transient database
error is `DatabaseUnavailable` (503, retry); a rejected key or missing function is a `ConfigError`
naming the variable or the migrations; anything else is a `SupabaseError`. PostgREST's own
message goes to the log, not to the caller.

PostgREST returns at most `db-max-rows` rows (1000 on Supabase) of a set-returning function and
drops the rest silently, after the function has run in full. So no call may produce more rows than
`max_rows` (`SqlFunctionStore` applies it): a claim leases at most `max_rows` items (a lease beyond
it would come back to nobody), look-ups go in pages of `max_rows` keys, and search and backlog
sizes are capped.

Every call is `SqlFunctionStore`'s; this backend fills its two primitives with `rpc`.
"""

from __future__ import annotations

import uuid
from array import array
from typing import Any

from shared.errors import ConfigError, DatabaseUnavailable, NexusError, RefusedByDatabase
from shared.store.base import SqlFunctionStore
from shared.store.vectors import to_pgvector_text

__all__ = ["DEFAULT_MAX_ROWS", "SupabaseError", "SupabaseStore"]

CONNECT_TIMEOUT_S = 10
REQUEST_TIMEOUT_S = 60
DEFAULT_MAX_ROWS = 1000  # Supabase's db-max-rows
SECRET_KEY_PREFIX = "sb_secret_"
PUBLISHABLE_KEY_PREFIX = "sb_publishable_"

# "Try again": PostgREST cannot reach the database (or its pool), or the database failed
# transiently (connection, serialisation or deadlock, resources, operator intervention).
_UNREACHABLE_CODES = ("PGRST000", "PGRST001", "PGRST002", "PGRST003")
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57")


class SupabaseError(NexusError):
    """Supabase refused a call for a reason that retrying will not fix."""

    status = 500


class SupabaseStore(SqlFunctionStore):
    """Runs the store's SQL functions through supabase-py's `rpc` (service role key).

    One HTTP client per store, reused across warm invocations; `close()` releases it. `max_rows`
    must not exceed the project's PostgREST `db-max-rows`.
    """

    def __init__(
        self, url: str, service_role_key: str, client: Any = None, *, max_rows: int = DEFAULT_MAX_ROWS
    ) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1.")
        if service_role_key.startswith(PUBLISHABLE_KEY_PREFIX):
            raise ConfigError(
                "SUPABASE_SERVICE_ROLE_KEY holds a publishable key (sb_publishable_…), not a server key; "
                "use a secret key (sb_secret_…) or the legacy service_role key."
            )
        self.max_rows = max_rows
        self._http: Any = None
        if client is None:
            client = self._create_client(url, service_role_key)
        self.client = client

    def _create_client(self, url: str, service_role_key: str) -> Any:
        import httpx
        from supabase import ClientOptions, SupabaseException, create_client
        from supabase_auth import SyncMemoryStorage

        # Our own httpx client: supabase-py's default passes a deprecated `timeout` to postgrest
        # (a DeprecationWarning per client) and waits 120 s; this one is bounded and closable.
        # supabase-py sends its key as the bearer token too; a secret key must not be (not a JWT).
        hooks = (
            {"request": [_bearer_key_remover(service_role_key)]} if _is_secret_key(service_role_key) else {}
        )
        self._http = httpx.Client(
            timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=CONNECT_TIMEOUT_S), event_hooks=hooks
        )
        options = ClientOptions(
            httpx_client=self._http,
            storage=SyncMemoryStorage(),
            auto_refresh_token=False,
            persist_session=False,
        )
        try:
            return create_client(url, service_role_key, options=options)
        except SupabaseException as exc:  # a malformed URL or an empty key
            self.close()
            raise ConfigError(
                f"SUPABASE_URL or SUPABASE_SERVICE_ROLE_KEY is invalid: {exc.message}."
            ) from None

    def close(self) -> None:
        """Close the HTTP connections (the store can not be used afterwards)."""
        if self._http is not None:
            self._http.close()
            self._http = None

    def rpc(self, function: str, params: dict[str, Any]) -> Any:
        import httpx
        from postgrest.exceptions import APIError

        try:
            return self.client.rpc(function, params).execute().data
        except APIError as exc:
            raise _api_error(function, exc) from None
        except httpx.TimeoutException:
            raise DatabaseUnavailable(
                f"Supabase did not answer {function} in time; retry the request."
            ) from None
        except httpx.HTTPError as exc:
            raise DatabaseUnavailable(
                f"Supabase could not be reached ({type(exc).__name__}); check SUPABASE_URL and retry."
            ) from None

    def _rows(
        self, function: str, arguments: dict[str, Any], *, idempotent: bool = False, vectors: bool = False
    ) -> list[dict[str, Any]]:
        rows = self.rpc(function, _json_arguments(arguments)) or []
        # a set of scalars comes as bare values: name them as `select * from f()` would
        return [row if isinstance(row, dict) else {function: row} for row in rows]

    def _value(self, function: str, arguments: dict[str, Any], *, idempotent: bool = False) -> Any:
        return self.rpc(function, _json_arguments(arguments))


def _is_secret_key(key: str) -> bool:
    """True for Supabase's new secret keys, which are not JWTs (the legacy service_role key is)."""
    return key.startswith(SECRET_KEY_PREFIX)


def _bearer_key_remover(key: str) -> Any:
    """An httpx request hook that drops `Authorization: Bearer <key>` (the key stays in `apikey`)."""
    bearer = f"Bearer {key}"

    def remove(request: Any) -> None:
        if request.headers.get("authorization") == bearer:
            del request.headers["authorization"]

    return remove


def _api_error(function: str, exc: Any) -> NexusError:
    """Map a PostgREST error to the exception callers act on; log PostgREST's own words."""
    from shared.logs import get_logger

    code = str(exc.code or "")
    get_logger().error(
        "supabase rpc failed",
        extra={"function": function, "code": code, "error": exc.message, "hint": exc.hint},
    )
    # postgrest-py puts the HTTP status in `code` when the body is not PostgREST's (a proxy's page);
    # Supabase's gateway refuses an unknown `apikey` with a body that has a message but no code.
    is_http_status = len(code) == 3 and code.isdigit()
    is_sqlstate = len(code) == 5 and not code.startswith("PGRST")
    if (not code and "api key" in str(exc.message or "").lower()) or code in ("401", "403", "42501"):
        return ConfigError(
            f"Supabase refused the key calling {function}; "
            "check that SUPABASE_SERVICE_ROLE_KEY (or SUPABASE_SECRET_KEY) is the project's "
            "service_role key or a secret key (sb_secret_…)."
        )
    if code.startswith("PGRST3"):  # PostgREST's JWT errors
        return ConfigError(f"Supabase refused SUPABASE_SERVICE_ROLE_KEY calling {function} ({code}).")
    if code == "P0001":  # our SQL functions' own refusals: a sentence for the user
        return RefusedByDatabase(str(exc.message))
    if code in ("PGRST202", "PGRST203", "42883", "404"):
        return ConfigError(
            f"Supabase has no usable function public.{function} ({code}); "
            "apply the migrations in infra/supabase/migrations (supabase db push)."
        )
    if (
        code.startswith(_UNREACHABLE_CODES)
        or (is_sqlstate and code.startswith(_TRANSIENT_SQLSTATE_CLASSES))
        or (is_http_status and code.startswith("5"))
    ):
        return DatabaseUnavailable(f"Supabase could not run {function} right now ({code}); retry.")
    return SupabaseError(f"Supabase could not run {function} ({code or 'no error code'}); see the logs.")


def _json_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """Arguments as PostgREST's JSON takes them: uuids as strings, vectors in pgvector's text form."""
    return {name: _json_value(value) for name, value in arguments.items()}


def _json_value(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, array):
        return to_pgvector_text(value)
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value
