"""`nexus dev`'s parts that need no database and no process: the delivery retries, the ports and URLs
each function gets from the one list of functions, the printed table, and the package's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import shared.local
from shared.local.bridge import DeliveryRetries
from shared.local.environment import DevError
from shared.local.servers import (
    ROOT,
    dashboard_port,
    local_url,
    port_of,
    ports_used,
    require_free_ports,
    source_path,
)
from shared.local.stack import endpoint_lines
from shared.runtime.functions import FUNCTIONS

LOCAL = Path(shared.local.__file__).parent


@pytest.mark.parametrize(
    ("retries", "expected"),
    [
        # first_delay_s, max_delay_s, give_up_after_s → every wait, in order
        (DeliveryRetries(0.5, 8.0, 3.0), [0.5, 1.0, 2.0]),
        (DeliveryRetries(0.5, 8.0, 3.5), [0.5, 1.0, 2.0]),  # 3.5 s waited: the budget is spent
        (DeliveryRetries(0.5, 8.0, 3.6), [0.5, 1.0, 2.0, 4.0]),
        (DeliveryRetries(1.0, 2.0, 7.0), [1.0, 2.0, 2.0, 2.0]),  # doubling stops at max_delay_s
        (DeliveryRetries(1.0, 2.0, 0.0), []),  # no budget: no retry at all
    ],
)
def test_delivery_retries_double_up_to_the_cap_until_the_budget_is_spent(
    retries: DeliveryRetries, expected: list[float]
) -> None:
    assert list(retries.delays()) == expected


def test_the_default_delivery_retries_give_up_after_two_minutes() -> None:
    delays = list(DeliveryRetries().delays())
    assert delays[:5] == [0.5, 1.0, 2.0, 4.0, 8.0] and set(delays[4:]) == {8.0}
    assert sum(delays[:-1]) < 120.0 <= sum(delays)


@pytest.mark.parametrize(
    ("name", "base_port", "port", "url"),
    [
        ("ingest", 8080, 8080, "http://127.0.0.1:8080/api/knowledge/ingest"),
        ("process", 8080, 8081, "http://127.0.0.1:8081/"),
        ("gcal_refresh", 8080, 8082, "http://127.0.0.1:8082/"),
        ("search", 8080, 8083, "http://127.0.0.1:8083/api/knowledge/search"),
        ("process", 9000, 9001, "http://127.0.0.1:9001/"),
    ],
)
def test_each_function_has_its_port_and_url(name: str, base_port: int, port: int, url: str) -> None:
    assert (port_of(name, base_port), local_url(name, base_port)) == (port, url)


def test_every_function_gets_a_port_in_the_order_of_the_list_then_the_operator_page() -> None:
    assert ports_used(8080) == [8080 + i for i in range(len(FUNCTIONS) + 1)]
    assert dashboard_port(8080) == 8080 + len(FUNCTIONS) == 8084
    with pytest.raises(KeyError, match="No function named 'dashboard'"):
        port_of("dashboard", 8080)


def test_every_function_serves_its_dev_target_from_the_checkout() -> None:
    for function in FUNCTIONS:
        source = source_path(function)
        assert source == ROOT / "functions" / function.name / "main.py"
        assert f"def {function.dev_target}(" in source.read_text(), function.name


def test_the_printed_table_has_a_line_per_function() -> None:
    notes = {"process": "Supabase webhook; the bridge posts here", "gcal_refresh": "token upkeep; every 9 s"}
    assert endpoint_lines(8080, notes) == [
        "  ingest          POST http://127.0.0.1:8080/api/knowledge/ingest",
        "  process         POST http://127.0.0.1:8081/  (Supabase webhook; the bridge posts here)",
        "  gcal_refresh    POST http://127.0.0.1:8082/  (token upkeep; every 9 s)",
        "  search          POST http://127.0.0.1:8083/api/knowledge/search",
    ]


@pytest.mark.parametrize(
    ("port", "message"),
    [
        (0, "Port 0 is out of range; pass --port N with N + 4 below 65536."),
        (65536, "Port 65536 is out of range; pass --port N with N + 4 below 65536."),
    ],
)
def test_a_port_out_of_range_is_one_sentence(port: int, message: str) -> None:
    with pytest.raises(DevError) as raised:
        require_free_ports([port])
    assert str(raised.value) == message


def _imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", sorted(LOCAL.glob("*.py")), ids=lambda p: p.name)
def test_nothing_in_local_imports_the_cli(path: Path) -> None:
    assert not {m for m in _imported_modules(path) if m == "shared.cli" or m.startswith("shared.cli.")}
