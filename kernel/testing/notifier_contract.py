"""The notifier contract: the tests every `kernel.ports.Notifier` adapter passes.

Subclass `NotifierContract` and provide a ``notifier`` fixture yielding an
open adapter. A notifier's output lands outside the process (a mailbox, a
chat channel), so checking what arrived needs help from the test module:
override the ``delivered`` fixture to return an async callable that reads
back, as `kernel.ports.Notification` values, everything delivered since
the test started (from a fake SMTP server, a mock HTTP endpoint, caplog).
Without it the delivery checks are skipped and only the refusals, the
closing rules and "it does not raise" are tested::

    class TestWebhookNotifier(NotifierContract):
        @pytest.fixture
        async def notifier(self, fake_endpoint):
            notifier = await open_notifier(fake_endpoint.url)
            yield notifier
            await notifier.aclose()

        @pytest.fixture
        def delivered(self, fake_endpoint):
            async def read():
                return [Notification(**body) for body in fake_endpoint.bodies]
            return read
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio

from kernel.errors import InvalidNotification, NotifierClosed
from kernel.ports import MAX_TITLE_LENGTH, Level, Notification, Notifier

__all__ = ["BAD_NOTIFICATIONS", "Delivered", "NotifierContract"]

Delivered = Callable[[], Awaitable[list[Notification]]]
"""Reads back every notification delivered since the test started."""

BAD_NOTIFICATIONS: list[tuple[str, object, object, object]] = [
    ("title-not-str", 5, "message", Level.info),
    ("title-none", None, "message", Level.info),
    ("title-empty", "", "message", Level.info),
    ("title-blank", "   ", "message", Level.info),
    ("title-newline", "line one\nline two", "message", Level.info),
    ("title-carriage-return", "Subject\r\nBcc: x@example.com", "message", Level.info),
    ("title-nul", "a\x00b", "message", Level.info),
    ("title-too-long", "t" * (MAX_TITLE_LENGTH + 1), "message", Level.info),
    ("message-not-str", "title", 5, Level.info),
    ("message-none", "title", None, Level.info),
    ("message-surrogate", "title", "a\ud800b", Level.info),
    ("level-str", "title", "message", "warning"),
    ("level-int", "title", "message", 30),
    ("level-none", "title", "message", None),
]
"""``(id, title, message, level)``: refused with `InvalidNotification`."""


class NotifierContract:
    """The notifier contract; subclass it and define a ``notifier`` fixture
    (and, to check delivery, a ``delivered`` one)."""

    @pytest.fixture
    def notifier(self) -> Notifier:
        pytest.fail(
            f"{type(self).__name__} must define a `notifier` fixture yielding the adapter "
            "under test (see kernel.testing.notifier_contract)"
        )

    @pytest.fixture
    def delivered(self) -> Delivered | None:
        """Override to read back deliveries; None skips the delivery checks."""
        return None

    async def read(self, delivered: Delivered | None) -> list[Notification]:
        if delivered is None:
            pytest.skip("no `delivered` fixture: delivery cannot be checked for this adapter")
        return await delivered()

    async def test_satisfies_the_protocol(self, notifier: Notifier) -> None:
        assert isinstance(notifier, Notifier)

    @pytest.mark.parametrize("level", list(Level), ids=[level.value for level in Level])
    async def test_each_level_is_delivered(
        self, notifier: Notifier, delivered: Delivered | None, level: Level
    ) -> None:
        await notifier.notify("Disk almost full", "93% used on /var", level)
        assert await self.read(delivered) == [
            Notification("Disk almost full", "93% used on /var", level)
        ]

    async def test_the_default_level_is_info(
        self, notifier: Notifier, delivered: Delivered | None
    ) -> None:
        await notifier.notify("Backup done", "42 files")
        assert await self.read(delivered) == [Notification("Backup done", "42 files", Level.info)]

    @pytest.mark.parametrize(
        ("title", "message"),
        [
            ("Sauvegarde échouée ✗", "Fehler: Datei „état.db“ gesperrt 🔒"),
            ("Multi-line", "first line\nsecond line\n\n  indented\ttabbed"),
            ("Empty message", ""),
            ("t" * MAX_TITLE_LENGTH, "m" * 10_000),
            ("Markup <b>&amp;</b> {braces} %s %(x)s", "<script>alert(1)</script> $HOME `x`"),
        ],
        ids=["unicode", "multi-line", "empty-message", "longest-title", "markup"],
    )
    async def test_text_is_delivered_unchanged(
        self, notifier: Notifier, delivered: Delivered | None, title: str, message: str
    ) -> None:
        await notifier.notify(title, message, Level.warning)
        assert await self.read(delivered) == [Notification(title, message, Level.warning)]

    @pytest.mark.parametrize(
        ("title", "message", "level"),
        [(title, message, level) for _, title, message, level in BAD_NOTIFICATIONS],
        ids=[name for name, *_ in BAD_NOTIFICATIONS],
    )
    async def test_bad_notifications_are_refused_and_nothing_is_sent(
        self,
        notifier: Notifier,
        delivered: Delivered | None,
        title: object,
        message: object,
        level: object,
    ) -> None:
        with pytest.raises(InvalidNotification):
            await notifier.notify(title, message, level)  # type: ignore[arg-type]
        assert await self.read(delivered) == []

    async def test_concurrent_notifications_are_all_delivered(
        self, notifier: Notifier, delivered: Delivered | None
    ) -> None:
        sent = [Notification(f"Job {index} failed", f"attempt {index}") for index in range(20)]
        async with trio.open_nursery() as nursery:
            for notification in sent:
                nursery.start_soon(notifier.notify, notification.title, notification.message)
        got = await self.read(delivered)
        assert sorted(got, key=lambda n: n.title) == sorted(sent, key=lambda n: n.title)

    async def test_a_closed_notifier_refuses_to_notify(self, notifier: Notifier) -> None:
        await notifier.aclose()
        await notifier.aclose()  # idempotent
        with pytest.raises(NotifierClosed):
            await notifier.notify("After close", "")
