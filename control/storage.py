"""The database's faults as the API shows them: a write that meets a locked database or a full
disk answers 503 `storage_unavailable` (`retry_after_s` in the body), never a 500; `/health` and
`/metrics` report the write-ahead queue (control/journal.py): writable or not, why, backlog.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from control.http import Handler, HttpError
from control.journal import WriteAhead, storage_fault


@web.middleware
async def storage_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Innermost: the auth middleware around it audits the 503 like any refusal."""
    try:
        return await handler(request)
    except Exception as e:
        reason = storage_fault(e)
        if reason is None:
            raise
        raise HttpError(503, "storage_unavailable",
                        f"{reason}: nothing was changed; try again shortly (broadcasts still "
                        "air, and their records are kept)", retry_after_s=2) from None


class StorageCollector:
    """/metrics: loa_storage_writable, loa_records_backlog, loa_journal_bytes, and counters."""

    def __init__(self, records: WriteAhead) -> None:
        self.records = records

    def collect(self) -> Iterator[Any]:
        st = self.records.status()
        yield GaugeMetricFamily("loa_storage_writable",
                                "1 while the database accepts writes, 0 during a fault",
                                value=1 if st["writable"] else 0)
        yield GaugeMetricFamily("loa_records_backlog",
                                "As-run and audit records waiting for the database",
                                value=st["backlog"])
        yield GaugeMetricFamily("loa_journal_bytes", "Bytes of records held in the journal",
                                value=st["journal_bytes"])
        yield GaugeMetricFamily("loa_journal_capacity_bytes",
                                "Disk space the journal owns (reserved at start)",
                                value=st["journal_capacity"])
        c = CounterMetricFamily("loa_records", "Write-ahead records by outcome",
                                labels=["outcome"])
        for k in ("written", "replayed", "journaled", "not_journaled", "dropped", "failed",
                  "retries", "faults"):
            c.add_metric([k], st[k])
        yield c
