"""What every HTTP door of ours does around its own work: answer only its paths and POST, refuse a
body over NEXUS_MAX_BODY_BYTES, and turn whatever goes wrong into problem+json (never raising):
a client's mistake as its ProblemError says, a service error (NexusError) with its status (503
with `retry-after`), anything else 500 without internals."""

from __future__ import annotations

from collections.abc import Callable, Collection

from shared.errors import NexusError
from shared.http.messages import HttpRequest, HttpResponse
from shared.http.problems import ProblemError

__all__ = ["answer", "check_body_size", "check_door"]


def answer(
    work: Callable[[], HttpResponse],
    what: str,
    *,
    internal_detail: str,
    status_of: Callable[[NexusError], int] | None = None,
) -> HttpResponse:
    """`work()`'s response, or the problem it met; logs service errors as "<what> could not run"
    and unexpected ones (with their traceback) as "<what> failed"."""
    try:
        return work()
    except ProblemError as problem:
        return problem.to_response()
    except NexusError as exc:
        from shared.logs import get_logger

        get_logger().error(f"{what} could not run", extra={"error": str(exc)})
        status = exc.status if status_of is None else status_of(exc)
        headers = {"retry-after": "1"} if status == 503 else {}
        return ProblemError(status, str(exc), headers=headers).to_response()
    except Exception as exc:
        from shared.logs import get_logger

        get_logger().exception(f"{what} failed", extra={"error": type(exc).__name__})
        return ProblemError(500, internal_detail).to_response()


def check_door(request: HttpRequest, paths: Collection[str], target: str, method_detail: str) -> None:
    """404 for a path not in `paths` (pointing to `target`), 405 for a method other than POST."""
    path = request.path.rstrip("/") or "/"
    if path not in paths:
        raise ProblemError(404, f"No endpoint at {path}; POST to {target}.")
    if request.method.upper() != "POST":
        raise ProblemError(405, method_detail, headers={"allow": "POST"})


def check_body_size(request: HttpRequest, max_body_bytes: int) -> None:
    if len(request.body) > max_body_bytes:
        raise ProblemError(
            413, f"The body is larger than the {max_body_bytes}-byte limit (NEXUS_MAX_BODY_BYTES)."
        )
