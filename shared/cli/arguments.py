"""Argument types the commands share: each refuses a bad value in one sentence naming it."""

from __future__ import annotations

import argparse
import datetime as dt
import uuid

__all__ = ["parse_day", "parse_uuid"]


def parse_uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a UUID") from None


def parse_day(value: str) -> str:
    """A UTC day as YYYY-MM-DD."""
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a day as YYYY-MM-DD") from None
