"""The schedules `nexus dev` runs, in place of EventBridge and Cloud Scheduler.

- **Sweep**: the EventBridge sweep runs in this process (`ProcessService.handle_schedule`, every
  `--sweep-interval` s, and once at start, so items inserted while nothing was listening are
  processed too); the functions-framework webhook target has no sweep.
- **Token upkeep**: POSTs to the gcal_refresh server every `--refresh-interval` s, as Cloud
  Scheduler does, when GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET are set.

A job's failure is reported and the next run tries again; it never stops the emulator.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

from shared.config import Settings
from shared.local.environment import LocalContext
from shared.local.servers import post_local

__all__ = ["PeriodicJob", "Sweeper", "token_refresher"]


class PeriodicJob:
    """Run `job` at once and then every `interval_s` seconds in a thread; `trigger()` runs it
    early. A job's exception is reported, never fatal."""

    def __init__(self, name: str, interval_s: float, job: Callable[[], None], report: Callable[[str], None]):
        self.name = name
        self.interval_s = interval_s
        self.job = job
        self.report = report
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"nexus-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def trigger(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self._wake.set()

    def join(self, timeout_s: float = 30.0) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.job()
            except Exception as exc:  # reported, and the next run tries again
                self.report(f"{self.name}: {type(exc).__name__}: {exc}")
            self._wake.wait(self.interval_s)
            self._wake.clear()


class Sweeper:
    """The scheduled sweep, run in this process as the EventBridge rule runs it in AWS.

    Reports each run that claimed something, and the first run always (so the start-up sweep's
    end is visible)."""

    def __init__(self, settings: Settings, interval_s: float, report: Callable[[str], None]) -> None:
        from shared.process.service import ProcessService  # the pipeline's imports: at start only

        self.service = ProcessService(settings=settings)
        self.interval_s = interval_s
        self.report = report
        self.cancelled = threading.Event()
        self.runs = 0

    def __call__(self) -> None:
        budget_s = max(self.interval_s, 60.0)
        result = self.service.handle_schedule(LocalContext("nexus-dev-sweep", budget_s, self.cancelled))
        self.runs += 1
        if not result.get("claimed") and self.runs == 1:
            self.report("sweep: nothing was pending")
        elif result.get("claimed"):
            self.report(
                f"sweep: {result['done']} done, {result['failed']} failed, {result['chunks']} chunks "
                f"({result['embedded_chunks']} embedded)"
            )

    def close(self) -> None:
        processor = self.service.processor
        if processor is None:
            return
        for part in (processor.store, processor.embedder, processor.summarizer):
            close = getattr(part, "close", None)
            if callable(close):
                close()


def token_refresher(url: str, report: Callable[[str], None]) -> Callable[[], None]:
    """POST to the `refresh` target, as Cloud Scheduler does; report refreshes and failures."""

    def refresh() -> None:
        status, answer = post_local(url, b"", {}, 60.0)
        if status != 200:  # 500: an account needs attention
            report(f"token refresh → {status} {answer.decode(errors='replace')[:300]}")
            return
        for account in json.loads(answer).get("accounts", []):
            if account.get("refreshed"):
                report(f"token refresh → {account.get('account')}: {account.get('message')}")

    return refresh
