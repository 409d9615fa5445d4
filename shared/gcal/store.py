"""The Google token rows in `system_config`, over either store backend.

Every read and write is one of the SQL functions in
`infra/supabase/migrations/20261125000500_google_tokens.sql`: `PostgresTokenStore` runs them with
psycopg (`DATABASE_URL`), `SupabaseTokenStore` through PostgREST's `rpc` (`SUPABASE_URL` with
`SUPABASE_SERVICE_ROLE_KEY`). Values are the JSON objects `shared.gcal.tokens` builds; this
module never sees a plaintext secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from shared.errors import ConfigError, NexusError
from shared.store.backends import SUPABASE, open_connection, store_backend


@dataclass(frozen=True)
class Claim:
    """The answer of `claim_google_token_refresh`: who refreshes, and the row as it is now."""

    outcome: str  # missing | reauth_required | fresh | busy | claimed
    token: dict[str, Any] | None
    wait_s: float = 0.0

    @property
    def lease_id(self) -> str | None:
        return None if self.token is None else self.token.get("lease_id")


class GoogleTokenStore(Protocol):
    def read(self, key: str) -> dict[str, Any] | None:
        """The stored value, or None."""
        ...

    def list(self) -> list[tuple[str, dict[str, Any]]]:
        """Every stored Google token as (key, value), ordered by key."""
        ...

    def put(self, key: str, token: dict[str, Any]) -> None:
        """Store a token, replacing any row (and lease) under the key."""
        ...

    def claim_refresh(self, key: str, *, margin_s: int, lease_s: int, force: bool) -> Claim:
        """Take the refresh lease when the token needs refreshing and nobody else holds it."""
        ...

    def finish_refresh(self, key: str, lease_id: str, token: dict[str, Any]) -> bool:
        """Write the refreshed row and release the lease; False when the lease was lost."""
        ...

    def reencrypt(self, key: str, old_secrets: str, new_secrets: str) -> bool:
        """Swap the ciphertext if it is still `old_secrets`."""
        ...

    def close(self) -> None: ...


class _TokenFunctions:
    """The calls, shared by both backends; each backend only says how to run a SQL function."""

    def _call(self, function: str, params: dict[str, Any]) -> Any:
        raise NotImplementedError

    def read(self, key: str) -> dict[str, Any] | None:
        value = self._call("read_google_token", {"token_key": key})
        return dict(value) if value else None

    def list(self) -> list[tuple[str, dict[str, Any]]]:
        rows = self._call("list_google_tokens", {}) or []
        return [(str(row["key"]), dict(row["token"])) for row in rows]

    def put(self, key: str, token: dict[str, Any]) -> None:
        self._call("put_google_token", {"token_key": key, "token": token})

    def claim_refresh(self, key: str, *, margin_s: int, lease_s: int, force: bool) -> Claim:
        answer = self._call(
            "claim_google_token_refresh",
            {"token_key": key, "margin_seconds": margin_s, "lease_seconds": lease_s, "force": force},
        )
        token = answer.get("token")
        return Claim(
            str(answer["outcome"]), dict(token) if token else None, float(answer.get("wait_seconds") or 0)
        )

    def finish_refresh(self, key: str, lease_id: str, token: dict[str, Any]) -> bool:
        params = {"token_key": key, "lease_id": lease_id, "token": token}
        return bool(self._call("finish_google_token_refresh", params))

    def reencrypt(self, key: str, old_secrets: str, new_secrets: str) -> bool:
        params = {"token_key": key, "old_secrets": old_secrets, "new_secrets": new_secrets}
        return bool(self._call("reencrypt_google_token", params))


class PostgresTokenStore(_TokenFunctions):
    """psycopg backend; one connection per process (a `ConnectionHolder`), reused when warm."""

    def __init__(self, holder: Any) -> None:
        self.holder = holder

    def _call(self, function: str, params: dict[str, Any]) -> Any:
        import psycopg
        from psycopg import sql
        from psycopg.types.json import Jsonb

        query = sql.SQL("select {}({}) as result").format(
            sql.Identifier("public", function),
            sql.SQL(", ").join(
                sql.SQL("{} => {}").format(sql.Identifier(name), sql.Placeholder(name)) for name in params
            ),
        )
        values = {name: Jsonb(v) if isinstance(v, dict) else v for name, v in params.items()}
        with self.holder.connection() as conn:
            try:
                row = conn.execute(query, values).fetchone()
            except psycopg.errors.UndefinedFunction:
                raise ConfigError(
                    f"The database has no function public.{function}; "
                    "apply the migrations with 'nexus migrate'."
                ) from None
            except psycopg.errors.OperationalError:
                raise  # the holder turns it into DatabaseUnavailable
            except psycopg.Error as exc:
                detail = exc.diag.message_primary or type(exc).__name__
                raise NexusError(f"The database refused {function}: {detail}.") from None
        return row["result"] if row else None

    def close(self) -> None:
        self.holder.close()


class SupabaseTokenStore(_TokenFunctions):
    """PostgREST backend: the same SQL functions through a `SupabaseStore`'s `rpc`."""

    def __init__(self, supabase_store: Any) -> None:
        self.supabase_store = supabase_store

    def _call(self, function: str, params: dict[str, Any]) -> Any:
        # SupabaseStore maps PostgREST failures to our errors (one sentence each); reuse that.
        return self.supabase_store.rpc(function, params)

    def close(self) -> None:
        self.supabase_store.close()


def default_token_store(settings: Any) -> GoogleTokenStore:
    """The backend the settings choose (`shared.store.store_backend`): psycopg for `DATABASE_URL`,
    else PostgREST for Supabase."""
    connection = open_connection(settings, application_name="nexus-gcal")
    if store_backend(settings) == SUPABASE:
        return SupabaseTokenStore(connection)
    return PostgresTokenStore(connection)
