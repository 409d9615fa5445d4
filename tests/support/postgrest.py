"""A PostgREST-compatible `rpc` endpoint for tests, serving on 127.0.0.1 from a thread.

Only the routing is a stand-in: `POST /rest/v1/rpc/<function>` runs the real SQL function on the
real test database, the way PostgREST does, so the Supabase store is tested over real HTTP
against the SQL in the migrations:

- the JSON object body becomes named arguments, each cast from JSON to the parameter's type
  with `json_to_record` (so a `jsonb` parameter gets the JSON value itself, a `uuid` one a string);
- each call runs in one transaction as the role its key maps to (`set local role`), with
  `request.jwt.claims` set; a request without a key runs as `anon`, one with an unknown key gets
  the 401 Supabase's gateway (`apikey`) or PostgREST (bearer token) would give;
- answers: a JSON array of row objects for set-returning and table functions, one object for a
  function returning one composite, the JSON value itself for a scalar, 204 for `void`; errors are
  PostgREST's `{"code", "message", "details", "hint"}` with its SQLSTATE → HTTP status mapping;
- `max_rows` is PostgREST's `db-max-rows` (1000 on Supabase): a set-returning function runs in
  full, but only its first `max_rows` rows are answered, the rest dropped without notice;
- `api_key_gateway=True` checks the new API keys (`sb_publishable_…`, `sb_secret_…`) the way
  Supabase documents its hosted gateway: every request needs an `apikey`; a new key is not a JWT,
  so as a bearer token it is refused by the gateway, or (when it equals `apikey`) passed on to
  PostgREST, which refuses it as not a JWT; a secret key from a browser is refused. A request with
  a new key in `apikey` and no bearer token runs as that key's role (the gateway's own JWT).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from tests.support.local_http import AppServer, LocalHttpServer

DEFAULT_MAX_ROWS = 1000  # Supabase's db-max-rows
RPC_PATH = re.compile(r"^/rest/v1/rpc/(?P<function>[^/?#]+)/?(?:\?.*)?$")
ANON_ROLE = "anon"

# PostgREST's SQLSTATE → HTTP status table (docs.postgrest.org, "Errors"); anything else is 400.
_EXACT_STATUS = {
    "23503": 409,
    "23505": 409,
    "25006": 405,
    "53400": 500,
    "P0001": 400,
    "42883": 404,
    "42P01": 404,
    "42P17": 500,
}
_CLASS_STATUS = {
    "08": 503,
    "09": 500,
    "0L": 403,
    "0P": 403,
    "25": 500,
    "28": 403,
    "2D": 500,
    "38": 500,
    "39": 500,
    "3B": 500,
    "40": 500,
    "53": 503,
    "54": 500,
    "55": 500,
    "57": 500,
    "58": 500,
    "F0": 500,
    "HV": 500,
    "P0": 500,
    "XX": 500,
}

_FUNCTIONS_SQL = """
select p.proretset as returns_set,
       p.prorettype::regtype::text as return_type,
       t.typtype::text as return_kind,
       p.pronargs as arg_count,
       p.pronargdefaults as default_count,
       coalesce(p.proargnames, '{}')::text[] as arg_names,
       p.proargmodes::text[] as arg_modes,
       array(select a.oid::regtype::text
               from unnest(p.proargtypes::oid[]) with ordinality as a (oid, n)
              order by a.n) as input_types
  from pg_proc p
  join pg_namespace n on n.oid = p.pronamespace
  join pg_type t on t.oid = p.prorettype
 where n.nspname = %s and p.proname = %s and p.prokind = 'f'
"""


NEW_KEY_PREFIXES = ("sb_publishable_", "sb_secret_")


@dataclass(frozen=True)
class RpcCall:
    """One request the server answered: which function, as which role, with which status, and
    which of the credential headers (`apikey`, `authorization`) it carried."""

    function: str
    role: str | None
    status: int
    credentials: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes | None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class _Function:
    """What PostgREST's schema cache knows of one function: its inputs and the shape of its result."""

    arguments: tuple[tuple[str, str], ...]  # (name, type) of every input, in order
    required: frozenset[str]
    returns_set: bool
    return_type: str
    return_kind: str  # pg_type.typtype: b base, c composite, p pseudo (record, void), ...

    @property
    def returns_rows(self) -> bool:
        return self.return_kind == "c" or self.return_type == "record"


def error_reply(
    status: int, code: str, message: str, details: str | None = None, hint: str | None = None
) -> Reply:
    """A PostgREST error body."""
    body = {"code": code, "details": details, "hint": hint, "message": message}
    return Reply(status, json.dumps(body).encode(), (("Content-Type", "application/json; charset=utf-8"),))


def status_for_sqlstate(sqlstate: str, role: str) -> int:
    """The HTTP status PostgREST answers a database error with."""
    if sqlstate == "42501":  # insufficient_privilege: 401 for the anonymous role, else 403
        return 401 if role == ANON_ROLE else 403
    return _EXACT_STATUS.get(sqlstate) or _CLASS_STATUS.get(sqlstate[:2], 400)


class PostgrestStandIn(LocalHttpServer):
    """Serves PostgREST's `rpc` over HTTP on 127.0.0.1; use as a context manager.

    `keys` maps each accepted API key (sent as `Authorization: Bearer` or `apikey`) to the role
    its calls run as. `url` is what `SUPABASE_URL` would be (the REST API is under `/rest/v1`).
    `max_rows` caps the rows of a set-returning function's answer (None: no cap).
    `api_key_gateway` checks the new API keys as Supabase's hosted gateway does (module docstring).
    """

    thread_name = "postgrest-stand-in"

    def __init__(
        self,
        dsn: str,
        keys: Mapping[str, str],
        *,
        schema: str = "public",
        max_rows: int | None = DEFAULT_MAX_ROWS,
        api_key_gateway: bool = False,
    ) -> None:
        self.dsn = dsn
        self.keys = dict(keys)
        self.schema = schema
        self.max_rows = max_rows
        self.api_key_gateway = api_key_gateway
        self.calls: list[RpcCall] = []
        self._lock = threading.Lock()
        self._idle: list[psycopg.Connection[Any]] = []

    def _after_stop(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # --- one request ---

    def answer(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """The reply Supabase's gateway and PostgREST would give; records the call."""
        match = RPC_PATH.match(path)
        role = (self.api_key_gateway and _gateway_refusal(headers, self.keys)) or self._role(headers)
        if match is None:
            reply = error_reply(404, "PGRST125", f"Invalid path specified in request URL: {path}")
        elif method != "POST":
            reply = error_reply(405, "PGRST117", f"Unsupported HTTP method: {method}")
        elif isinstance(role, Reply):
            reply = role
        else:
            reply = self._call(match["function"], body, role)
        with self._lock:
            self.calls.append(
                RpcCall(
                    match["function"] if match else path,
                    role if isinstance(role, str) else None,
                    reply.status,
                    frozenset(name for name in ("apikey", "authorization") if headers.get(name)),
                )
            )
        return reply

    def _role(self, headers: Mapping[str, str]) -> str | Reply:
        """The role a request runs as, or the 401 it gets.

        Like Supabase: the gateway refuses an unknown `apikey` (its reply has no `code`); PostgREST
        refuses an unknown bearer token (PGRST301) and runs a request without one as its key's
        role, or as `anon` without any key. A new-style key (`sb_secret_…`) sent as the bearer
        token too is accepted, as the hosted gateway swaps it for a JWT of that role.
        """
        apikey = headers.get("apikey", "")
        if apikey and apikey not in self.keys:
            return Reply(
                401,
                json.dumps(
                    {
                        "message": "Invalid API key",
                        "hint": "Double check your Supabase `anon` or `service_role` API key.",
                    }
                ).encode(),
                (("Content-Type", "application/json; charset=utf-8"),),
            )
        authorization = headers.get("authorization", "")
        token = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
        if token:
            return self.keys.get(token) or error_reply(401, "PGRST301", "JWSError JWSInvalidSignature")
        return self.keys[apikey] if apikey else ANON_ROLE

    def _call(self, name: str, body: bytes, role: str) -> Reply:
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            return error_reply(400, "PGRST102", "Empty or invalid json")
        if not isinstance(params, dict):
            return error_reply(400, "PGRST102", "Empty or invalid json")
        try:
            conn = self._take()
        except psycopg.OperationalError:
            return error_reply(
                503,
                "PGRST000",
                "Could not connect with the database due to an incorrect db-uri or due to the "
                "PostgreSQL service not running.",
            )
        try:
            return self._run(conn, name, params, role)
        finally:
            self._give(conn)

    def _run(self, conn: psycopg.Connection[Any], name: str, params: dict[str, Any], role: str) -> Reply:
        try:
            function = self._find(conn, name, params)
            if isinstance(function, Reply):
                return function
            with conn.transaction():
                conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
                conn.execute(
                    "select set_config('request.jwt.claims', %s, true)", (json.dumps({"role": role}),)
                )
                query = _call_query(self.schema, name, function, params, self.max_rows)
                result = conn.execute(query, {"body": json.dumps(params)} if params else None).fetchone()
        except psycopg.Error as exc:
            return _database_error(exc, role)
        if function.return_type == "void":
            return Reply(204, None)
        assert result is not None
        text = result["body"]
        headers = [("Content-Type", "application/json; charset=utf-8")]
        if function.returns_set:
            count = len(json.loads(text))
            headers.append(("Content-Range", f"0-{count - 1}/*" if count else "*/*"))
        return Reply(200, ("null" if text is None else text).encode(), tuple(headers))

    def _find(self, conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> _Function | Reply:
        """The function PostgREST's schema cache would pick for these argument names."""
        candidates = []
        for row in conn.execute(_FUNCTIONS_SQL, (self.schema, name)).fetchall():
            function = _describe(row)
            names = {arg for arg, _ in function.arguments}
            if set(params) <= names and function.required <= set(params):
                candidates.append(function)
        if len(candidates) == 1:
            return candidates[0]
        signature = f"{self.schema}.{name}({', '.join(sorted(params))})"
        if not candidates:
            return error_reply(
                404,
                "PGRST202",
                f"Could not find the function {signature} in the schema cache",
                details=f"Searched for the function {signature} with parameters "
                f"{', '.join(sorted(params)) or '(none)'}, but no matches were found in the schema cache.",
            )
        return error_reply(
            300, "PGRST203", f"Could not choose the best candidate function between: {signature}"
        )

    # --- a small connection pool, as PostgREST keeps ---

    def _take(self) -> psycopg.Connection[Any]:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row, connect_timeout=5)

    def _give(self, conn: psycopg.Connection[Any]) -> None:
        if conn.closed or conn.broken or self._server is None:
            conn.close()
            return
        with self._lock:
            self._idle.append(conn)


def _gateway_reply(message: str, hint: str) -> Reply:
    """A refusal by Supabase's API gateway: a message and a hint, no PostgREST `code`."""
    body = json.dumps({"message": message, "hint": hint}).encode()
    return Reply(401, body, (("Content-Type", "application/json; charset=utf-8"),))


def _gateway_refusal(headers: Mapping[str, str], keys: Mapping[str, str]) -> Reply | None:
    """What Supabase's hosted gateway answers before PostgREST sees the request, if anything:
    its documented rules for the new API keys (see the module docstring)."""
    apikey = headers.get("apikey", "")
    authorization = headers.get("authorization", "")
    token = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
    if not apikey:
        return _gateway_reply(
            "No API key found in request", "No `apikey` request header or url param was found."
        )
    if apikey.startswith("sb_secret_") and "mozilla" in headers.get("user-agent", "").lower():
        return _gateway_reply(
            "Forbidden use of secret API key in browser", "Secret API keys are for servers only."
        )
    if token.startswith(NEW_KEY_PREFIXES):
        if token != apikey:
            return _gateway_reply(
                "Invalid authorization header", "An API key is not a JWT; send it as `apikey`."
            )
        if apikey in keys:  # passed on as it came; PostgREST expects a JWT
            return error_reply(401, "PGRST301", "JWSError (CompactDecodeError Invalid number of parts)")
    return None


def _describe(row: dict[str, Any]) -> _Function:
    names: list[str] = row["arg_names"]
    modes: list[str] | None = row["arg_modes"]
    if modes is None:
        inputs = names[: row["arg_count"]]
    else:  # in, inout and variadic arguments are inputs; out and table columns are not
        inputs = [name for name, mode in zip(names, modes, strict=True) if mode in ("i", "b", "v")]
    arguments = tuple(zip(inputs, row["input_types"], strict=True))
    required = frozenset(inputs[: row["arg_count"] - row["default_count"]])
    return _Function(arguments, required, row["returns_set"], row["return_type"], row["return_kind"])


def _call_query(
    schema: str, name: str, function: _Function, params: dict[str, Any], max_rows: int | None
) -> sql.Composed:
    """`select <json> from json_to_record(<body>) as _pgrst_args (...), <function>(arg => ...)`;
    a set's rows are aggregated from a subquery limited to `max_rows`, as PostgREST limits them
    (the function scan still runs the function in full)."""
    given = [(arg, type_) for arg, type_ in function.arguments if arg in params]
    call = sql.SQL("{}.{}({})").format(
        sql.Identifier(schema),
        sql.Identifier(name),
        sql.SQL(", ").join(sql.SQL("{0} => _pgrst_args.{0}").format(sql.Identifier(arg)) for arg, _ in given),
    )
    # Types come from pg_catalog (regtype text is already quoted where needed), never from the request.
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(arg), sql.SQL(type_)) for arg, type_ in given
    )
    arguments = (
        [sql.SQL("json_to_record(%(body)s::json) as _pgrst_args ({})").format(columns)] if given else []
    )
    if not function.returns_rows and not function.returns_set:
        source = sql.SQL(" from {}").format(arguments[0]) if arguments else sql.SQL("")
        return sql.SQL("select to_json({})::text as body{}").format(call, source)
    row = sql.SQL("lateral {} as _pgrst_row").format(call)
    if not function.returns_rows:
        row = sql.SQL("lateral {} as _pgrst_row (value)").format(call)
    source = sql.SQL(", ").join([*arguments, row])
    if not function.returns_set:
        return sql.SQL("select to_json(_pgrst_row)::text as body from {}").format(source)
    value = sql.SQL("_pgrst_row" if function.returns_rows else "_pgrst_row.value")
    limit = sql.SQL("") if max_rows is None else sql.SQL(" limit {}").format(sql.Literal(max_rows))
    return sql.SQL(
        "select coalesce(json_agg(_pgrst_page.value), '[]')::text as body"
        " from (select {} as value from {}{}) as _pgrst_page"
    ).format(value, source, limit)


def _database_error(exc: psycopg.Error, role: str) -> Reply:
    sqlstate = exc.sqlstate
    if sqlstate is None:  # the connection itself failed
        return error_reply(503, "PGRST001", "Database client error. Retrying the connection.")
    diag = exc.diag
    return error_reply(
        status_for_sqlstate(sqlstate, role),
        sqlstate,
        diag.message_primary or type(exc).__name__,
        details=diag.message_detail,
        hint=diag.message_hint,
    )


class _Handler(BaseHTTPRequestHandler):
    server: AppServer
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers after stop()

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = self.server.app.answer(self.command, self.path, headers, body)
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body or b"")))
        self.end_headers()
        if reply.body:
            self.wfile.write(reply.body)

    do_POST = do_GET = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests assert on `PostgrestStandIn.calls` instead."""


PostgrestStandIn.handler = _Handler
