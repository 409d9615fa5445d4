"""gcal_refresh: keep the Google Calendar OAuth token(s) in `system_config` valid.

Lambda: `handler` (EventBridge scheduled event, every 10 minutes). functions-framework: `refresh`
(HTTP POST, for Cloud Scheduler). The work is `shared.gcal.upkeep`; see docs/gcal.md.
Importing this file reads no setting and opens no connection; the first call does.
"""

from __future__ import annotations

from typing import Any

from shared.gcal.upkeep import TokenUpkeep
from shared.http.messages import HttpResponse
from shared.http.problems import ProblemError
from shared.runtime.adapters import flask_response, unrecognised_event_result
from shared.runtime.events import lambda_event_kind

upkeep = TokenUpkeep()


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Lambda entry point: `{"ok": bool, "accounts": [...], "error"?: str}` for a scheduled event."""
    if lambda_event_kind(event) != "schedule":
        return unrecognised_event_result("an EventBridge scheduled event")
    return upkeep.run().as_dict()


def refresh(request: Any) -> tuple[bytes, int, dict[str, str]]:
    """functions-framework HTTP target: 200 when every token is fine, else 500 (Cloud Scheduler
    counts the run as failed)."""
    if request.method != "POST":
        return flask_response(
            ProblemError(405, "Use POST to run the token upkeep.", headers={"allow": "POST"}).to_response()
        )
    report = upkeep.run()
    return flask_response(HttpResponse.json(200 if report.ok else 500, report.as_dict()))
