"""The seed's Google token functions, kept with their names and signatures for code written
against the original workers. New code uses `load_credentials` / `save_credentials`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.gcal.tokens import DEFAULT_ACCOUNT, TokenMissing, TokenState, load_credentials, save_credentials

if TYPE_CHECKING:
    from google.oauth2.credentials import Credentials

__all__ = ["load_credentials_from_supabase", "save_credentials_to_supabase"]


def load_credentials_from_supabase(account: str = DEFAULT_ACCOUNT) -> Credentials | None:
    """The stored Google credentials, decrypted, or None when no token is stored (as in the seed).

    Other troubles (a token Google refused, a key that cannot decrypt it, a missing setting) raise
    with one sentence, as `load_credentials` does."""
    try:
        return load_credentials(account)
    except TokenMissing:
        return None


def save_credentials_to_supabase(credentials: Credentials, account: str = DEFAULT_ACCOUNT) -> TokenState:
    """Encrypt and store the credentials (see `save_credentials`); returns the stored state."""
    return save_credentials(credentials, account)
