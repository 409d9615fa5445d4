"""Who is calling: bearer API keys (`NEXUS_INGEST_API_KEYS`) and Supabase JWTs.

Keys are compared in constant time against every configured key. Supabase JWTs are verified
either with the legacy shared secret (`SUPABASE_JWT_SECRET`, HS256) or, for ES256 and RS256
tokens, with the project's published signing keys (`SUPABASE_URL`, or `SUPABASE_JWKS_URL`;
`shared.http.jwks` fetches and keeps them). A token's `alg` header picks the path, and each path
accepts only its own algorithms: `none` never, HS256 only with the secret.

A JWT with role `service_role` may write for any client; role `authenticated` only for the
`client_id` claim (top level or in `app_metadata`). `exp` is required; `exp`, `nbf` and `iat` are
checked with 30 s of leeway for clock skew. A validly signed token whose claims are malformed
(role not a string, app_metadata not an object, client_id not a UUID string) is a 401, like a
bad signature. Signing keys that cannot be fetched are a 503 with `retry-after`.
"""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from typing import Any

from shared.config import Settings
from shared.errors import ConfigError
from shared.http.jwks import ASYMMETRIC_ALGORITHMS, JwksUnavailable, project_jwks_url, signing_keys
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
    """Return the caller for an Authorization header, or raise a 401 problem (a 503 one when the
    project's signing keys cannot be fetched)."""
    has_signing_keys = bool(settings.supabase_jwks_url or settings.supabase_url)
    if not settings.ingest_api_keys and not settings.supabase_jwt_secret and not has_signing_keys:
        raise ConfigError(
            "NEXUS_INGEST_API_KEYS (or SUPABASE_JWT_SECRET, or SUPABASE_URL for the project's "
            "signing keys) must be set for ingest."
        )
    token = bearer_token(authorization)
    if matches_any_secret(token, settings.ingest_api_keys):
        return Principal("api_key")
    if (settings.supabase_jwt_secret or has_signing_keys) and token.count(".") == 2:
        return _principal_from_claims(_verified_claims(token, settings))
    raise _unauthorized("The bearer key is not valid.")


def _principal_from_claims(claims: dict[str, Any]) -> Principal:
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


def _verified_claims(token: str, settings: Settings) -> dict[str, Any]:
    """The claims of a token signed with the project's signing key its `kid` names (ES256, RS256),
    or with `SUPABASE_JWT_SECRET` (HS256)."""
    import jwt

    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise _unauthorized("The bearer key is not valid.") from None
    jwks_url = project_jwks_url(settings) if header.get("alg") in ASYMMETRIC_ALGORITHMS else None
    if jwks_url:
        key = _signing_key(header.get("kid"), jwks_url)
        return _decoded(token, key.key, [key.algorithm_name])  # only the key's own algorithm
    if settings.supabase_jwt_secret:
        return _decoded(token, settings.supabase_jwt_secret, ["HS256"])
    raise _unauthorized("The bearer key is not valid.")


def _signing_key(kid: object, jwks_url: str) -> Any:
    """The project's public key named `kid` (a `jwt.PyJWK`); a 401 problem when the project does not
    publish one by that name, a 503 one when its keys cannot be fetched."""
    if not isinstance(kid, str) or not kid:
        raise _unauthorized("The JWT does not name its signing key (kid).")
    try:
        key = signing_keys(jwks_url).key_for(kid)
    except JwksUnavailable as exc:
        raise ProblemError(
            503,
            "The project's signing keys could not be fetched from Supabase; retry the request.",
            headers={"retry-after": str(exc.retry_after_s)},
        ) from None
    if key is None:
        raise _unauthorized("The JWT is signed with a key the project does not publish.")
    return key


def _decoded(token: str, key: Any, algorithms: list[str]) -> dict[str, Any]:
    """The claims of `token` if signed with `key` by one of `algorithms`; `exp` is required, and
    exp/nbf/iat are checked with `JWT_LEEWAY_SECONDS` of tolerance for clock skew."""
    import jwt

    try:
        return jwt.decode(
            token,
            key,
            algorithms=algorithms,
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
