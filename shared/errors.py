"""Exceptions that carry one sentence a user can act on.

Each maps to an HTTP status in one place (`shared.http.problems`) and to an exit code in the CLI.
"""

from __future__ import annotations


class NexusError(Exception):
    """Base class: `str(error)` is a sentence safe to show to the caller."""

    status = 500


class ConfigError(NexusError):
    """A setting is missing or malformed; the message names the environment variable."""

    status = 500


class DatabaseUnavailable(NexusError):
    """The database could not be reached; the request may be retried."""

    status = 503


class RefusedByDatabase(NexusError):
    """A SQL function of ours refused the call with a sentence meant for the user (`raise
    exception` in the migrations, SQLSTATE P0001), e.g. a generation that cannot be cut over yet."""

    status = 409
