"""The malloc arena cap the CLI sets before its threads start."""

from __future__ import annotations

import sys

import pytest

from shared.runtime.memory import limit_malloc_arenas


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_arena_cap_takes_effect_on_glibc() -> None:
    assert limit_malloc_arenas() is True


def test_the_cap_is_a_no_op_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert limit_malloc_arenas() is False
