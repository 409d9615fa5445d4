"""The scheduled Google token upkeep behind `functions/gcal_refresh`: refresh every stored
account's token that is due, then report it as a result, a log line per account and metrics.

Alerting. Every run emits CloudWatch embedded metrics (namespace `POWERTOOLS_METRICS_NAMESPACE`,
default `NexusWorkers`, dimension `service`): `GoogleTokenReauthRequired` (accounts waiting for
`nexus gcal init`; stays above 0 on every run until someone signs in again),
`GoogleTokenRefreshFailed` (accounts whose refresh failed this run, plus 1 for a run that could
not start, e.g. a missing setting) and `GoogleTokenRefreshed`. Alarm on
`GoogleTokenReauthRequired >= 1`, and on `GoogleTokenRefreshFailed >= 1` for 2 consecutive runs.
The first `invalid_grant` is also logged once at ERROR with `"alert": "google_token_reauth_required"`
(a log-based metric on Google Cloud). A failed run's result has `"ok": false`.

Importing this module reads no setting and imports neither google-auth nor a database driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.errors import NexusError

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.gcal.refresh import RefreshOutcome, RefreshPolicy
    from shared.gcal.store import GoogleTokenStore


@dataclass(frozen=True)
class UpkeepReport:
    """One run's result: an outcome per account, or the one sentence that stopped the run."""

    outcomes: tuple[RefreshOutcome, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(outcome.ok for outcome in self.outcomes)

    def count(self, status: str) -> int:
        return sum(1 for outcome in self.outcomes if outcome.status == status)

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"ok": self.ok, "accounts": [o.as_dict() for o in self.outcomes]}
        if self.error is not None:
            result["error"] = self.error
        return result


@dataclass
class TokenUpkeep:
    """The job with its collaborators; `None` means "build from settings on first use", so the
    store's connection is opened once and reused by warm invocations."""

    settings: Settings | None = None
    store: GoogleTokenStore | None = None
    policy: RefreshPolicy | None = None

    def run(self, *, force: bool = False) -> UpkeepReport:
        """Refresh what is due; never raises for a known failure (it is in the report)."""
        from shared.gcal.refresh import refresh_all_accounts

        try:
            settings, store = self._wire()
            outcomes = refresh_all_accounts(force=force, settings=settings, store=store, policy=self.policy)
        except NexusError as exc:
            report = UpkeepReport(error=str(exc))
        else:
            report = UpkeepReport(tuple(outcomes))
        _log(report)
        _emit_metrics(report)
        return report

    def _wire(self) -> tuple[Settings, GoogleTokenStore]:
        if self.settings is None:
            from shared.config import get_settings

            self.settings = get_settings()
        if self.store is None:
            from shared.gcal.store import default_token_store

            self.store = default_token_store(self.settings)
        return self.settings, self.store

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


def _log(report: UpkeepReport) -> None:
    from shared.logs import get_logger

    logger = get_logger()
    if report.error is not None:
        logger.error("google token upkeep could not run", extra={"error": report.error})
    # One line per account and run; the failures themselves were logged once, where they happened.
    for outcome in report.outcomes:
        logger.info(
            "google token checked",
            extra={
                "account": outcome.account,
                "token_status": outcome.status,
                "refreshed": outcome.refreshed,
                "expiry": outcome.as_dict()["expiry"],
                "detail": outcome.message,
            },
        )


def _emit_metrics(report: UpkeepReport) -> None:
    from shared.runtime.metrics import emit_metrics

    failed = report.count("error") + (1 if report.error is not None else 0)
    refreshed = sum(1 for outcome in report.outcomes if outcome.refreshed)
    emit_metrics(
        {
            "GoogleTokenReauthRequired": report.count("reauth_required"),
            "GoogleTokenRefreshFailed": failed,
            "GoogleTokenRefreshed": refreshed,
        },
        "gcal_refresh",
    )
