"""Google Calendar OAuth tokens: stored encrypted in `system_config`, refreshed ahead of expiry.

The public home of the token API (the seed's names included). Modules: `tokens` (the stored
token and its status), `store` (the rows over either backend), `crypto` (Fernet keys),
`refresh` (one refresher at a time), `upkeep` (the scheduled job behind `functions/gcal_refresh`),
`signin` (the first sign-in), `seed` (the seed's names).
"""

from typing import TYPE_CHECKING

from shared.lazy import lazy_exports

_HOMES = {
    "CALENDAR_SCOPES": "tokens",
    "DEFAULT_ACCOUNT": "tokens",
    "ReauthRequired": "tokens",
    "TokenMissing": "tokens",
    "TokenState": "tokens",
    "import_authorized_user": "tokens",
    "load_credentials": "tokens",
    "rotate_encryption_key": "tokens",
    "save_credentials": "tokens",
    "token_states": "tokens",
    "TokenCipher": "crypto",
    "UndecryptableError": "crypto",
    "generate_key": "crypto",
    "GoogleTokenStore": "store",
    "default_token_store": "store",
    "RefreshPolicy": "refresh",
    "TokenRefreshFailed": "refresh",
    "refresh_all_accounts": "refresh",
    "refresh_token_if_needed": "refresh",
    "TokenUpkeep": "upkeep",
    "run_initial_oauth_flow": "signin",
    "load_credentials_from_supabase": "seed",
    "save_credentials_to_supabase": "seed",
}
__all__ = [
    "CALENDAR_SCOPES",
    "DEFAULT_ACCOUNT",
    "GoogleTokenStore",
    "ReauthRequired",
    "RefreshPolicy",
    "TokenCipher",
    "TokenMissing",
    "TokenRefreshFailed",
    "TokenState",
    "TokenUpkeep",
    "UndecryptableError",
    "default_token_store",
    "generate_key",
    "import_authorized_user",
    "load_credentials",
    "load_credentials_from_supabase",
    "refresh_all_accounts",
    "refresh_token_if_needed",
    "rotate_encryption_key",
    "run_initial_oauth_flow",
    "save_credentials",
    "save_credentials_to_supabase",
    "token_states",
]
__getattr__, __dir__ = lazy_exports(__name__, _HOMES)

if TYPE_CHECKING:
    from shared.gcal.crypto import TokenCipher, UndecryptableError, generate_key
    from shared.gcal.refresh import (
        RefreshPolicy,
        TokenRefreshFailed,
        refresh_all_accounts,
        refresh_token_if_needed,
    )
    from shared.gcal.seed import load_credentials_from_supabase, save_credentials_to_supabase
    from shared.gcal.signin import run_initial_oauth_flow
    from shared.gcal.store import GoogleTokenStore, default_token_store
    from shared.gcal.tokens import (
        CALENDAR_SCOPES,
        DEFAULT_ACCOUNT,
        ReauthRequired,
        TokenMissing,
        TokenState,
        import_authorized_user,
        load_credentials,
        rotate_encryption_key,
        save_credentials,
        token_states,
    )
