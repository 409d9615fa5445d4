"""Who is calling: bearer API keys (`NEXUS_INGEST_API_KEYS`) and Supabase JWTs (`SUPABASE_JWT_SECRET`).

Keys are compared in constant time against every configured key. A JWT with role
`service_role` may write for any client; role `authenticated` only for the `client_id` claim
(top level or in `app_metadata`). `exp`, `nbf` and `iat` are checked with 30 s of leeway for
clock skew. A validly signed token whose claims are malformed (role not a string, app_metadata
not an object, client_id not a UUID string) is a 401, like a bad signature.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from typing import Any

from shared.config import Settings
from shared.errors import ConfigError
from shared.http.problems import ProblemError

_CHALLENGE = {"www-authenticate": 'Bearer realm="nexus"'}
JWT_LEEWAY_SECONDS = 30


@dataclass(frozen=True)
class Principal:
    """The authenticated caller. `client_id` is set when it may write only for that client."""

    kind: str  # "api_key" | "service_role" | "user"
    client_id: uuid.UUID | None = None

    def may_write_for(self, client_id: uuid.UUID) -> bool:
        return self.client_id is None or self.client_id == client_id


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(401, detail, headers=_CHALLENGE, slug="unauthorized")


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer …` header, or a 401 problem."""
    if not authorization:
        raise _unauthorized("The Authorization header is missing; send 'Authorization: Bearer <key>'.")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("The Authorization header must be 'Bearer <key>'.")
    return token.strip()


def matches_any_secret(token: str, secrets: tuple[str, ...]) -> bool:
    """Constant-time membership: every secret is compared, whatever matches first."""
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(token.encode(), secret.encode())
    return matched


def authenticate(authorization: str | None, settings: Settings) -> Principal:
    """Return the caller for an Authorization header, or raise a 401 problem."""
    if not settings.ingest_api_keys and not settings.supabase_jwt_secret:
        raise ConfigError("NEXUS_INGEST_API_KEYS (or SUPABASE_JWT_SECRET) must be set for ingest.")
    token = bearer_token(authorization)
    if matches_any_secret(token, settings.ingest_api_keys):
        return Principal("api_key")
    if settings.supabase_jwt_secret and token.count(".") == 2:
        return _principal_from_jwt(token, settings.supabase_jwt_secret)
    raise _unauthorized("The bearer key is not valid.")


def _principal_from_jwt(token: str, secret: str) -> Principal:
    claims = _verified_claims(token, secret)
    role = claims.get("role")
    if not isinstance(role, str):
        raise _unauthorized("The JWT role claim is missing or not a string.")
    if role == "service_role":
        return Principal("service_role")
    if role == "authenticated":
        client_id = _client_id_claim(claims)
        if client_id is None:
            raise ProblemError(
                403, "The JWT has no client_id claim, so it may not write any items.", slug="forbidden"
            )
        return Principal("user", client_id)
    raise ProblemError(403, f"The JWT role {role!r} may not ingest items.", slug="forbidden")


def _verified_claims(token: str, secret: str) -> dict[str, Any]:
    """The claims of an HS256 token signed with `secret`; `exp` is required, and exp/nbf/iat
    are checked with `JWT_LEEWAY_SECONDS` of tolerance for clock skew."""
    import jwt

    try:
        return jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            leeway=JWT_LEEWAY_SECONDS,
            options={"verify_aud": False, "require": ["exp"]},
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("The JWT has expired.") from None
    except jwt.ImmatureSignatureError:
        raise _unauthorized("The JWT is not valid yet (its nbf or iat is in the future).") from None
    except jwt.PyJWTError:
        raise _unauthorized("The bearer key is not valid.") from None


def _client_id_claim(claims: dict[str, Any]) -> uuid.UUID | None:
    """The `client_id` claim (top level, else in `app_metadata`), None when absent; a 401 problem
    when `app_metadata` is not an object or `client_id` is not a UUID string."""
    metadata = claims.get("app_metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise _unauthorized("The JWT app_metadata claim must be an object.")
    raw = claims.get("client_id")
    if raw is None:
        raw = metadata.get("client_id")
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise _unauthorized("The JWT client_id claim must be a UUID string.")
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise _unauthorized("The JWT client_id claim must be a UUID string.") from None
