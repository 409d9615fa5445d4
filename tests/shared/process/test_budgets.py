"""Monthly budgets per client on the real database, against the local OpenAI-compatible server: a
client at its budget waits (pending, the reason in `nexus status`) while another goes on; raising
the budget or a new month lets it go; a claim takes a client's items only while what is spent and
in flight is below its budget; the commands refuse what they cannot do in one sentence."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from shared.cli.main import main
from shared.config import reset_settings
from shared.process.pipeline import Processor
from shared.providers.embeddings import OpenAIEmbedder
from shared.providers.summaries import OpenAISummarizer
from shared.store.postgres import PostgresStore
from tests.support.openai_server import OpenAIServer
from tests.support.process_helpers import document, insert_items

API_KEY = "sk-test-budgets-0123456789"


@pytest.fixture
def processor(openai_server: OpenAIServer, db_store: PostgresStore) -> Iterator[Processor]:
    embedder = OpenAIEmbedder(API_KEY, base_url=openai_server.base_url)
    summarizer = OpenAISummarizer(API_KEY, base_url=openai_server.base_url)
    yield Processor(db_store, embedder, summarizer, chunk_tokens=120)
    embedder.close()
    summarizer.close()


@pytest.fixture
def nexus(db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Any:
    """Run `nexus ARGS` as a user does: (exit code, stdout, stderr)."""
    monkeypatch.setenv("DATABASE_URL", db_url)

    def run(*args: str) -> tuple[int, str, str]:
        reset_settings()
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def statuses(db: psycopg.Connection[Any], client: uuid.UUID) -> dict[str, int]:
    rows = db.execute(
        "select status, count(*) as n from knowledge_items where client_id = %s group by status", (client,)
    ).fetchall()
    return {r["status"]: r["n"] for r in rows}


def test_a_client_at_its_budget_waits_while_another_goes_on(
    db: psycopg.Connection[Any], db_client: uuid.UUID, processor: Processor, nexus: Any
) -> None:
    other = uuid.uuid4()
    db.execute("insert into clients (id) values (%s)", (other,))
    rng = random.Random(21)
    insert_items(db, db_client, [document(rng, 4, 70, tag=f"capped{i}") for i in range(5)])
    insert_items(db, other, [document(rng, 4, 70, tag=f"free{i}") for i in range(5)])
    # far below one item's cost: the first item is taken (it may cross by its own estimate), then none
    code, out, _ = nexus("budget", "set", "--client-id", str(db_client), "--monthly-usd", "0.0000001")
    assert code == 0 and "0.0000 of 0.0000 USD spent" in out

    processor.sweep(lambda: 600.0)
    assert statuses(db, db_client) == {"done": 1, "pending": 4}
    assert statuses(db, other) == {"done": 5}

    code, out, _ = nexus("status", "--json")
    (budget,) = json.loads(out)["budgets"]
    assert budget["client_id"] == str(db_client) and budget["over_budget"] is True
    assert budget["waiting_items"] == 4 and float(budget["spent_usd"]) > 0
    code, out, _ = nexus("status")
    assert f"waiting for budget: {db_client}" in out and "over budget, 4 item(s) waiting" in out

    # a webhook for one of its items claims nothing either
    waiting = db.execute(
        "select id from knowledge_items where client_id = %s and status = 'pending' limit 1", (db_client,)
    ).fetchone()
    assert waiting is not None
    assert processor.process_ids([waiting["id"]], 600.0).claimed == 0

    # raised: it goes on
    assert nexus("budget", "set", "--client-id", str(db_client), "--monthly-usd", "5")[0] == 0
    processor.sweep(lambda: 600.0)
    assert statuses(db, db_client) == {"done": 5}
    code, out, _ = nexus("budget", "show", "--json")
    assert json.loads(out)[0]["over_budget"] is False


def test_a_new_month_lets_a_client_go(
    db: psycopg.Connection[Any], db_client: uuid.UUID, processor: Processor, nexus: Any
) -> None:
    insert_items(db, db_client, [document(random.Random(3), 3, 60, tag=f"m{i}") for i in range(3)])
    nexus("budget", "set", "--client-id", str(db_client), "--monthly-usd", "0.0000001")
    processor.sweep(lambda: 600.0)
    assert statuses(db, db_client) == {"done": 1, "pending": 2}
    # last month's spend (rolled up and pending alike) does not count this month
    db.execute("update usage_daily set day = (day - interval '1 month')::date")
    db.execute("update usage_pending set day = (day - interval '1 month')::date")
    processor.sweep(lambda: 600.0)
    assert statuses(db, db_client)["done"] == 2


def test_a_claim_stops_a_client_once_its_budget_is_in_flight(
    db: psycopg.Connection[Any], db_store: PostgresStore, db_client: uuid.UUID
) -> None:
    other = uuid.uuid4()
    db.execute("insert into clients (id) values (%s)", (other,))
    insert_items(db, db_client, ["x" * 4000] * 6)  # 1,000 tokens each by the claim's estimate
    insert_items(db, other, ["y" * 4000] * 2)
    db_store.set_client_budget(db_client, 1.0)
    # $0.0004 a token: each item is estimated at $0.40; room $1.00 → 0.60 → 0.20 → taken, then none
    first = db_store.claim_items("w1", 60, 10, 5, usd_per_token=0.0004)
    assert sum(1 for item in first if item.client_id == db_client) == 3
    assert sum(1 for item in first if item.client_id == other) == 2
    # what is in flight counts for every other worker too
    assert db_store.claim_items("w2", 60, 10, 5, usd_per_token=0.0004) == []
    # with no estimate, only what is spent counts
    assert len(db_store.claim_items("w3", 60, 10, 5)) == 3


def test_the_budget_commands_say_what_they_cannot_do(
    db: psycopg.Connection[Any], db_client: uuid.UUID, nexus: Any
) -> None:
    nobody = uuid.uuid4()
    code, _, err = nexus("budget", "set", "--client-id", str(nobody), "--monthly-usd", "10")
    assert code == 1 and f"No client {nobody} exists" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        nexus("budget", "set", "--client-id", str(db_client), "--monthly-usd", "-1")
    with pytest.raises(SystemExit):
        nexus("budget", "set", "--client-id", "not-a-uuid", "--monthly-usd", "1")
    assert nexus("budget", "show")[1].strip() == "no budgets set"
    assert nexus("budget", "set", "--client-id", str(db_client), "--monthly-usd", "12.5")[0] == 0
    code, out, _ = nexus("budget", "show")
    assert f"{db_client}  0.0000 of 12.5000 USD spent in " in out
    assert (
        nexus("budget", "clear", "--client-id", str(db_client))[1].strip() == f"budget of {db_client} cleared"
    )
    assert nexus("budget", "clear", "--client-id", str(db_client))[1].strip() == f"{db_client} had no budget"
