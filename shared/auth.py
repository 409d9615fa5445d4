"""Who is calling: bearer API keys (`NEXUS_INGEST_API_KEYS`) and Supabase JWTs (`SUPABASE_JWT_SECRET`).

Keys are compared in constant time against every configured key. A JWT with role
`service_role` may write for any client; role `authenticated` only for the `client_id` claim
(top level or in `app_metadata`).
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass

from shared.config import Settings
from shared.errors import ConfigError
from shared.problems import ProblemError

_CHALLENGE = {"www-authenticate": 'Bearer realm="nexus"'}


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
    import jwt

    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={"verify_aud": False, "require": ["exp"]},
        )
    except jwt.ExpiredSignatureError:
        raise _unauthorized("The JWT has expired.") from None
    except jwt.PyJWTError:
        raise _unauthorized("The bearer key is not valid.") from None
    role = claims.get("role")
    if role == "service_role":
        return Principal("service_role")
    if role == "authenticated":
        raw = claims.get("client_id") or (claims.get("app_metadata") or {}).get("client_id")
        try:
            return Principal("user", uuid.UUID(str(raw)))
        except ValueError:
            raise ProblemError(
                403, "The JWT has no valid client_id claim, so it may not write any items.", slug="forbidden"
            ) from None
    raise ProblemError(403, f"The JWT role {role!r} may not ingest items.", slug="forbidden")
