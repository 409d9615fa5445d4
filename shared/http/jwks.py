"""A Supabase project's public signing keys (its JWKS), kept in the process for warm invocations.

Supabase publishes the keys that sign its user JWTs (ES256 or RS256) at
`<SUPABASE_URL>/auth/v1/.well-known/jwks.json`; a token's `kid` header names its key. The set is
fetched on first need (never at import) with a short timeout, then reused:

- a `kid` the set lacks makes one fetch again (a key added by a rotation), at most once per
  `min_refetch_s`, so a flood of made-up `kid`s costs Supabase one request per interval;
- a set older than `max_age_s` is fetched again on its next use, so a key the project revoked
  stops being trusted (Supabase's own edge caches the document as long); if that fetch fails,
  the keys already held stay in use;
- when there is no set yet and the fetch fails, `JwksUnavailable` says how long to wait, and no
  new attempt is made before then.

PyJWT, and with it `cryptography` (which these algorithms need), is imported with the first key
set; importing this module loads neither, and API-key requests never get here.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from shared.config import Settings
from shared.errors import ConfigError

if TYPE_CHECKING:
    from jwt import PyJWK

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "JwksUnavailable",
    "SigningKeys",
    "forget_signing_keys",
    "project_jwks_url",
    "signing_keys",
]

ASYMMETRIC_ALGORITHMS = frozenset({"ES256", "RS256"})
JWKS_PATH = "/auth/v1/.well-known/jwks.json"
TIMEOUT_S = 3.0
MIN_REFETCH_S = 30.0
MAX_AGE_S = 600.0
RETRY_S = 5.0
MAX_DOCUMENT_BYTES = 1024 * 1024


class JwksUnavailable(Exception):
    """The key set could not be fetched; `retry_after_s` is when the next attempt will be made."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__("The project's signing keys could not be fetched.")
        self.retry_after_s = max(1, math.ceil(retry_after_s))


def project_jwks_url(settings: Settings) -> str | None:
    """Where the project publishes its signing keys: `SUPABASE_JWKS_URL`, else derived from
    `SUPABASE_URL`; None when neither is set. Raises ConfigError for a URL that is not http(s)."""
    if settings.supabase_jwks_url:
        url, variable = settings.supabase_jwks_url, "SUPABASE_JWKS_URL"
    elif settings.supabase_url:
        url, variable = settings.supabase_url.rstrip("/") + JWKS_PATH, "SUPABASE_URL"
    else:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{variable} must be an http(s) URL to read the project's signing keys from.")
    return url


class SigningKeys:
    """The keys of one JWKS URL, by `kid`; thread-safe (one fetch at a time, others wait for it).

    `clock` (monotonic seconds) and `fetch` (URL, timeout → body) are the production ones unless
    given."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = TIMEOUT_S,
        min_refetch_s: float = MIN_REFETCH_S,
        max_age_s: float = MAX_AGE_S,
        retry_s: float = RETRY_S,
        clock: Callable[[], float] = time.monotonic,
        fetch: Callable[[str, float], bytes] | None = None,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.min_refetch_s = min_refetch_s
        self.max_age_s = max_age_s
        self.retry_s = retry_s
        self._clock = clock
        self._fetch = fetch or _download
        self._lock = threading.Lock()
        self._keys: dict[str, PyJWK] | None = None
        self._fetched_at = 0.0
        self._refetched_at: float | None = None  # the last fetch made for an unknown kid
        self._failed_at: float | None = None

    def key_for(self, kid: str) -> PyJWK | None:
        """The key named `kid`, fetching the set as the module docstring says; None when the project
        does not publish it. Raises JwksUnavailable when no set could be had."""
        with self._lock:
            now = self._clock()
            if self._keys is None:
                self._keys = self._first_set(now)
            elif now - self._fetched_at >= self.max_age_s:
                self._refresh_stale(now)
            elif kid not in self._keys and self._may_refetch(now):
                self._refetched_at = now
                self._keys = self._fetched(now, retry_after_s=self.min_refetch_s)
            return self._keys.get(kid)

    def _first_set(self, now: float) -> dict[str, PyJWK]:
        if self._failed_at is not None and now - self._failed_at < self.retry_s:
            raise JwksUnavailable(self.retry_s - (now - self._failed_at))
        return self._fetched(now, retry_after_s=self.retry_s)

    def _refresh_stale(self, now: float) -> None:
        if self._failed_at is not None and now - self._failed_at < self.retry_s:
            return
        with contextlib.suppress(JwksUnavailable):  # logged; the keys held stay trusted meanwhile
            self._keys = self._fetched(now, retry_after_s=self.retry_s)

    def _may_refetch(self, now: float) -> bool:
        return self._refetched_at is None or now - self._refetched_at >= self.min_refetch_s

    def _fetched(self, now: float, *, retry_after_s: float) -> dict[str, PyJWK]:
        try:
            keys = _parse(self._fetch(self.url, self.timeout_s))
        except ConfigError:
            raise
        except Exception as exc:  # unreachable, slow, an error status, not a key set
            self._failed_at = now
            _log_failure(self.url, exc)
            raise JwksUnavailable(retry_after_s) from None
        self._fetched_at, self._failed_at = now, None
        return keys


_sets: dict[str, SigningKeys] = {}
_sets_lock = threading.Lock()


def signing_keys(url: str) -> SigningKeys:
    """The process's key set for `url`, created on first use and kept for warm invocations."""
    with _sets_lock:
        found = _sets.get(url)
        if found is None:
            found = _sets[url] = SigningKeys(url)
        return found


def forget_signing_keys() -> None:
    """Forget every key set of the process (tests start servers whose ports earlier ones had)."""
    with _sets_lock:
        _sets.clear()


def _download(url: str, timeout_s: float) -> bytes:
    """The body of a GET of `url` (http or https, checked by `project_jwks_url`)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"accept": "application/json"})  # noqa: S310 (http(s))
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (http(s) only)
            body: bytes = response.read(MAX_DOCUMENT_BYTES + 1)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response, and its socket
        raise ValueError(f"the key set answered HTTP {exc.code}") from None
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"the key set is larger than {MAX_DOCUMENT_BYTES} bytes")
    return body


def _parse(body: bytes) -> dict[str, PyJWK]:
    """The usable keys of a JWKS document, by `kid`: signing keys of the asymmetric algorithms we
    verify; other keys are skipped. Raises ValueError when the document is not a key set."""
    document = json.loads(body)
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("the document has no 'keys' list")
    import jwt
    from jwt.algorithms import has_crypto

    if not has_crypto:
        raise ConfigError(
            "Verifying Supabase's ES256/RS256 JWTs needs the cryptography package "
            "(install nexus-workers[ingest])."
        )
    keys: dict[str, PyJWK] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue  # a key type or curve PyJWT cannot use
        if key.algorithm_name in ASYMMETRIC_ALGORITHMS:
            keys[entry["kid"]] = key
    return keys


def _log_failure(url: str, exc: BaseException) -> None:
    from shared.logs import get_logger

    get_logger().warning(
        "supabase signing keys could not be fetched",
        extra={"jwks_url": url, "error": type(exc).__name__, "reason": str(exc)[:200]},
    )
