"""Capture what the functions' powertools Logger writes, exactly as formatted for stdout."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from shared.logs import get_logger


@dataclass
class CapturedLogs:
    buffer: io.StringIO = field(default_factory=io.StringIO)

    @property
    def text(self) -> str:
        return self.buffer.getvalue()

    @property
    def lines(self) -> list[str]:
        return [line for line in self.text.splitlines() if line.strip()]

    def records(self) -> list[dict[str, Any]]:
        """Every line parsed as JSON; fails (ValueError) on a line that is not a JSON object."""
        parsed = [json.loads(line) for line in self.lines]
        for record in parsed:
            if not isinstance(record, dict):
                raise ValueError(f"log line is not a JSON object: {record!r}")
        return parsed


@contextmanager
def captured_logs() -> Iterator[CapturedLogs]:
    """Point the Logger's own stream handlers at a buffer for the block, then restore them.

    The production formatter stays in place, so the text is what Lambda would ship to CloudWatch.
    """
    logger = get_logger()
    captured = CapturedLogs()
    handlers = [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]
    assert handlers, "the powertools Logger has no stream handler to capture"
    # Plain assignment, not setStream(): setStream flushes the old stream, which may be a
    # pytest capture that is already closed.
    previous = [h.stream for h in handlers]
    for handler in handlers:
        handler.stream = captured.buffer
    # The cached Logger keeps the level it was created with; an earlier in-process CLI run
    # (POWERTOOLS_LOG_LEVEL=WARNING) must not hide the INFO lines these tests read.
    previous_level = logger.log_level
    logger.setLevel(logging.INFO)
    try:
        yield captured
    finally:
        logger.setLevel(previous_level)
        for handler, stream in zip(handlers, previous, strict=True):
            handler.stream = stream
