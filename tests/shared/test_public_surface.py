"""Each sub-package of `shared` says what others may use (`__all__`), every name there resolves,
and importing a package loads none of its heavy dependencies (cold starts pay on first use)."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import pytest

import shared

PACKAGES = sorted(m.name for m in pkgutil.iter_modules(shared.__path__, "shared.") if m.ispkg)
HEAVY = (
    "psycopg",
    "httpx",
    "tiktoken",
    "google.auth",
    "google.oauth2",
    "cryptography",
    "pydantic",
    "jwt",
    "mangum",
)
SEED_NAMES = {
    "chunk_text",
    "embed_text",
    "generate_summary",
    "process_knowledge_item",
    "process_message",
    "IngestWorker",
    "load_credentials_from_supabase",
    "save_credentials_to_supabase",
    "refresh_token_if_needed",
    "run_initial_oauth_flow",
}


def test_the_packages_are_the_layout_the_readme_maps() -> None:
    expected = {
        "cli",
        "gcal",
        "http",
        "ingest",
        "local",
        "process",
        "providers",
        "runtime",
        "search",
        "store",
    }
    assert {p.removeprefix("shared.") for p in PACKAGES} == expected | {"text"}


@pytest.mark.parametrize("package", ["shared", *PACKAGES])
def test_every_public_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__doc__, f"{package} has no docstring"
    names = module.__all__
    assert names, f"{package} names nothing public"
    for name in names:
        assert getattr(module, name) is not None, f"{package}.{name}"


@pytest.mark.parametrize("package", ["shared", *PACKAGES])
def test_importing_a_package_loads_nothing_heavy(package: str) -> None:
    script = (
        f"import json, sys; import {package}; heavy = {list(HEAVY)!r}; "
        "print(json.dumps(sorted({h for h in heavy for m in sys.modules if (m + '.').startswith(h + '.')})))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == [], f"import {package} loads {done.stdout.strip()}"


def test_the_seeds_functions_have_a_public_home() -> None:
    assert set(shared.__all__) >= SEED_NAMES
    for name in SEED_NAMES:
        assert callable(getattr(shared, name))
