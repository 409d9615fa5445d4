"""CloudWatch embedded metrics (EMF): one JSON line per flush on stdout, which Lambda's log
agent turns into metrics (namespace `POWERTOOLS_METRICS_NAMESPACE`, default `NexusWorkers`;
dimension `service`, the function's `POWERTOOLS_SERVICE_NAME`). On Google Cloud the same lines
are structured logs, for log-based metrics. serverless.yml's alarms read these names.

powertools is imported on the first emit, never at import time (cold starts).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["METRICS_NAMESPACE", "emit_metrics"]

METRICS_NAMESPACE = "NexusWorkers"
SECONDS = "Seconds"
COUNT = "Count"


def emit_metrics(values: Mapping[str, float | tuple[float, str]], service: str) -> None:
    """Flush these metrics now: a value is a count, or (value, unit) with unit `Seconds` or `Count`.
    Never raises: metrics must not fail the work they describe."""
    try:
        from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

        metrics = EphemeralMetrics(
            namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or METRICS_NAMESPACE,
            service=os.environ.get("POWERTOOLS_SERVICE_NAME") or service,
        )
        for name, value in values.items():
            amount, unit = value if isinstance(value, tuple) else (value, COUNT)
            metrics.add_metric(
                name=name, unit=MetricUnit.Seconds if unit == SECONDS else MetricUnit.Count, value=amount
            )
        metrics.flush_metrics()
    except Exception as exc:  # a metric that cannot be written is logged, the work goes on
        from shared.logs import get_logger

        get_logger().warning("metrics not emitted", extra={"error": type(exc).__name__})
