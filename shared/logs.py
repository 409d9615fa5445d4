"""Structured JSON logs (powertools Logger). Log ids and counts, never content, tokens or keys."""

from __future__ import annotations

import os
from functools import cache

from aws_lambda_powertools import Logger


@cache
def get_logger(service: str | None = None) -> Logger:
    """One Logger per service name; `POWERTOOLS_SERVICE_NAME` wins when set."""
    name = os.environ.get("POWERTOOLS_SERVICE_NAME") or service or "nexus-workers"
    return Logger(service=name)
