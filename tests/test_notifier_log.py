"""The log notifier against the notifier contract, plus its log records and
the `Level` it maps."""

from __future__ import annotations

import logging

import pytest

from kernel.errors import InvalidAdapterURL, InvalidNotification
from kernel.notifier.log import DEFAULT_LOGGER, LogNotifier, open_log_notifier
from kernel.ports import Level, Notification
from kernel.testing.notifier_contract import Delivered, NotifierContract


class TestLogNotifier(NotifierContract):
    @pytest.fixture
    def notifier(self) -> LogNotifier:
        return LogNotifier()

    @pytest.fixture
    def delivered(self, caplog: pytest.LogCaptureFixture) -> Delivered:
        caplog.set_level(logging.DEBUG, logger=DEFAULT_LOGGER)

        async def read() -> list[Notification]:
            return [
                Notification(record.notify_title, record.notify_message, Level(record.notify_level))
                for record in caplog.records
                if record.name == DEFAULT_LOGGER
            ]

        return read


@pytest.mark.parametrize(
    ("level", "logging_level"),
    [
        (Level.debug, logging.DEBUG),
        (Level.info, logging.INFO),
        (Level.warning, logging.WARNING),
        (Level.error, logging.ERROR),
        (Level.critical, logging.CRITICAL),
    ],
)
async def test_records_carry_the_mapped_level_and_text(
    caplog: pytest.LogCaptureFixture, level: Level, logging_level: int
) -> None:
    caplog.set_level(logging.DEBUG, logger="kernel.notify")
    await LogNotifier().notify("Plugin disabled", "crashed 5 times in 60 s", level)
    (record,) = caplog.records
    assert record.name == "kernel.notify"
    assert record.levelno == logging_level
    assert record.getMessage() == "Plugin disabled: crashed 5 times in 60 s"


async def test_an_empty_message_logs_the_title_alone(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kernel.notify")
    await LogNotifier().notify("Kernel started", "")
    assert [record.getMessage() for record in caplog.records] == ["Kernel started"]


async def test_percent_signs_are_not_format_directives(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kernel.notify")
    await LogNotifier().notify("100% %s", "%(name)s %d")
    assert caplog.records[0].getMessage() == "100% %s: %(name)s %d"


async def test_the_logger_can_be_chosen(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await LogNotifier("app.alerts").notify("By name", "")
    await LogNotifier(logging.getLogger("app.other")).notify("By logger", "")
    await open_log_notifier("log://?logger=app.url").notify("By URL", "")
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("app.alerts", "By name"),
        ("app.other", "By logger"),
        ("app.url", "By URL"),
    ]


async def test_a_level_below_the_logger_threshold_is_filtered_by_logging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="kernel.notify")
    notifier = open_log_notifier("log://")
    await notifier.notify("Chatter", "", Level.info)
    await notifier.notify("Alarm", "", Level.error)
    assert [record.getMessage() for record in caplog.records] == ["Alarm"]


@pytest.mark.parametrize(
    "url",
    ["log://host", "log://?logger=", "log://?level=debug", "log:///path", "log://?logger=%20a"],
)
def test_the_factory_refuses_bad_urls(url: str) -> None:
    with pytest.raises(InvalidAdapterURL):
        open_log_notifier(url)


async def test_refusals_say_which_field_and_why() -> None:
    with pytest.raises(InvalidNotification) as refused:
        await LogNotifier().notify("Subject\nBcc: x", "m")
    assert refused.value.field == "title"
    assert "U+000A at index 7; a title is one line" in str(refused.value)
    with pytest.raises(InvalidNotification, match=r"kernel\.ports\.Level"):
        await LogNotifier().notify("t", "m", "error")  # type: ignore[arg-type]


def test_levels_are_ordered_and_parse_from_their_names() -> None:
    assert Level.debug < Level.info < Level.warning < Level.error < Level.critical
    assert Level.critical >= Level.error > Level.info
    assert max(Level) is Level.critical
    assert Level("warning") is Level.warning
    assert [level.logging_level for level in Level] == [10, 20, 30, 40, 50]
