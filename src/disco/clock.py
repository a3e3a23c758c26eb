"""Timestamps as disco writes them in reports, journals and the lock."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> str:
    """A `started` value: sorts like the time it names, microseconds keep dances apart."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
