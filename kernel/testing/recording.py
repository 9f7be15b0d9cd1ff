"""Test doubles for plugin authors: see what a plugin sent without a real system."""

from __future__ import annotations

from kernel.ports import Level

__all__ = ["RecordingNotifier"]


class RecordingNotifier:
    """A `Notifier` that keeps every notification in ``sent`` (title,
    message, level), for asserting what a plugin or the kernel reported."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Level]] = []

    async def notify(self, title: str, message: str, level: Level = Level.info) -> None:
        self.sent.append((title, message, level))

    @property
    def titles(self) -> list[str]:
        return [title for title, _, _ in self.sent]

    async def aclose(self) -> None:
        pass
