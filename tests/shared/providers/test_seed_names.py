"""`embed_text(text)` and `generate_summary(client_id, text)`, the seed's provider calls, on the
providers the environment chooses (here the offline ones) or on one given."""

from __future__ import annotations

import math

import pytest

import shared
from shared.providers import LocalEmbedder, LocalSummarizer, embed_text, generate_summary

TEXT = (
    "The charging dock contacts need cleaning every week. The lidar lens needs cleaning every day. "
    "Robots that skip the weekly cleaning report fault code E017 during the night shift."
)


@pytest.fixture
def offline(function_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    function_env.setenv("NEXUS_EMBEDDING_PROVIDER", "local")
    function_env.setenv("NEXUS_SUMMARY_PROVIDER", "local")
    function_env.setenv("NEXUS_EMBEDDING_DIMENSIONS", "1536")
    return function_env


def test_embed_text_is_one_unit_vector_of_floats(offline: pytest.MonkeyPatch) -> None:
    vector = embed_text(TEXT)
    assert isinstance(vector, list) and all(isinstance(v, float) for v in vector)
    assert len(vector) == 1536
    assert math.isclose(math.fsum(v * v for v in vector), 1.0, rel_tol=1e-5)
    assert vector == LocalEmbedder(1536).embed([TEXT])[0].tolist()  # the provider the settings chose
    assert len(embed_text(TEXT, LocalEmbedder(8))) == 8  # or the one given


def test_generate_summary_summarises_the_text(offline: pytest.MonkeyPatch) -> None:
    summary = generate_summary("any-client", TEXT)
    assert summary and "charging dock" in summary
    assert summary == generate_summary("another-client", TEXT, LocalSummarizer())


def test_the_seed_names_are_also_at_the_top() -> None:
    assert shared.embed_text is embed_text and shared.generate_summary is generate_summary
