"""The capabilities a plugin asks for in its manifest.

A plugin gets nothing it did not name: its storage namespace, the bus, the
notifier and jobs beyond its own queue each need a permission, so a
manifest says at a glance what a plugin reaches (as a browser extension's
manifest does). They stop mistakes and make that reach reviewable; they are
not a sandbox (docs/plugins.md, "Trust").
"""

from __future__ import annotations

import enum

__all__ = ["Permission"]


class Permission(enum.Enum):
    """A capability a plugin must ask for in its manifest."""

    STORAGE_READ = "storage-read"
    STORAGE_WRITE = "storage-write"
    BUS_PUBLISH = "bus-publish"
    BUS_SUBSCRIBE = "bus-subscribe"
    NOTIFICATIONS = "notifications"
    JOBS = "jobs"
    """Read, cancel and retry the jobs of its own queue; enqueue jobs of
    other plugins' tasks."""
    JOBS_ADMIN = "jobs-admin"
    """What ``jobs`` allows, on every queue; pause and resume any queue;
    purge dead letters."""
