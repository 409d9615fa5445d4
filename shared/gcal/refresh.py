"""Refreshing the stored Google tokens: ahead of expiry, one refresher at a time, failures kept apart.

When. The scheduled function runs every `SCHEDULE_INTERVAL_S` (10 min) and refreshes a token with
less than `REFRESH_MARGIN_S` (20 min) left. The margin is larger than the interval, so every token
is seen by at least one more run before it expires even if one run fails or is skipped. Google's
access tokens last 60 min, so each is refreshed about every 40 to 50 min.

Who. One refresher at a time: `claim_google_token_refresh` (SQL) hands a lease on the row to one
invocation; the others wait until the lease is released (polling the row with backoff), then see
the fresh token and make no call. No transaction stays open while Google answers, so this works
through Supabase's transaction pooler and through PostgREST. A refresher that dies leaves a lease
that expires after `RefreshPolicy.lease_s`; the next run takes over.

Failures. `invalid_grant` (refresh token revoked or expired) sets status `reauth_required`, logs one
error with `alert="google_token_reauth_required"`, and no later run calls Google for that account
until `nexus gcal init` or `import` stores a new token. Transient failures keep the token, set
status `error` and `last_error`: google-auth retries 5xx / 429 answers itself (3 tries, 1 s then
2 s apart); timeouts and connection errors are retried here (`RefreshPolicy`). A row in status
`error` is retried by every following run. Messages and logs never carry a token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.config import Settings, get_settings
from shared.errors import ConfigError, NexusError
from shared.gcal.crypto import TokenCipher, UndecryptableError
from shared.gcal.store import Claim, GoogleTokenStore
from shared.gcal.tokens import (
    DEFAULT_ACCOUNT,
    ReauthRequired,
    TokenMissing,
    TokenSecrets,
    TokenState,
    account_of,
    checked_endpoint,
    decrypt_secrets,
    iso_utc,
    oauth_client,
    opened_store,
    parse_utc,
    scope_list,
    token_key,
    utc,
)

if TYPE_CHECKING:
    from google.auth.exceptions import RefreshError

SCHEDULE_INTERVAL_S = 10 * 60
REFRESH_MARGIN_S = 20 * 60
REAUTH_ALERT = "google_token_reauth_required"
_REAUTH_ERRORS = frozenset({"invalid_grant", "invalid_rapt"})

Sleep = Callable[[float], None]


@dataclass(frozen=True)
class RefreshPolicy:
    """How refreshes run; the defaults are production's (tests shorten the waits).

    Worst case for one refresh: `attempts` tries, each up to 3 google-auth requests of
    `timeout_s` with 1 s + 2 s between them, plus our backoff: 3 x (3 x 5 + 3) + 1 + 2 = 57 s,
    inside `lease_s`.
    """

    margin_s: int = REFRESH_MARGIN_S
    timeout_s: float = 5.0  # per HTTP request to the token endpoint
    attempts: int = 3  # tries when the endpoint cannot be reached (timeout, connection error)
    backoff_s: float = 1.0  # pause before the second try; doubles after each
    lease_s: int = 90  # how long one refresher may hold the token before others take over
    max_wait_s: float = 90.0  # how long to wait, in all, for another invocation's refresh


class TokenRefreshFailed(NexusError):
    """The refresh failed for a reason that may pass (the token was kept)."""

    status = 503


@dataclass(frozen=True)
class RefreshOutcome:
    """What one refresh run left behind for one account."""

    account: str
    status: str  # the token's status now: ok | reauth_required | error
    refreshed: bool  # this run obtained a new access token
    expiry: datetime | None
    message: str  # one sentence for people; never a token

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "status": self.status,
            "refreshed": self.refreshed,
            "expiry": iso_utc(self.expiry),
            "message": self.message,
        }


def refresh_token_if_needed(
    account: str = DEFAULT_ACCOUNT,
    *,
    force: bool = False,
    settings: Settings | None = None,
    store: GoogleTokenStore | None = None,
) -> bool:
    """Refresh the account's token when it is within the margin of expiry (or `force`).

    Returns True when this call obtained a new access token, False when the stored one is fresh
    (possibly because a concurrent call just refreshed it). Raises ReauthRequired,
    TokenRefreshFailed (token kept; retry later), TokenMissing or ConfigError.
    """
    outcome = refresh_account(account, force=force, settings=settings, store=store)
    if outcome.status == "reauth_required":
        raise ReauthRequired(account)
    if not outcome.ok:
        raise TokenRefreshFailed(outcome.message)
    return outcome.refreshed


def refresh_all_accounts(
    *,
    force: bool = False,
    settings: Settings | None = None,
    store: GoogleTokenStore | None = None,
    policy: RefreshPolicy | None = None,
    sleep: Sleep = time.sleep,
) -> list[RefreshOutcome]:
    """Refresh every stored account that is due. A problem with one account (say, a row no key
    opens) is reported in its outcome and does not stop the others.

    Raises TokenMissing when no token is stored, ConfigError for a bad setting.
    """
    settings = settings or get_settings()
    TokenCipher.from_setting(settings.token_encryption_key)
    with opened_store(store, settings) as opened:
        keys = [key for key, _ in opened.list()]
        if not keys:
            raise TokenMissing()
        outcomes = []
        for key in keys:
            account = account_of(key)
            try:
                outcome = refresh_account(
                    account, force=force, settings=settings, store=opened, policy=policy, sleep=sleep
                )
            except (UndecryptableError, TokenMissing, ConfigError) as exc:
                outcome = RefreshOutcome(account, "error", False, None, str(exc))
            outcomes.append(outcome)
        return outcomes


def refresh_account(
    account: str = DEFAULT_ACCOUNT,
    *,
    force: bool = False,
    settings: Settings | None = None,
    store: GoogleTokenStore | None = None,
    policy: RefreshPolicy | None = None,
    sleep: Sleep = time.sleep,
) -> RefreshOutcome:
    """Refresh one account's token if it is due (less than `policy.margin_s` left, status `error`,
    or `force`), safely alongside concurrent callers: one refreshes, the others wait for it.

    `sleep` is how waiting happens (tests observe it). Raises TokenMissing, ConfigError and
    UndecryptableError; Google's answers are outcomes, not exceptions.
    """
    settings = settings or get_settings()
    policy = policy or RefreshPolicy()
    cipher = TokenCipher.from_setting(settings.token_encryption_key)
    token_uri = checked_endpoint(settings.google_token_uri, "GOOGLE_TOKEN_URI")
    key = token_key(account)
    with opened_store(store, settings) as opened:
        claim = _claim(opened, key, force=force, policy=policy, sleep=sleep)
        if claim.outcome == "missing":
            raise TokenMissing(account)
        if claim.outcome != "claimed" or claim.token is None or claim.lease_id is None:
            if claim.outcome in ("fresh", "busy") and claim.token is not None:
                decrypt_secrets(
                    claim.token, cipher, account
                )  # a wrong key shows on every run, not only when due
            return _unclaimed_outcome(account, claim)
        try:
            value, outcome = _refresh_claimed(
                account,
                claim.token,
                cipher=cipher,
                settings=settings,
                token_uri=token_uri,
                policy=policy,
                sleep=sleep,
            )
        except BaseException:
            opened.finish_refresh(key, claim.lease_id, claim.token)  # release the lease, row unchanged
            raise
        if not opened.finish_refresh(key, claim.lease_id, value):
            _logger().warning("google token replaced during refresh", extra={"account": account})
            return replace(
                outcome, refreshed=False, message="A new token was stored during the refresh; kept it."
            )
        return outcome


def _claim(store: GoogleTokenStore, key: str, *, force: bool, policy: RefreshPolicy, sleep: Sleep) -> Claim:
    """Claim the refresh, waiting for another invocation's refresh to finish when there is one."""
    waited_s = 0.0
    while True:
        claim = store.claim_refresh(key, margin_s=policy.margin_s, lease_s=policy.lease_s, force=force)
        if claim.outcome != "busy" or waited_s >= policy.max_wait_s:
            return claim
        waited_s += _wait_for_release(store, key, claim, sleep, limit_s=policy.max_wait_s - waited_s)
        force = False  # the refresh we waited for is the one we wanted


def _wait_for_release(store: GoogleTokenStore, key: str, claim: Claim, sleep: Sleep, limit_s: float) -> float:
    """Poll the row, with backoff, until the lease in `claim` is released or expires; seconds waited."""
    started = time.monotonic()
    limit_s = max(min(claim.wait_s, limit_s), 0.05)
    pause_s = 0.05
    while (elapsed := time.monotonic() - started) < limit_s:
        sleep(min(pause_s, limit_s - elapsed))
        current = store.read(key)
        if current is None or current.get("lease_id") != claim.lease_id:
            break
        pause_s = min(pause_s * 2, 1.0)
    return time.monotonic() - started


def _unclaimed_outcome(account: str, claim: Claim) -> RefreshOutcome:
    state = TokenState.from_value(account, claim.token or {})
    if claim.outcome == "reauth_required":
        return RefreshOutcome(account, "reauth_required", False, state.expiry, str(ReauthRequired(account)))
    if claim.outcome == "busy":
        message = "Another invocation is still refreshing this token; left it to finish."
        return RefreshOutcome(account, state.status, False, state.expiry, message)
    return RefreshOutcome(
        account, "ok", False, state.expiry, f"Valid until {iso_utc(state.expiry)}; no refresh needed."
    )


def _refresh_claimed(
    account: str,
    value: dict[str, Any],
    *,
    cipher: TokenCipher,
    settings: Settings,
    token_uri: str,
    policy: RefreshPolicy,
    sleep: Sleep,
) -> tuple[dict[str, Any], RefreshOutcome]:
    """Call Google's token endpoint for a claimed row; the row to write back and the outcome."""
    from google.auth.exceptions import RefreshError, TransportError

    secrets = decrypt_secrets(value, cipher, account)
    client = oauth_client(value, secrets, settings)
    try:
        grant, attempts = _call_token_endpoint(
            token_uri, secrets.refresh_token, client, account, policy, sleep
        )
    except RefreshError as exc:
        return _refused(account, value, exc, secrets)
    except TransportError as exc:
        cause = type(exc.__cause__ or exc).__name__
        return _failed(
            account,
            value,
            f"Google's token endpoint could not be reached in {policy.attempts} tries ({cause}); "
            "the token was kept and the next run retries.",
        )
    access_token, refresh_token, google_expiry, response = grant[:4]
    expiry = utc(google_expiry)
    fresh = TokenSecrets(refresh_token or secrets.refresh_token, access_token, secrets.client_secret)
    new_value = {
        **value,
        "secrets": fresh.encrypt(cipher),
        "expiry": iso_utc(expiry),
        "scopes": scope_list(response.get("scope")) or value.get("scopes") or [],
        "status": "ok",
        "refreshed_at": iso_utc(datetime.now(UTC)),
        "last_error": None,
    }
    _logger().info(
        "google token refreshed", extra={"account": account, "expiry": iso_utc(expiry), "attempts": attempts}
    )
    return new_value, RefreshOutcome(
        account, "ok", True, expiry, f"Refreshed; valid until {iso_utc(expiry)}."
    )


def _call_token_endpoint(
    token_uri: str,
    refresh_token: str,
    client: tuple[str, str],
    account: str,
    policy: RefreshPolicy,
    sleep: Sleep,
) -> tuple[tuple[Any, ...], int]:
    """google-auth's refresh grant (which itself retries 5xx / 429 answers); connection failures
    and timeouts are retried here with backoff. Returns the grant and the tries used."""
    import functools

    import requests
    from google.auth.exceptions import TransportError
    from google.auth.transport.requests import Request
    from google.oauth2 import reauth

    client_id, client_secret = client
    with requests.Session() as session:
        request = functools.partial(Request(session), timeout=policy.timeout_s)
        attempt = 1
        while True:
            try:
                return reauth.refresh_grant(
                    request, token_uri, refresh_token, client_id, client_secret
                ), attempt
            except TransportError as exc:
                if attempt >= policy.attempts:
                    raise
                cause = type(exc.__cause__ or exc).__name__
                _logger().warning(
                    "google token endpoint unreachable; retrying",
                    extra={"account": account, "attempt": attempt, "error": cause},
                )
                sleep(policy.backoff_s * 2 ** (attempt - 1))
                attempt += 1


def _refused(
    account: str, value: dict[str, Any], exc: RefreshError, secrets: TokenSecrets
) -> tuple[dict[str, Any], RefreshOutcome]:
    """Google answered with an error: reauth_required for a dead refresh token, else error."""
    error, description = _oauth_error(exc, secrets)
    if error in _REAUTH_ERRORS:
        _logger().error(
            "google refused the refresh token; someone must sign in again",
            extra={"account": account, "alert": REAUTH_ALERT, "oauth_error": error},
        )
        written = {**value, "status": "reauth_required", "last_error": f"{error}: {description}".rstrip(": ")}
        outcome = RefreshOutcome(
            account, "reauth_required", False, parse_utc(value.get("expiry")), str(ReauthRequired(account))
        )
        return written, outcome
    detail = f"{error}: {description}" if description else error
    kind = "kept failing" if getattr(exc, "retryable", False) else "refused the refresh"
    return _failed(
        account,
        value,
        f"Google's token endpoint {kind} ({detail}); the token was kept and the next run retries.",
    )


def _failed(account: str, value: dict[str, Any], message: str) -> tuple[dict[str, Any], RefreshOutcome]:
    _logger().warning("google token refresh failed", extra={"account": account, "error": message})
    written = {**value, "status": "error", "last_error": message}
    return written, RefreshOutcome(account, "error", False, parse_utc(value.get("expiry")), message)


def _oauth_error(exc: RefreshError, secrets: TokenSecrets) -> tuple[str, str]:
    """The OAuth `error` code and description of a refusal, cut short, with any of our secrets
    blanked (a proxy in front of Google might echo what it was sent); never the raw body."""
    body = exc.args[1] if len(exc.args) > 1 else None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        error, description = body["error"], str(body.get("error_description") or "")
        for secret in (secrets.refresh_token, secrets.access_token, secrets.client_secret):
            if secret:
                error, description = (
                    error.replace(secret, "[redacted]"),
                    description.replace(secret, "[redacted]"),
                )
        return error[:64], description[:200]
    if exc.args and str(exc.args[0]).startswith("Reauthentication is needed"):
        return "invalid_rapt", "Google asks the user to sign in again"  # google-auth keeps no body here
    return "unexpected answer", ""


def _logger() -> Any:
    from shared.logs import get_logger

    return get_logger()
