"""`nexus replay FILE`: send a recorded event to the local handler production would give it.

What the file holds decides where it goes (the shapes the process function tells apart):

- a function-URL request (payload 2.0) → ingest `handler`, or process `handler` when its body is
  a webhook body or `{"knowledge_item_id"}`;
- a Supabase database-webhook body, or `{"knowledge_item_id"}` → process `handler`, wrapped in a
  function-URL POST carrying the webhook secret;
- an SQS batch (`Records[].eventSource == "aws:sqs"`) → process `handler`;
- an EventBridge scheduled event → process `handler` (the sweep), or gcal_refresh's when a rule
  in `resources` names gcal;
- a Pub/Sub CloudEvent (or a Pub/Sub push envelope) → process `pubsub` target.

`--function` overrides the choice.

Placeholders let one file serve any database: `REPLACE_WITH_ITEM_ID` is replaced by `--item ID`,
`REPLACE_WITH_CLIENT_ID` by `--client-id` (default: the dev client `nexus dev` uses),
`REPLACE_WITH_API_KEY` and `REPLACE_WITH_WEBHOOK_SECRET` by the local credentials — anywhere in the
file, inside SQS bodies and base64 Pub/Sub data too. A function-URL request's Authorization
header is replaced by the local credential (production's key would be refused), unless
`--keep-auth`.

In-process (the default) the function's `main.py` is imported by path and its Lambda `handler`
(or `pubsub` target) is called with a `LocalContext`, in the environment `nexus dev` gives its
functions: DATABASE_URL or the embedded Postgres, the dev credentials, the local providers
unless OPENAI_API_KEY is set. With `--port N` the request goes over HTTP to a running `nexus dev`
instead (HTTP-shaped events only). The result is printed as JSON; the exit code is 0 when the
result reports success, 1 otherwise.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import importlib.util
import json
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from shared.config import Settings
from shared.errors import NexusError
from shared.local.environment import (
    DevCredentials,
    LocalContext,
    LocalEnvironment,
    dev_credentials,
    local_environment,
)
from shared.local.servers import HOST, port_of, post_local, source_path
from shared.runtime.events import EventError, is_process_message, lambda_event_kind, parse_json
from shared.runtime.functions import FUNCTIONS, function_named

ITEM_PLACEHOLDER = "REPLACE_WITH_ITEM_ID"
CLIENT_PLACEHOLDER = "REPLACE_WITH_CLIENT_ID"
API_KEY_PLACEHOLDER = "REPLACE_WITH_API_KEY"
WEBHOOK_SECRET_PLACEHOLDER = "REPLACE_WITH_WEBHOOK_SECRET"
HTTP_TIMEOUT_S = 300.0


class ReplayError(NexusError):
    """The recorded event cannot be replayed; the message says why."""


@dataclass(frozen=True)
class Replay:
    """A recorded event, the shape it has and the function that receives it."""

    kind: str  # function_url | webhook | sqs | schedule | pubsub
    function: str  # a name in shared.runtime.functions.FUNCTIONS
    event: Any


# -- reading and classifying ---------------------------------------------------------------------


def read_event(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ReplayError(f"Cannot read {path}: {exc.strerror}.") from None
    except ValueError:
        raise ReplayError(f"{path} is not a JSON file.") from None


def _request_body(event: dict[str, Any]) -> str:
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(body).decode("utf-8", errors="replace")
        except (binascii.Error, ValueError):
            return ""
    return str(body)


def _carries_process_message(event: dict[str, Any]) -> bool:
    """Whether a function-URL request's body is for the process function (else it is ingest's)."""
    try:
        return is_process_message(parse_json(_request_body(event)))
    except EventError:
        return False


def _http_function(event: dict[str, Any]) -> str:
    """The function a function-URL request is for, by its path (ingest's when it names none)."""
    path = str(event.get("rawPath") or "").rstrip("/")
    for function in FUNCTIONS:
        if function.http_path != "/" and path == function.http_path.rstrip("/"):
            return function.name
    return "ingest"


def _is_pubsub(event: Any) -> bool:
    """A Pub/Sub CloudEvent (as functions-framework hands it) or a Pub/Sub push envelope: not
    Lambda events, so `lambda_event_kind` does not know them."""
    data = event.get("data") if isinstance(event, dict) else None
    is_cloud_event = "specversion" in event and isinstance(data, dict) and "message" in data
    is_push_envelope = isinstance(event.get("message"), dict) and "subscription" in event
    return is_cloud_event or is_push_envelope


def classify(event: Any, function: str | None = None) -> Replay:
    """Tell the event's shape and its function (`function` overrides); raises ReplayError.

    Lambda events are told apart by `lambda_event_kind`, as the handlers do; what is left is
    recorded here only: a Pub/Sub message, or a bare webhook body (`is_process_message`).
    """
    kind = lambda_event_kind(event)
    if kind == "http":
        chosen = "process" if _carries_process_message(event) else _http_function(event)
        return Replay("function_url", function or chosen, event)
    if kind == "sqs":
        return Replay("sqs", function or "process", event)
    if kind == "schedule":
        rules = " ".join(str(r) for r in event.get("resources") or []).lower()
        return Replay("schedule", function or ("gcal_refresh" if "gcal" in rules else "process"), event)
    if isinstance(event, dict) and _is_pubsub(event):
        return Replay("pubsub", function or "process", event)
    if is_process_message(event):
        return Replay("webhook", function or "process", event)
    raise ReplayError(
        "Unrecognised event: expected a function-URL request, a Supabase webhook body, an SQS batch, "
        "an EventBridge scheduled event or a Pub/Sub CloudEvent."
    )


# -- placeholders and credentials ----------------------------------------------------------------


def fill_placeholders(event: Any, values: dict[str, str]) -> Any:
    """Replace each placeholder everywhere, base64 Pub/Sub data included."""

    def fill(text: str) -> str:
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        return text

    filled = json.loads(fill(json.dumps(event)))
    message = _pubsub_message(filled)
    if message is not None and isinstance(message.get("data"), str):
        with contextlib.suppress(binascii.Error, ValueError):
            decoded = base64.b64decode(message["data"], validate=True).decode()
            message["data"] = base64.b64encode(fill(decoded).encode()).decode()
    return filled


def _pubsub_message(event: Any) -> dict[str, Any] | None:
    if not isinstance(event, dict):
        return None
    data = event.get("data")
    holder: dict[str, Any] = data if isinstance(data, dict) else event
    message = holder.get("message")
    return message if isinstance(message, dict) else None


def placeholders_in(event: Any) -> set[str]:
    """The placeholders the event still holds (base64 Pub/Sub data included)."""
    texts = [json.dumps(event)]
    message = _pubsub_message(event)
    if message is not None and isinstance(message.get("data"), str):
        with contextlib.suppress(binascii.Error, ValueError):
            texts.append(base64.b64decode(message["data"], validate=True).decode())
    every = (ITEM_PLACEHOLDER, CLIENT_PLACEHOLDER, API_KEY_PLACEHOLDER, WEBHOOK_SECRET_PLACEHOLDER)
    return {placeholder for placeholder in every if any(placeholder in text for text in texts)}


def function_url_event(body: str, token: str, path: str = "/") -> dict[str, Any]:
    """A function-URL POST (payload 2.0) carrying `body`, as Lambda delivers it."""
    now = datetime.now(UTC)
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "content-type": "application/json",
            "authorization": f"Bearer {token}",
            "host": "localhost",
            "user-agent": "nexus-replay",
        },
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "local",
            "domainName": "localhost",
            "domainPrefix": "localhost",
            "http": {
                "method": "POST",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "nexus-replay",
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "body": body,
        "isBase64Encoded": False,
    }


def with_local_credentials(replay: Replay, credentials: DevCredentials, keep_auth: bool = False) -> Replay:
    """Wrap a webhook body into a function-URL POST, and give function-URL requests the local
    credential for their function (unless `keep_auth`)."""
    token = credentials.webhook_secret if replay.function == "process" else credentials.api_key
    if replay.kind == "webhook":
        return Replay("function_url", replay.function, function_url_event(json.dumps(replay.event), token))
    if replay.kind != "function_url" or keep_auth:
        return replay
    event = dict(replay.event)
    headers = {k: v for k, v in (event.get("headers") or {}).items() if k.lower() != "authorization"}
    event["headers"] = {**headers, "authorization": f"Bearer {token}"}
    return replace(replay, event=event)


# -- invoking ------------------------------------------------------------------------------------


def load_function_module(function: str) -> ModuleType:
    """Import functions/<function>/main.py afresh, by path, as Lambda and functions-framework do."""
    try:
        path = source_path(function_named(function))
    except KeyError as exc:
        raise ReplayError(str(exc.args[0])) from None
    if not path.is_file():
        raise ReplayError(f"{path} is missing; run nexus replay from a checkout of the repository.")
    name = f"nexus_replay_{function}_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ReplayError(f"{path} cannot be imported.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def close_function_module(module: ModuleType) -> None:
    """Close the connections and clients the function opened, and forget the module."""
    endpoint = getattr(module, "endpoint", None)
    processor = getattr(getattr(module, "service", None), "processor", None)
    parts = [
        getattr(endpoint, "store", None),
        getattr(processor, "store", None),
        getattr(processor, "embedder", None),
        getattr(processor, "summarizer", None),
        getattr(module, "upkeep", None),
    ]
    for part in parts:
        close = getattr(part, "close", None)
        if callable(close):
            close()
    sys.modules.pop(module.__name__, None)


@contextlib.contextmanager
def patched_environ(environment: dict[str, str]) -> Iterator[None]:
    """os.environ is exactly `environment` inside the block, and as before after it."""
    from shared.config import reset_settings

    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environment)
    reset_settings()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        reset_settings()


def _cloud_event(event: dict[str, Any]) -> Any:
    """The CloudEvent object functions-framework hands to a `cloud_event` target."""
    from cloudevents.http import CloudEvent

    if "specversion" not in event:  # a push envelope: wrap it as Eventarc does
        attributes = {
            "type": "google.cloud.pubsub.topic.v1.messagePublished",
            "source": f"//pubsub.googleapis.com/{event.get('subscription', 'local')}",
        }
        return CloudEvent(attributes, event)
    attributes = {key: value for key, value in event.items() if key != "data"}
    return CloudEvent(attributes, event["data"])


def invoke_in_process(replay: Replay, env: LocalEnvironment) -> Any:
    """Call the function's handler (or pubsub target) here, in the local functions' environment."""
    # The function's logs and metrics go to stderr, so stdout carries only the result.
    with patched_environ(env.function_environment()), contextlib.redirect_stdout(sys.stderr):
        module = load_function_module(replay.function)
        try:
            if replay.kind == "pubsub":
                return module.pubsub(_cloud_event(replay.event))
            return module.handler(replay.event, LocalContext(f"nexus-{replay.function}", HTTP_TIMEOUT_S))
        finally:
            close_function_module(module)


def invoke_over_http(replay: Replay, base_port: int) -> dict[str, Any]:
    """Send the request to a running `nexus dev`; answer like a function URL does."""
    if replay.kind == "schedule" and replay.function == "gcal_refresh":
        method, path, headers, body = "POST", function_named(replay.function).http_path, {}, b""
    elif replay.kind == "function_url":
        event = replay.event
        http = event["requestContext"]["http"]
        query = event.get("rawQueryString") or ""
        path = (event.get("rawPath") or http.get("path") or "/") + (f"?{query}" if query else "")
        skipped = {"host", "content-length", "transfer-encoding"}
        headers = {k: str(v) for k, v in (event.get("headers") or {}).items() if k.lower() not in skipped}
        method, body = http.get("method", "POST"), _request_body(event).encode()
    else:
        raise ReplayError(
            f"nexus dev serves no HTTP endpoint for {replay.kind.replace('_', ' ')} events; "
            "replay this one in-process (without --port)."
        )
    url = f"http://{HOST}:{port_of(replay.function, base_port)}{path}"
    try:
        status, answer = post_local(url, body, headers, HTTP_TIMEOUT_S, method=method)
    except OSError as exc:
        raise ReplayError(f"Nothing answered at {url} ({exc}); is nexus dev running on that port?") from None
    return {"statusCode": status, "body": answer.decode(errors="replace")}


def succeeded(result: Any) -> bool:
    """Whether a handler's result reports success (HTTP < 400, no failed messages, ok)."""
    if not isinstance(result, dict):
        return True
    if "statusCode" in result:
        return int(result["statusCode"]) < 400
    if "batchItemFailures" in result:
        return not result["batchItemFailures"]
    if "ok" in result:
        return bool(result["ok"])
    return result.get("status") not in {"failed", "rejected"} and "error" not in result


# -- the command ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayOptions:
    path: Path
    item: uuid.UUID | None = None
    client_id: uuid.UUID | None = None
    port: int | None = None  # None: in-process
    function: str | None = None
    keep_auth: bool = False


def prepare(recorded: Any, options: ReplayOptions, credentials: DevCredentials) -> Replay:
    """Classify, fill in and re-credential a recorded event."""
    replay = classify(recorded, options.function)
    values = {
        API_KEY_PLACEHOLDER: credentials.api_key,
        WEBHOOK_SECRET_PLACEHOLDER: credentials.webhook_secret,
        CLIENT_PLACEHOLDER: str(options.client_id or credentials.client_id),
    }
    if options.item is not None:
        values[ITEM_PLACEHOLDER] = str(options.item)
    event = fill_placeholders(replay.event, values)
    if ITEM_PLACEHOLDER in placeholders_in(event):
        raise ReplayError(f"{options.path} has {ITEM_PLACEHOLDER}: pass --item ID (a knowledge item's id).")
    return with_local_credentials(replace(replay, event=event), credentials, options.keep_auth)


def run_replay(settings: Settings, options: ReplayOptions) -> int:
    """Replay one recorded event; print the result as JSON; 0 when it reports success."""
    recorded = read_event(options.path)
    if options.port is not None:
        replay = prepare(recorded, options, dev_credentials(settings))
        result: Any = invoke_over_http(replay, options.port)
    else:
        env = local_environment(settings, migrate=False)
        if options.client_id is None and CLIENT_PLACEHOLDER in placeholders_in(recorded):
            env.ensure_dev_client()
        replay = prepare(recorded, options, env.credentials)
        result = invoke_in_process(replay, env)
    print(json.dumps(result, indent=2, ensure_ascii=False, default=str))
    return 0 if succeeded(result) else 1
