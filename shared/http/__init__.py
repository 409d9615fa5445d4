"""HTTP without a runtime: request and response messages, RFC 9457 problems, who is calling.

Runtimes convert to and from these (`shared.runtime`); services raise `ProblemError` for a client's
mistake and the entry point answers it as problem+json. `SigningKeys` holds a Supabase project's
public JWT signing keys (its JWKS) for the process."""

from typing import TYPE_CHECKING

from shared.lazy import lazy_exports

_HOMES = {
    "HttpRequest": "messages",
    "HttpResponse": "messages",
    "FieldError": "problems",
    "ProblemError": "problems",
    "Principal": "auth",
    "authenticate": "auth",
    "JwksUnavailable": "jwks",
    "SigningKeys": "jwks",
    "signing_keys": "jwks",
}
__all__ = [
    "FieldError",
    "HttpRequest",
    "HttpResponse",
    "JwksUnavailable",
    "Principal",
    "ProblemError",
    "SigningKeys",
    "authenticate",
    "signing_keys",
]
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)

if TYPE_CHECKING:
    from shared.http.auth import Principal, authenticate
    from shared.http.jwks import JwksUnavailable, SigningKeys, signing_keys
    from shared.http.messages import HttpRequest, HttpResponse
    from shared.http.problems import FieldError, ProblemError
