"""The one UTC timestamp format of the house: ISO 8601 with milliseconds and a `Z`."""
from __future__ import annotations

from datetime import UTC, datetime


def utc_iso(t: float) -> str:
    """`t` (seconds since the epoch) as e.g. 2024-05-01T10:00:00.123Z."""
    return datetime.fromtimestamp(t, UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")
