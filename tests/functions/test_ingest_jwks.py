"""Ingest with Supabase's asymmetric user JWTs (ES256, RS256), through the real Lambda handler fed
function-URL events, against a local JWKS endpoint (`tests.support.jwks`) serving keys the tests
generate, and the real embedded Postgres.

Then the key set's cache on its own (`shared.http.jwks.SigningKeys`), still over real HTTP, with a
clock the test moves instead of waiting out the refetch interval.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from shared.config import reset_settings
from shared.http.jwks import JwksUnavailable, SigningKeys, forget_signing_keys
from tests.conftest import API_KEY, ROOT, count_items, load_event, load_function
from tests.support.json_logs import captured_logs
from tests.support.jwks import JwksServer, SigningKey, new_key

LEGACY_SECRET = "legacy-jwt-secret-with-at-least-32-characters"


@pytest.fixture(autouse=True)
def _fresh_key_sets() -> Iterator[None]:
    """Each test's server may get a port an earlier one had: no key set outlives its test."""
    forget_signing_keys()
    yield
    forget_signing_keys()


@pytest.fixture(scope="module")
def es256() -> SigningKey:
    return new_key("ES256")


@pytest.fixture(scope="module")
def rs256() -> SigningKey:
    return new_key("RS256")


@pytest.fixture
def jwks(es256: SigningKey, rs256: SigningKey) -> Iterator[JwksServer]:
    with JwksServer(es256, rs256) as server:
        yield server


@pytest.fixture
def make_ingest(function_env: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """`make_ingest(**env)`: the ingest function with these variables set (on the test database)."""
    made: list[Any] = []

    def make(**env: str) -> Any:
        for name, value in env.items():
            function_env.setenv(name, value)
        reset_settings()
        made.append(load_function("ingest"))
        return made[-1]

    yield make
    for module in made:
        store = module.endpoint.store
        if store is not None and hasattr(store, "holder"):
            store.holder.close()


@pytest.fixture
def ingest(make_ingest: Callable[..., Any], jwks: JwksServer) -> Any:
    """Ingest trusting the project at `SUPABASE_URL` (the JWKS server)."""
    return make_ingest(SUPABASE_URL=jwks.url)


def item(client_id: uuid.UUID) -> dict[str, Any]:
    return {"client_id": str(client_id), "source": "notes/a.md", "content": "# Title\n\nSome text."}


def call(module: Any, body: Any, token: str) -> tuple[int, dict[str, str], Any]:
    event = load_event("function_url_ingest.json")
    event["headers"]["authorization"] = f"Bearer {token}"
    event["body"] = json.dumps(body)
    result = module.handler(event, None)
    headers = {k.lower(): v for k, v in result.get("headers", {}).items()}
    text = base64.b64decode(result["body"]).decode() if result.get("isBase64Encoded") else result["body"]
    return result["statusCode"], headers, json.loads(text) if text else None


def assert_unauthorized(status: int, headers: dict[str, str], problem: Any) -> None:
    assert (status, headers["content-type"]) == (401, "application/problem+json"), problem
    assert headers["www-authenticate"].startswith("Bearer")
    assert problem["status"] == 401 and problem["detail"].count(".") == 1 and problem["detail"].endswith(".")


# --- accepted tokens ---


@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
def test_service_role_token_signed_by_a_project_key_writes_for_any_client(
    ingest: Any, jwks: JwksServer, admin: Any, client_id: uuid.UUID, algorithm: str, request: Any
) -> None:
    key: SigningKey = request.getfixturevalue(algorithm.lower())
    status, _, body = call(ingest, item(client_id), key.sign({"role": "service_role"}))
    assert status == 201, body
    assert count_items(admin, client_id) == 1


@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
def test_user_token_writes_only_for_its_own_client(
    ingest: Any, admin: Any, client_id: uuid.UUID, algorithm: str, request: Any
) -> None:
    key: SigningKey = request.getfixturevalue(algorithm.lower())
    other = uuid.uuid4()
    admin.execute("insert into clients (id) values (%s)", (other,))
    token = key.sign(
        {"role": "authenticated", "sub": str(uuid.uuid4()), "app_metadata": {"client_id": str(client_id)}}
    )
    assert call(ingest, item(client_id), token)[0] == 201
    status, headers, problem = call(ingest, item(other), token)
    assert (status, headers["content-type"], problem["status"]) == (403, "application/problem+json", 403)
    assert count_items(admin, other) == 0


def test_the_key_set_is_fetched_once_and_kept_for_warm_invocations(
    ingest: Any,
    make_ingest: Callable[..., Any],
    jwks: JwksServer,
    es256: SigningKey,
    rs256: SigningKey,
    client_id: uuid.UUID,
) -> None:
    assert jwks.fetches == 0  # nothing at import, nor before the first token
    for key in (es256, rs256, es256, rs256, es256):
        assert call(ingest, item(client_id), key.sign({"role": "service_role"}))[0] == 201
    assert jwks.fetches == 1
    again = make_ingest()  # another warm handler of the same process
    assert call(again, item(client_id), es256.sign({"role": "service_role"}))[0] == 201
    assert jwks.fetches == 1


def test_api_key_requests_never_fetch_the_key_set(
    ingest: Any, jwks: JwksServer, client_id: uuid.UUID
) -> None:
    assert call(ingest, item(client_id), API_KEY)[0] == 201
    assert jwks.fetches == 0


def test_a_rotated_key_is_fetched_once_then_accepted(
    ingest: Any, jwks: JwksServer, es256: SigningKey, client_id: uuid.UUID
) -> None:
    assert call(ingest, item(client_id), es256.sign({"role": "service_role"}))[0] == 201
    rotated = jwks.publish(new_key("ES256"))  # the project's new key appears after the set was kept
    status, _, body = call(ingest, item(client_id), rotated.sign({"role": "service_role"}))
    assert status == 201, body
    assert jwks.fetches == 2
    assert call(ingest, item(client_id), rotated.sign({"role": "service_role"}))[0] == 201
    assert jwks.fetches == 2


def test_a_flood_of_unknown_kids_costs_one_fetch_per_interval(
    ingest: Any, jwks: JwksServer, es256: SigningKey, admin: Any, client_id: uuid.UUID
) -> None:
    assert call(ingest, item(client_id), es256.sign({"role": "service_role"}))[0] == 201
    stranger = new_key("ES256")
    for _ in range(25):
        forged = SigningKey(str(uuid.uuid4()), "ES256", stranger.private_key)
        status, headers, problem = call(ingest, item(client_id), forged.sign({"role": "service_role"}))
        assert_unauthorized(status, headers, problem)
        assert "does not publish" in problem["detail"]
    assert jwks.fetches == 2  # the first fill, then one refetch in the interval
    assert count_items(admin, client_id) == 1


# --- refused tokens ---


def _none_token(claims: dict[str, Any], kid: str) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{part(claims)}."


def _refused_tokens(es256: SigningKey, rs256: SigningKey) -> dict[str, str]:
    now = int(time.time())
    service = {"role": "service_role"}
    impostor = SigningKey(es256.kid, "ES256", new_key("ES256").private_key)  # same kid, other key
    return {
        "expired-60s-ago": es256.sign({**service, "exp": now - 60}),
        "nbf-60s-ahead": rs256.sign({**service, "nbf": now + 60}),
        "no-exp": es256.sign(service, expires_in_s=None),
        "signed-by-another-key-same-kid": impostor.sign(service),
        "signed-by-another-project": new_key("RS256").sign(service),
        "no-kid": jwt.encode({**service, "exp": now + 600}, es256.private_key, algorithm="ES256"),
        "rs256-header-on-an-ec-key": _claims_resigned(es256, rs256),
        "alg-none": _none_token({**service, "exp": now + 600}, es256.kid),
        "hs256-without-a-secret": jwt.encode(
            {**service, "exp": now + 600}, LEGACY_SECRET, algorithm="HS256", headers={"kid": es256.kid}
        ),
        "role-not-a-string": es256.sign({"role": ["service_role"]}),
        "client-id-not-a-uuid": es256.sign({"role": "authenticated", "client_id": "nope"}),
    }


def _claims_resigned(es256: SigningKey, rs256: SigningKey) -> str:
    """A token that names the EC key's kid but is RS256 (a key-confusion attempt)."""
    return rs256.sign({"role": "service_role"}, kid=es256.kid)


REFUSED = [
    "expired-60s-ago",
    "nbf-60s-ahead",
    "no-exp",
    "signed-by-another-key-same-kid",
    "signed-by-another-project",
    "no-kid",
    "rs256-header-on-an-ec-key",
    "alg-none",
    "hs256-without-a-secret",
    "role-not-a-string",
    "client-id-not-a-uuid",
]


@pytest.mark.parametrize("case", REFUSED)
def test_bad_tokens_are_401_with_one_sentence(
    ingest: Any, es256: SigningKey, rs256: SigningKey, admin: Any, client_id: uuid.UUID, case: str
) -> None:
    token = _refused_tokens(es256, rs256)[case]
    status, headers, problem = call(ingest, item(client_id), token)
    assert_unauthorized(status, headers, problem)
    assert count_items(admin, client_id) == 0


def test_times_keep_30_seconds_of_leeway(ingest: Any, es256: SigningKey, client_id: uuid.UUID) -> None:
    token = es256.sign({"role": "service_role", "exp": int(time.time()) - 10})
    assert call(ingest, item(client_id), token)[0] == 201


# --- Supabase unreachable ---


@pytest.mark.parametrize("failure", ["unreachable", "error-status"])
def test_unreachable_key_set_is_503_with_retry_after(
    make_ingest: Callable[..., Any],
    es256: SigningKey,
    admin: Any,
    client_id: uuid.UUID,
    failure: str,
) -> None:
    server = JwksServer(es256).start()
    url = server.url
    if failure == "unreachable":
        server.stop()  # its port now refuses connections
    else:
        server.status = 503
    token = es256.sign({"role": "service_role"})
    try:
        module = make_ingest(SUPABASE_URL=url)
        with captured_logs() as logs:
            status, headers, problem = call(module, item(client_id), token)
            again = call(module, item(client_id), token)  # inside the retry wait: no new attempt
    finally:
        server.stop()
    assert (status, headers["content-type"]) == (503, "application/problem+json"), problem
    assert int(headers["retry-after"]) >= 1
    assert "signing keys" in problem["detail"] and "Traceback" not in json.dumps(problem)
    assert again[0] == 503 and int(again[1]["retry-after"]) >= 1
    assert server.fetches == (0 if failure == "unreachable" else 1)
    assert count_items(admin, client_id) == 0
    (record,) = logs.records()  # one attempt, logged once, without the token
    assert record["message"] == "supabase signing keys could not be fetched" and record["jwks_url"] == url + (
        "/auth/v1/.well-known/jwks.json"
    )
    assert token not in logs.text and token.split(".")[1] not in logs.text


# --- legacy HS256 beside the signing keys, and where the keys are read from ---


def test_legacy_hs256_secret_still_works_beside_the_signing_keys(
    make_ingest: Callable[..., Any], jwks: JwksServer, es256: SigningKey, client_id: uuid.UUID
) -> None:
    module = make_ingest(SUPABASE_URL=jwks.url, SUPABASE_JWT_SECRET=LEGACY_SECRET)
    legacy = jwt.encode(
        {"role": "service_role", "exp": int(time.time()) + 600}, LEGACY_SECRET, algorithm="HS256"
    )
    assert call(module, item(client_id), legacy)[0] == 201
    assert jwks.fetches == 0  # HS256 never needs the key set
    assert call(module, item(client_id), es256.sign({"role": "service_role"}))[0] == 201
    forged = jwt.encode({"role": "service_role", "exp": int(time.time()) + 600}, "x" * 40, algorithm="HS256")
    assert call(module, item(client_id), forged)[0] == 401


def test_supabase_jwks_url_overrides_where_the_keys_come_from(
    make_ingest: Callable[..., Any], jwks: JwksServer, rs256: SigningKey, client_id: uuid.UUID
) -> None:
    module = make_ingest(SUPABASE_JWKS_URL=jwks.jwks_url)
    assert call(module, item(client_id), rs256.sign({"role": "service_role"}))[0] == 201
    assert jwks.fetches == 1


def test_without_any_supabase_setting_asymmetric_tokens_are_refused(
    make_ingest: Callable[..., Any], jwks: JwksServer, es256: SigningKey, client_id: uuid.UUID
) -> None:
    module = make_ingest()  # API keys only, as before
    status, headers, problem = call(module, item(client_id), es256.sign({"role": "service_role"}))
    assert_unauthorized(status, headers, problem)
    assert jwks.fetches == 0


def test_signing_keys_alone_configure_ingest(
    make_ingest: Callable[..., Any],
    function_env: pytest.MonkeyPatch,
    jwks: JwksServer,
    es256: SigningKey,
    client_id: uuid.UUID,
) -> None:
    function_env.delenv("NEXUS_INGEST_API_KEYS")
    module = make_ingest(SUPABASE_URL=jwks.url)
    assert call(module, item(client_id), es256.sign({"role": "service_role"}))[0] == 201
    status, headers, problem = call(module, item(client_id), API_KEY)
    assert_unauthorized(status, headers, problem)


# --- cold start: API keys load no cryptography ---

_COLD_START = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("ingest_main", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
watched = ("cryptography", "jwt")
imported = sorted(name for name in watched if name in sys.modules)
event = json.loads(open(sys.argv[2]).read())
event["headers"]["authorization"] = "Bearer " + sys.argv[3]
event["body"] = sys.argv[4]
status = module.handler(event, None)["statusCode"]
handled = sorted(name for name in watched if name in sys.modules)
print(json.dumps({"status": status, "imported": imported, "handled": handled}))
"""


def test_importing_ingest_and_an_api_key_request_load_no_cryptography(
    function_env: pytest.MonkeyPatch, jwks: JwksServer, client_id: uuid.UUID, tmp_path: Path
) -> None:
    function_env.setenv("SUPABASE_URL", jwks.url)  # signing keys configured, yet not needed
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _COLD_START,
            str(ROOT / "functions" / "ingest" / "main.py"),
            str(ROOT / "tests" / "events" / "function_url_ingest.json"),
            API_KEY,
            json.dumps(item(client_id)),
        ],
        cwd=tmp_path,  # no .env files, nothing importable
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"status": 201, "imported": [], "handled": []}
    assert jwks.fetches == 0


# --- the key set's cache, with a clock the test moves ---


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_unknown_kids_refetch_at_most_once_per_interval(jwks: JwksServer, es256: SigningKey) -> None:
    clock = Clock()
    keys = SigningKeys(jwks.jwks_url, clock=clock, min_refetch_s=30)
    assert keys.key_for(es256.kid) is not None and jwks.fetches == 1
    assert keys.key_for("unknown-1") is None and jwks.fetches == 2
    assert keys.key_for("unknown-2") is None and jwks.fetches == 2
    clock.now += 29.9
    assert keys.key_for("unknown-3") is None and jwks.fetches == 2
    rotated = jwks.publish(new_key("RS256"))
    clock.now += 0.1
    assert keys.key_for(rotated.kid) is not None and jwks.fetches == 3
    assert keys.key_for(es256.kid) is not None and jwks.fetches == 3


def test_an_old_set_is_fetched_again_so_withdrawn_keys_stop_being_trusted(
    jwks: JwksServer, es256: SigningKey, rs256: SigningKey
) -> None:
    clock = Clock()
    keys = SigningKeys(jwks.jwks_url, clock=clock, max_age_s=600)
    assert keys.key_for(rs256.kid) is not None
    jwks.withdraw(rs256.kid)
    clock.now += 599
    assert keys.key_for(rs256.kid) is not None and jwks.fetches == 1
    clock.now += 1
    assert keys.key_for(rs256.kid) is None and jwks.fetches == 2
    assert keys.key_for(es256.kid) is not None


def test_when_a_refresh_fails_the_keys_held_stay_in_use(jwks: JwksServer, es256: SigningKey) -> None:
    clock = Clock()
    keys = SigningKeys(jwks.jwks_url, clock=clock, max_age_s=600, retry_s=5)
    assert keys.key_for(es256.kid) is not None
    jwks.status = 500
    clock.now += 600
    assert keys.key_for(es256.kid) is not None and jwks.fetches == 2
    clock.now += 4
    assert keys.key_for(es256.kid) is not None and jwks.fetches == 2  # no attempt inside the wait
    jwks.status = 200
    clock.now += 1
    assert keys.key_for(es256.kid) is not None and jwks.fetches == 3


def test_without_a_set_a_failure_says_when_to_retry(jwks: JwksServer, es256: SigningKey) -> None:
    clock = Clock()
    keys = SigningKeys(jwks.jwks_url, clock=clock, retry_s=5)
    jwks.status = 502
    with pytest.raises(JwksUnavailable) as first:
        keys.key_for(es256.kid)
    assert first.value.retry_after_s == 5 and jwks.fetches == 1
    clock.now += 3.5
    with pytest.raises(JwksUnavailable) as second:
        keys.key_for(es256.kid)
    assert second.value.retry_after_s == 2 and jwks.fetches == 1
    jwks.status = 200
    clock.now += 1.5
    assert keys.key_for(es256.kid) is not None and jwks.fetches == 2


def test_only_asymmetric_signing_keys_are_kept(es256: SigningKey) -> None:
    document = {
        "keys": [
            es256.public_jwk(),
            {**new_key("RS256").public_jwk(), "kid": "for-encryption", "use": "enc"},
            {"kty": "oct", "kid": "shared-secret", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "bad-curve", "crv": "P-999", "x": "AA", "y": "AA"},
            {**new_key("ES256").public_jwk(), "kid": None},
            "not a key",
        ]
    }
    keys = SigningKeys("http://unused.example", fetch=lambda url, timeout_s: json.dumps(document).encode())
    assert keys.key_for(es256.kid) is not None
    for kid in ("for-encryption", "shared-secret", "bad-curve"):
        assert keys.key_for(kid) is None


@pytest.mark.parametrize(
    "body", [b"<html>down</html>", b"[]", b'{"keys": {}}'], ids=["html", "list", "keys-object"]
)
def test_a_document_that_is_not_a_key_set_is_unavailable(body: bytes) -> None:
    keys = SigningKeys("http://unused.example", fetch=lambda url, timeout_s: body)
    with pytest.raises(JwksUnavailable):
        keys.key_for("any")
