"""The functions-framework servers `nexus dev` runs, one child process per deployed function.

Which functions, from which source and with which target comes from `shared.runtime.functions`:
function i of `FUNCTIONS` serves its `dev_target` on 127.0.0.1, port N + i (N the `--port`), so
ingest is on N, process on N + 1, gcal_refresh on N + 2 and search on N + 3; the operator page
(`shared.local.dashboard`) comes next, on N + 4. `nexus replay --port N` reaches the same servers
through `port_of` and `post_local`.

Each server runs in its own process group, so Ctrl-C reaches `nexus dev` only and stopping ends
the server's workers too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from shared.local.environment import DevError
from shared.runtime.functions import FUNCTIONS, Function, function_named

__all__ = [
    "HOST",
    "ROOT",
    "FunctionServer",
    "dashboard_port",
    "local_url",
    "port_of",
    "ports_used",
    "post_local",
    "require_free_ports",
    "source_path",
    "start_function_servers",
    "stop_function_servers",
    "wait_until_serving",
]

ROOT = Path(__file__).resolve().parents[2]  # the checkout holding functions/
HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0


def source_path(function: Function) -> Path:
    """The function's `main.py` in this checkout."""
    return ROOT / function.source


def port_of(name: str, base_port: int) -> int:
    """The port `nexus dev --port base_port` serves the function called `name` on."""
    return base_port + FUNCTIONS.index(function_named(name))


def local_url(name: str, base_port: int) -> str:
    """Where `nexus dev --port base_port` answers the function called `name`: its port and path."""
    return f"http://{HOST}:{port_of(name, base_port)}{function_named(name).http_path}"


def dashboard_port(base_port: int) -> int:
    """The port `nexus dev --port base_port` serves the operator page on: the one after the
    functions' ports."""
    return base_port + len(FUNCTIONS)


def ports_used(base_port: int) -> list[int]:
    """Every port `nexus dev --port base_port` serves on: the functions' in the order of FUNCTIONS,
    then the operator page's."""
    return [*(port_of(function.name, base_port) for function in FUNCTIONS), dashboard_port(base_port)]


def post_local(
    url: str, body: bytes, headers: dict[str, str], timeout_s: float, method: str = "POST"
) -> tuple[int, bytes]:
    """Send a request to a local http:// URL; return (status, body) for any HTTP answer, error
    statuses too. Raises OSError (URLError, timeouts, refused connections) when nothing answered.
    """
    if not url.startswith("http://"):
        raise ValueError(f"{url} is not a local http:// URL.")
    request = urllib.request.Request(url, data=body, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@dataclass
class FunctionServer:
    """A functions-framework child process serving one function's `dev_target`."""

    function: Function
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def start_function_servers(
    env: dict[str, str], base_port: int, out: Callable[[str], None]
) -> list[FunctionServer]:
    """Start one functions-framework per function, each in its own process group, its output
    relayed line by line with the function's name in front."""
    servers = []
    for function in FUNCTIONS:
        port = port_of(function.name, base_port)
        command = [sys.executable, "-m", "functions_framework", "--target", function.dev_target]
        command += ["--source", str(source_path(function)), "--host", HOST, "--port", str(port)]
        process = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us only; we stop the whole group
        )
        servers.append(FunctionServer(function, port, process))
        threading.Thread(
            target=_relay,
            args=(process.stdout, function.name, out),
            name=f"relay-{function.name}",
            daemon=True,
        ).start()
    return servers


def _relay(stream: IO[bytes] | None, name: str, out: Callable[[str], None]) -> None:
    if stream is None:
        return
    with stream:
        for raw in stream:
            out(f"{name:>12} | {raw.decode(errors='replace').rstrip()}")


def wait_until_serving(servers: Sequence[FunctionServer], stopping: threading.Event) -> None:
    """Return once every server accepts connections; raise DevError if one exits or is slow."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    waiting = list(servers)
    while waiting:
        for server in list(waiting):
            code = server.process.poll()
            if code is not None:
                raise DevError(f"functions-framework for {server.function.name} exited with code {code}.")
            if _port_answers(server.port):
                waiting.remove(server)
        if time.monotonic() > deadline:
            names = ", ".join(s.function.name for s in waiting)
            raise DevError(f"functions-framework did not start in {STARTUP_TIMEOUT_S:.0f} s: {names}.")
        if waiting and stopping.wait(0.1):
            return


def stop_function_servers(servers: Sequence[FunctionServer]) -> None:
    """SIGTERM each server's process group, then SIGKILL what is left after the grace period."""
    for server in servers:
        _signal_group(server.process, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for server in servers:
        try:
            server.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(server.process, signal.SIGKILL)
            server.process.wait(5)
        _signal_group(server.process, signal.SIGKILL)  # workers whose master is gone


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def require_free_ports(ports: Sequence[int]) -> None:
    """Raise DevError naming the first port something else already listens on."""
    last = dashboard_port(0)  # `--port N` takes N .. N + last
    for port in ports:
        if not 0 < port < 65536:
            raise DevError(f"Port {port} is out of range; pass --port N with N + {last} below 65536.")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                taken = ", ".join(["N", *(f"N+{i}" for i in range(1, last + 1))])
                raise DevError(f"Port {port} is already in use; pass --port N to use {taken}.") from None
