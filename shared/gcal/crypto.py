"""Encryption of stored secrets with Fernet keys from `NEXUS_TOKEN_ENCRYPTION_KEY`.

The variable holds one or more Fernet keys, comma-separated: the first encrypts, every one
decrypts (cryptography's `MultiFernet`). To rotate, put a new key first and keep the old one
after it (`NEW,OLD`), run `nexus gcal rotate-key` to re-encrypt what is stored, then drop `OLD`.
Errors never include a key or a plaintext.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from shared.errors import ConfigError, NexusError

KEY_VARIABLE = "NEXUS_TOKEN_ENCRYPTION_KEY"


class UndecryptableError(NexusError):
    """A ciphertext was made with none of the configured keys (or was altered)."""

    status = 500


class TokenCipher:
    """Encrypts with the first key and decrypts with any of them."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigError(f"{KEY_VARIABLE} is not set; create a key with 'nexus gcal new-key'.")
        fernets = []
        for position, key in enumerate(keys, start=1):
            try:
                fernets.append(Fernet(key.encode()))
            except ValueError:  # also binascii.Error: the key is not url-safe base64
                raise ConfigError(
                    f"{KEY_VARIABLE} is invalid: key {position} is not a Fernet key "
                    "(32 url-safe base64-encoded bytes; create one with 'nexus gcal new-key')."
                ) from None
        self._first = fernets[0]
        self._all = MultiFernet(fernets)
        self.key_count = len(fernets)

    @classmethod
    def from_setting(cls, value: str | None) -> TokenCipher:
        """The cipher for the comma-separated key list in `NEXUS_TOKEN_ENCRYPTION_KEY`."""
        return cls([key.strip() for key in (value or "").split(",") if key.strip()])

    def encrypt(self, plaintext: str) -> str:
        return self._first.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        """The plaintext; raises UndecryptableError when no configured key opens it."""
        try:
            return self._all.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise UndecryptableError(
                f"A stored secret cannot be decrypted with any key in {KEY_VARIABLE}; "
                "set the key it was encrypted with (while rotating, list it after the new one)."
            ) from None

    def rotate(self, ciphertext: str) -> str:
        """The same plaintext encrypted with the first key."""
        try:
            return self._all.rotate(ciphertext.encode()).decode()
        except InvalidToken:
            raise UndecryptableError(
                f"A stored secret cannot be decrypted with any key in {KEY_VARIABLE}, so it cannot "
                "be re-encrypted; list the key it was encrypted with after the new one."
            ) from None

    def is_current(self, ciphertext: str) -> bool:
        """True when the first (current) key opens the ciphertext, i.e. no rotation is pending."""
        try:
            self._first.decrypt(ciphertext.encode())
        except InvalidToken:
            return False
        return True


def generate_key() -> str:
    """A new random Fernet key, ready for `NEXUS_TOKEN_ENCRYPTION_KEY`."""
    return Fernet.generate_key().decode()
