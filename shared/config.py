"""Settings: one pydantic model read from the environment (plus `.env.local` and `.env`).

Nothing is read at import time. `get_settings()` loads once per process and caches; handlers
call it on their first invocation so a bad setting fails that call with one clear sentence.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from shared.errors import ConfigError

# Environment variable → field name. The variable names are the public contract.
ENV_VARS: dict[str, str] = {
    "DATABASE_URL": "database_url",
    "SUPABASE_URL": "supabase_url",
    "SUPABASE_SERVICE_ROLE_KEY": "supabase_service_role_key",
    "SUPABASE_SECRET_KEY": "supabase_secret_key",
    "SUPABASE_JWT_SECRET": "supabase_jwt_secret",
    "SUPABASE_JWKS_URL": "supabase_jwks_url",
    "NEXUS_INGEST_API_KEYS": "ingest_api_keys",
    "NEXUS_WEBHOOK_SECRET": "webhook_secret",
    "NEXUS_QUEUE_URL": "queue_url",
    "NEXUS_MAX_BODY_BYTES": "max_body_bytes",
    "NEXUS_MAX_ATTEMPTS": "max_attempts",
    "NEXUS_EMBEDDING_PROVIDER": "embedding_provider",
    "NEXUS_SUMMARY_PROVIDER": "summary_provider",
    "NEXUS_EMBEDDING_MODEL": "embedding_model",
    "NEXUS_EMBEDDING_DIMENSIONS": "embedding_dimensions",
    "NEXUS_SUMMARY_MODEL": "summary_model",
    "NEXUS_CHUNK_TOKENS": "chunk_tokens",
    "NEXUS_CHUNK_OVERLAP": "chunk_overlap",
    "OPENAI_API_KEY": "openai_api_key",
    "OPENAI_BASE_URL": "openai_base_url",
    "GOOGLE_CLIENT_ID": "google_client_id",
    "GOOGLE_CLIENT_SECRET": "google_client_secret",
    "GOOGLE_TOKEN_URI": "google_token_uri",
    "GOOGLE_AUTH_URI": "google_auth_uri",
    "NEXUS_TOKEN_ENCRYPTION_KEY": "token_encryption_key",
    "NEXUS_HOME": "home",
    "NEXUS_RETRY_BASE_SECONDS": "retry_base_s",
    "NEXUS_EMBEDDING_CONCURRENCY": "embedding_concurrency",
    "NEXUS_SUMMARY_CONCURRENCY": "summary_concurrency",
    "NEXUS_BATCH_TOKENS": "batch_tokens",
    "NEXUS_WRITE_CONNECTIONS": "write_connections",
    "NEXUS_PROVIDER_PROBE_SECONDS": "provider_probe_s",
    "NEXUS_MAX_ITEM_TOKENS": "max_item_tokens",
    "NEXUS_MAX_FILE_BYTES": "max_file_bytes",
    "NEXUS_PDF_PAGE_BATCH": "pdf_page_batch",
    "NEXUS_CHUNK_HEADINGS": "chunk_headings",
    "NEXUS_PRICES": "prices",
    "NEXUS_RATE_LIMITS": "rate_limits",
    "NEXUS_DASHBOARD_TOKEN": "dashboard_token",
}
_FIELD_TO_ENV = {field: env for env, field in ENV_VARS.items()}


class Settings(BaseModel):
    """Every setting of every function; each function reads only the ones it needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: str | None = None
    supabase_url: str | None = None
    # A secret key (`sb_secret_…`), Supabase's name for the server key since its new API keys.
    supabase_secret_key: str | None = Field(default=None, repr=False)
    # The server key PostgREST calls carry: the legacy service_role JWT or a secret key, from
    # SUPABASE_SERVICE_ROLE_KEY, else SUPABASE_SECRET_KEY (both set must be the same key).
    supabase_service_role_key: str | None = Field(default=None, repr=False, validate_default=True)
    supabase_jwt_secret: str | None = Field(default=None, repr=False)
    # Where ingest reads the project's public signing keys (ES256/RS256 user JWTs); by default
    # <SUPABASE_URL>/auth/v1/.well-known/jwks.json.
    supabase_jwks_url: str | None = None
    ingest_api_keys: tuple[str, ...] = Field(default=(), repr=False)
    webhook_secret: str | None = Field(default=None, repr=False)
    queue_url: str | None = None
    max_body_bytes: int = Field(default=5 * 1024 * 1024, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    embedding_provider: Literal["openai", "local"] = "openai"
    summary_provider: Literal["openai", "local"] = "openai"
    embedding_model: str = "text-embedding-3-small"
    embedding_dimensions: int = Field(default=1536, gt=0)
    summary_model: str = "gpt-4o-mini"
    chunk_tokens: int = Field(default=350, ge=16, le=8191)
    chunk_overlap: int = Field(default=0, ge=0)
    openai_api_key: str | None = Field(default=None, repr=False)
    openai_base_url: str | None = None
    google_client_id: str | None = None
    google_client_secret: str | None = Field(default=None, repr=False)
    google_token_uri: str = "https://oauth2.googleapis.com/token"
    google_auth_uri: str = "https://accounts.google.com/o/oauth2/auth"
    token_encryption_key: str | None = Field(default=None, repr=False)
    home: str = ".nexus"
    retry_base_s: float = Field(default=30.0, ge=0)
    embedding_concurrency: int = Field(default=4, ge=1, le=64)
    # Item summaries in flight at once (a remote summariser; the local one runs one at a time).
    summary_concurrency: int = Field(default=8, ge=1, le=64)
    # Work claimed per batch: enough for several full embedding requests in flight at once.
    batch_tokens: int = Field(default=600_000, ge=1000)
    # Connections a process writes chunks and moves rows into the HNSW graph with, in parallel:
    # each HNSW insert uses a server core, so more than the database's cores gains nothing.
    write_connections: int = Field(default=2, ge=1, le=16)
    # While the fleet is backed off from a provider, one probe goes out at least this often.
    provider_probe_s: float = Field(default=120.0, ge=1, le=3600)
    # The largest item ingest accepts, in (estimated) cl100k tokens.
    max_item_tokens: int = Field(default=1_000_000, ge=1000)
    # The largest file (PDF, DOCX…) ingest accepts, decoded; over HTTP the body limit comes first.
    max_file_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    # A PDF's pages are extracted this many at a time, each batch kept as a checkpoint, so a long
    # document goes on across invocations from where the last one stopped.
    pdf_page_batch: int = Field(default=25, ge=1, le=10_000)
    # Each chunk's text led by the heading path it sits under, so the path is embedded, indexed
    # and counted with it (`shared.text.context`). Off by default: on the PostgreSQL manual it
    # lifted vector recall@10 by 0.03-0.05 for 7% more chunks, 3% more tokens and 7-16% more
    # processing time (bench/README.md).
    chunk_headings: bool = False
    # USD per million tokens, (input, output), by model, over the defaults in
    # shared.providers.prices: JSON such as {"my-model": {"input": 0.1, "output": 0.4}}.
    prices: dict[str, tuple[float, float]] = Field(default_factory=dict)

    # The account's limits per model, shared by the whole fleet through Postgres: JSON such as
    # {"text-embedding-3-small": {"tpm": 1000000, "rpm": 3000, "burst_s": 10}} (burst_s: how many
    # seconds of the limits may go out at once, default 10). Models not listed are not limited.
    rate_limits: dict[str, tuple[float, float, float]] = Field(default_factory=dict)
    # What `nexus dashboard` asks of every request (required when it listens beyond loopback).
    dashboard_token: str | None = Field(default=None, repr=False)

    @field_validator("rate_limits", mode="before")
    @classmethod
    def _read_rate_limits(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        table = _models_json(value, '{"text-embedding-3-small": {"tpm": 1000000, "rpm": 3000}}')
        limits: dict[str, tuple[float, float, float]] = {}
        for model, limit in table.items():
            numbers = (
                [limit.get("tpm"), limit.get("rpm"), limit.get("burst_s", 10)]
                if isinstance(limit, dict)
                else []
            )
            if not numbers or not all(isinstance(n, int | float) and n > 0 for n in numbers):
                raise ValueError(
                    f'the limits of {model} need "tpm" and "rpm" (and optionally "burst_s"), each above 0'
                )
            limits[str(model)] = (float(numbers[0]), float(numbers[1]), float(numbers[2]))
        return limits

    @field_validator("prices", mode="before")
    @classmethod
    def _read_prices(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        table = _models_json(value, '{"gpt-4o-mini": {"input": 0.15, "output": 0.6}}')
        prices: dict[str, tuple[float, float]] = {}
        for model, price in table.items():
            if not isinstance(price, dict) or not isinstance(price.get("input"), int | float):
                raise ValueError(f'the price of {model} needs "input" (USD per million tokens)')
            output = price.get("output", 0)
            if not isinstance(output, int | float) or price["input"] < 0 or output < 0:
                raise ValueError(
                    f"the prices of {model} must be numbers of USD per million tokens, not negative"
                )
            prices[str(model)] = (float(price["input"]), float(output))
        return prices

    @field_validator("ingest_api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value

    @field_validator("supabase_secret_key")
    @classmethod
    def _secret_key_is_a_server_key(cls, value: str | None) -> str | None:
        return _server_key(value)

    @field_validator("supabase_service_role_key")
    @classmethod
    def _one_server_key(cls, value: str | None, info: ValidationInfo) -> str | None:
        value = _server_key(value)
        secret_key = info.data.get("supabase_secret_key")
        if value and secret_key and value != secret_key:
            raise ValueError("it differs from SUPABASE_SECRET_KEY; set one of them, or both to the same key")
        return value or secret_key

    @field_validator("chunk_overlap")
    @classmethod
    def _overlap_below_chunk(cls, value: int, info: object) -> int:
        chunk_tokens = getattr(info, "data", {}).get("chunk_tokens", 350)
        if value >= chunk_tokens:
            raise ValueError("must be smaller than NEXUS_CHUNK_TOKENS")
        return value

    def require(self, field: str) -> str:
        """Return a string setting, or raise ConfigError naming its variable when it is unset."""
        value = getattr(self, field)
        if not value:
            raise ConfigError(f"{_FIELD_TO_ENV[field]} is not set.")
        return str(value)

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve()


def _models_json(value: str, example: str) -> dict[str, Any]:
    """A setting's JSON object of models (each model's value is checked by the caller)."""
    try:
        table = json.loads(value)
    except ValueError:
        raise ValueError(f"it must be JSON such as {example}") from None
    if not isinstance(table, dict):
        raise ValueError("it must be a JSON object of models")
    return table


def _server_key(value: str | None) -> str | None:
    """A Supabase key the store may call PostgREST with: a publishable key is refused (it runs as
    `anon`, which may call none of the store's functions)."""
    if value and value.startswith("sb_publishable_"):
        raise ValueError(
            "a publishable key (sb_publishable_…) is not a server key; "
            "use a secret key (sb_secret_…) or the legacy service_role key"
        )
    return value


def _read_dotenv_files(directory: Path) -> dict[str, str]:
    """Values from `.env.local` then `.env` (the first one wins); the real environment beats both."""
    from dotenv import dotenv_values

    values: dict[str, str] = {}
    for name in (".env", ".env.local"):
        path = directory / name
        if path.is_file():
            values.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    return values


def load_settings(environ: Mapping[str, str] | None = None, directory: Path | None = None) -> Settings:
    """Build Settings from `environ` (default: os.environ merged over the dotenv files).

    Raises ConfigError with one sentence naming the first bad variable.
    """
    if environ is None:
        merged = _read_dotenv_files(directory or Path.cwd())
        merged.update(os.environ)
        environ = merged
    raw = {field: environ[env] for env, field in ENV_VARS.items() if environ.get(env, "") != ""}
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        variable = _FIELD_TO_ENV.get(field, field)
        shown = raw.get(field)
        secret = variable.endswith(("KEY", "KEYS", "SECRET", "TOKEN"))
        got = "" if shown is None or secret else f" (got {shown!r})"
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{variable} is invalid: {message}{got}.") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, loaded on first use."""
    return load_settings()


def reset_settings() -> None:
    """Forget cached settings (tests and `nexus dev` change the environment)."""
    get_settings.cache_clear()
