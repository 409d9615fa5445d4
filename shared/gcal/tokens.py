"""Google Calendar OAuth tokens as stored: encrypted in `system_config`, readable status beside.

Key `google_oauth_token` holds account `default`; `google_oauth_token:<name>` holds the others.
The value is JSON (see the migration `20261125000500_google_tokens.sql`): `secrets` is the Fernet
ciphertext (`shared.gcal.crypto`, `NEXUS_TOKEN_ENCRYPTION_KEY`) of the access token, refresh token and
client secret; `client_id`, `expiry`, `scopes`, `status` (`ok` / `reauth_required` / `error`),
`refreshed_at` and `last_error` stay readable beside it (and `lease_id` / `lease_until` while a
refresh runs, see `shared.gcal.refresh`).

This module reads and writes them: `save_credentials`, `load_credentials`,
`import_authorized_user`, `token_states`, `rotate_encryption_key`. Refreshing is
`shared.gcal.refresh`, the first sign-in `shared.gcal.signin`; `shared.gcal` is the public home of
all of them. Nothing here logs, prints or raises with a token or key in it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shared.config import Settings, get_settings
from shared.errors import ConfigError, NexusError
from shared.gcal.crypto import TokenCipher, UndecryptableError
from shared.gcal.store import GoogleTokenStore, default_token_store

if TYPE_CHECKING:
    from google.oauth2.credentials import Credentials

TOKEN_KEY = "google_oauth_token"
DEFAULT_ACCOUNT = "default"
CALENDAR_SCOPES = ("https://www.googleapis.com/auth/calendar",)
_ACCOUNT_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class TokenMissing(NexusError):
    """No token is stored for the account."""

    def __init__(self, account: str = DEFAULT_ACCOUNT) -> None:
        flag = account_flag(account)
        super().__init__(
            f"No Google token is stored{for_account(account)}; "
            f"run 'nexus gcal init{flag}' or 'nexus gcal import FILE{flag}'."
        )


class ReauthRequired(NexusError):
    """Google refused the stored refresh token; a person has to sign in again."""

    def __init__(self, account: str = DEFAULT_ACCOUNT) -> None:
        super().__init__(
            f"Google refused the stored refresh token{for_account(account)} (revoked or expired); "
            f"run 'nexus gcal init{account_flag(account)}' to sign in again."
        )


@dataclass(frozen=True)
class TokenSecrets:
    """The encrypted part of a token row; its repr shows no value."""

    refresh_token: str = field(repr=False)
    access_token: str | None = field(default=None, repr=False)
    client_secret: str | None = field(default=None, repr=False)

    def encrypt(self, cipher: TokenCipher) -> str:
        plain = {
            "refresh_token": self.refresh_token,
            "access_token": self.access_token,
            "client_secret": self.client_secret,
        }
        return cipher.encrypt(json.dumps(plain))

    @classmethod
    def decrypt(cls, ciphertext: str, cipher: TokenCipher) -> TokenSecrets:
        plain = json.loads(cipher.decrypt(ciphertext))
        return cls(plain["refresh_token"], plain.get("access_token"), plain.get("client_secret"))


@dataclass(frozen=True)
class TokenState:
    """The readable fields of a stored token: what `nexus gcal status` shows."""

    account: str
    status: str
    expiry: datetime | None
    scopes: tuple[str, ...]
    refreshed_at: datetime | None
    last_error: str | None
    client_id: str | None
    is_refreshing: bool
    key: str = "unchecked"  # current | older | unreadable | unchecked: which key opens the secrets

    @classmethod
    def from_value(cls, account: str, value: dict[str, Any], cipher: TokenCipher | None = None) -> TokenState:
        return cls(
            account=account,
            status=str(value.get("status") or "ok"),
            expiry=parse_utc(value.get("expiry")),
            scopes=tuple(value.get("scopes") or ()),
            refreshed_at=parse_utc(value.get("refreshed_at")),
            last_error=value.get("last_error"),
            client_id=value.get("client_id"),
            is_refreshing="lease_id" in value,
            key=_key_state(str(value.get("secrets") or ""), cipher),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "status": self.status,
            "expiry": iso_utc(self.expiry),
            "scopes": list(self.scopes),
            "refreshed_at": iso_utc(self.refreshed_at),
            "last_error": self.last_error,
            "client_id": self.client_id,
            "refreshing": self.is_refreshing,
            "key": self.key,
        }


# --- accounts and keys ---


def token_key(account: str = DEFAULT_ACCOUNT) -> str:
    """The system_config key of an account's token."""
    if account == DEFAULT_ACCOUNT:
        return TOKEN_KEY
    if not _ACCOUNT_NAME.fullmatch(account):
        raise NexusError(
            f"Account name {account!r} is not valid; use up to 64 letters, digits, '.', '_', '-' or '@'."
        )
    return f"{TOKEN_KEY}:{account}"


def account_of(key: str) -> str:
    return DEFAULT_ACCOUNT if key == TOKEN_KEY else key.partition(":")[2]


def for_account(account: str) -> str:
    return "" if account == DEFAULT_ACCOUNT else f" for account {account!r}"


def account_flag(account: str) -> str:
    return "" if account == DEFAULT_ACCOUNT else f" --account {account}"


# --- reading and writing ---


def save_credentials(
    credentials: Credentials,
    account: str = DEFAULT_ACCOUNT,
    *,
    settings: Settings | None = None,
    store: GoogleTokenStore | None = None,
) -> TokenState:
    """Encrypt and store google-auth credentials as the account's token (status ok).

    The OAuth client comes from the credentials, else GOOGLE_CLIENT_ID / GOOGLE_CLIENT_SECRET.
    Replaces any stored token, including one marked reauth_required.
    """
    settings = settings or get_settings()
    cipher = TokenCipher.from_setting(settings.token_encryption_key)
    key = token_key(account)
    if not credentials.refresh_token:
        raise NexusError(
            "Google gave no refresh token, so the token could not be kept fresh; revoke Nexus Workers' "
            "access at https://myaccount.google.com/permissions and run 'nexus gcal init' again."
        )
    client_id = credentials.client_id or settings.require("google_client_id")
    client_secret = credentials.client_secret or settings.require("google_client_secret")
    secrets = TokenSecrets(credentials.refresh_token, credentials.token, client_secret)
    expiry = utc(credentials.expiry) if credentials.token else None
    value = {
        "secrets": secrets.encrypt(cipher),
        "client_id": client_id,
        "expiry": iso_utc(expiry),
        "scopes": scope_list(credentials.granted_scopes or credentials.scopes),
        "status": "ok",
        "refreshed_at": iso_utc(datetime.now(UTC)) if credentials.token else None,
        "last_error": None,
    }
    with opened_store(store, settings) as opened:
        opened.put(key, value)
    return TokenState.from_value(account, value, cipher)


def load_credentials(
    account: str = DEFAULT_ACCOUNT, *, settings: Settings | None = None, store: GoogleTokenStore | None = None
) -> Credentials:
    """The account's google-auth credentials, decrypted (the access token may be near expiry:
    call `refresh_token_if_needed()` first when it must be fresh).

    Raises TokenMissing, ReauthRequired, UndecryptableError or ConfigError, each one sentence.
    """
    settings = settings or get_settings()
    cipher = TokenCipher.from_setting(settings.token_encryption_key)
    with opened_store(store, settings) as opened:
        value = opened.read(token_key(account))
    if value is None:
        raise TokenMissing(account)
    if value.get("status") == "reauth_required":
        raise ReauthRequired(account)
    secrets = decrypt_secrets(value, cipher, account)
    return _credentials(value, secrets, settings)


def import_authorized_user(
    path: Path,
    account: str = DEFAULT_ACCOUNT,
    *,
    settings: Settings | None = None,
    store: GoogleTokenStore | None = None,
) -> TokenState:
    """Store the token in a Google `authorized_user` JSON file (gcloud's application default
    credentials, or google-auth's `Credentials.to_json()`). Makes no call to Google."""
    from google.oauth2.credentials import Credentials

    info = _read_authorized_user(path)
    scopes = scope_list(info.get("scopes") or info.get("scope")) or None
    expiry = parse_utc(info.get("expiry"))
    credentials = Credentials(
        token=info.get("token") or info.get("access_token"),
        refresh_token=info["refresh_token"],
        client_id=info.get("client_id"),
        client_secret=info.get("client_secret"),
        scopes=scopes,
        expiry=expiry.replace(tzinfo=None) if expiry else None,
    )
    return save_credentials(credentials, account, settings=settings, store=store)


def _read_authorized_user(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not a UTF-8 text file"
        raise NexusError(f"Cannot read {path}: {reason}.") from None
    try:
        info = json.loads(text)
    except ValueError:
        raise NexusError(f"{path} is not JSON; expected a Google authorized_user file.") from None
    kind = info.get("type", "authorized_user") if isinstance(info, dict) else None
    if kind != "authorized_user":
        raise NexusError(
            f"{path} is not a Google authorized_user file (type {kind!r}); create one with "
            "'nexus gcal init' or 'gcloud auth application-default login'."
        )
    if not isinstance(info.get("refresh_token"), str) or not info["refresh_token"]:
        raise NexusError(f"{path} has no refresh_token; a token without one cannot be kept fresh.")
    return info


def token_states(
    *, settings: Settings | None = None, store: GoogleTokenStore | None = None, require_key: bool = True
) -> list[TokenState]:
    """The readable fields of every stored token, and which configured key opens each.

    With `require_key=False` and NEXUS_TOKEN_ENCRYPTION_KEY unset, the states come with key
    `unchecked` instead of a ConfigError (the readable fields need no key).
    """
    settings = settings or get_settings()
    has_key = bool(settings.token_encryption_key)
    cipher = TokenCipher.from_setting(settings.token_encryption_key) if has_key or require_key else None
    with opened_store(store, settings) as opened:
        rows = opened.list()
    if not rows:
        raise TokenMissing()
    return [TokenState.from_value(account_of(key), value, cipher) for key, value in rows]


def rotate_encryption_key(*, settings: Settings | None = None, store: GoogleTokenStore | None = None) -> int:
    """Re-encrypt every stored token with the first key of NEXUS_TOKEN_ENCRYPTION_KEY.

    Checks first that every row opens with the configured keys, so either all rows are
    re-encrypted or none is. Returns how many rows were rewritten.
    """
    settings = settings or get_settings()
    cipher = TokenCipher.from_setting(settings.token_encryption_key)
    with opened_store(store, settings) as opened:
        rows = opened.list()
        if not rows:
            raise TokenMissing()
        for key, value in rows:
            decrypt_secrets(value, cipher, account_of(key))
        return sum(_reencrypt(opened, key, cipher) for key, _ in rows)


def _reencrypt(store: GoogleTokenStore, key: str, cipher: TokenCipher) -> bool:
    """Rotate one row; a refresh writing the row meanwhile makes us read it again."""
    for _ in range(5):
        value = store.read(key)
        if value is None:
            return False
        old = str(value["secrets"])
        if store.reencrypt(key, old, cipher.rotate(old)):
            return True
    raise NexusError(
        f"The token{for_account(account_of(key))} kept changing while it was re-encrypted; "
        "run 'nexus gcal rotate-key' again."
    )


# --- shared by the token modules ---


@contextmanager
def opened_store(store: GoogleTokenStore | None, settings: Settings) -> Iterator[GoogleTokenStore]:
    """The given store, or one built from the settings and closed afterwards."""
    if store is not None:
        yield store
        return
    owned = default_token_store(settings)
    try:
        yield owned
    finally:
        owned.close()


def decrypt_secrets(value: dict[str, Any], cipher: TokenCipher, account: str) -> TokenSecrets:
    try:
        return TokenSecrets.decrypt(str(value.get("secrets") or ""), cipher)
    except UndecryptableError:
        raise UndecryptableError(
            f"The stored Google token{for_account(account)} cannot be decrypted with "
            "NEXUS_TOKEN_ENCRYPTION_KEY; set the key it was encrypted with "
            "(while rotating, list it after the new one)."
        ) from None


def oauth_client(value: dict[str, Any], secrets: TokenSecrets, settings: Settings) -> tuple[str, str]:
    """The OAuth client (id, secret) to refresh with: the row's own wins over the settings' one,
    because a refresh token only works with the client it was issued to."""
    client_id = value.get("client_id") or settings.require("google_client_id")
    client_secret = secrets.client_secret or settings.require("google_client_secret")
    return str(client_id), client_secret


def _credentials(value: dict[str, Any], secrets: TokenSecrets, settings: Settings) -> Credentials:
    """google-auth credentials for a row, for callers of the Calendar API."""
    from google.oauth2.credentials import Credentials

    client_id, client_secret = oauth_client(value, secrets, settings)
    expiry = parse_utc(value.get("expiry"))
    return Credentials(
        token=secrets.access_token,
        refresh_token=secrets.refresh_token,
        token_uri=checked_endpoint(settings.google_token_uri, "GOOGLE_TOKEN_URI"),
        client_id=client_id,
        client_secret=client_secret,
        scopes=list(value.get("scopes") or ()) or None,
        expiry=expiry.replace(tzinfo=None) if expiry else None,  # google-auth wants naive UTC
    )


def checked_endpoint(url: str, variable: str) -> str:
    """The URL if it is https (or plain http to this machine); tokens never cross a network in clear."""
    parts = urlsplit(url)
    if (parts.scheme == "https" and parts.netloc) or (
        parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS
    ):
        return url
    shown = f"{parts.scheme}://{parts.hostname}" if parts.hostname else repr(parts.scheme)
    raise ConfigError(f"{variable} must be an https URL (plain http only for localhost); got {shown}.")


def _key_state(ciphertext: str, cipher: TokenCipher | None) -> str:
    if cipher is None:
        return "unchecked"
    if cipher.is_current(ciphertext):
        return "current"
    try:
        cipher.decrypt(ciphertext)
    except UndecryptableError:
        return "unreadable"
    return "older"


def scope_list(scopes: Any) -> list[str]:
    """Scopes as a sorted list, from a list or a space-separated string (OAuth's `scope`)."""
    if isinstance(scopes, str):
        scopes = scopes.split()
    return sorted({str(scope) for scope in scopes or ()})


def utc(moment: datetime | None) -> datetime | None:
    """google-auth's naive-UTC datetimes, made timezone-aware, to the second (as stored)."""
    if moment is None:
        return None
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return aware.replace(microsecond=0)


def iso_utc(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_utc(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return utc(datetime.fromisoformat(text))
    except ValueError:
        return None
